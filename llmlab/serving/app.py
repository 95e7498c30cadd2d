"""Lab 10's FastAPI app, assembled from one router per concern: /predict (`predict`), the probes
(`probes`), /similar (`similar`, lab 15), the admin routes (`admin`). Built in lab 10; lab 11's
pipeline checks it, lab 12 compares its Ray system with it, lab 15 adds /similar to it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from llmlab.serving.admin import admin_router
from llmlab.serving.classifier import Classifier, load_model
from llmlab.serving.errors import install_error_handlers
from llmlab.serving.metrics import RequestContext
from llmlab.serving.predict import predict_router
from llmlab.serving.probes import probes_router
from llmlab.serving.schemas import MAX_BODY_BYTES
from llmlab.serving.state import ServeConfig, Service


def create_app(config: ServeConfig, load: Callable[..., Classifier] = load_model) -> FastAPI:
    """The FastAPI app: /predict, /health, /ready, /metrics, /admin/reload, /admin/traffic,
    and /similar when `config.index_dir` names a vector index (lab 15)."""
    service = Service(config, load)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Models load in the background: /health answers and /ready says 503 meanwhile.
        loading = asyncio.create_task(service.start())
        yield
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        await service.stop()

    app = FastAPI(
        title="llmlab intent classifier",
        description="Predicts the intent of customer-service messages (llmlab lab 10).",
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
    )
    app.state.service = service
    app.add_middleware(RequestContext, metrics=service.metrics)
    install_error_handlers(app)
    app.include_router(predict_router(service, config))
    app.include_router(probes_router(service, service.ready_details, service.metrics.registry))
    if service.similar:
        app.include_router(service.similar.router())  # lab 15: POST /similar
    app.include_router(admin_router(service, config))
    return app
