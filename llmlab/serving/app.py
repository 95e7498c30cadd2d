"""The FastAPI app: routes, error handling, backpressure and the admin token."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llmlab.serving.batching import ModelError, QueueFull
from llmlab.serving.classifier import Classifier, ModelCheckError, load_model
from llmlab.serving.metrics import RequestContext
from llmlab.serving.probes import add_probes
from llmlab.serving.schemas import (
    MAX_BODY_BYTES,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    TrafficRequest,
    TrafficResponse,
    error_responses,
)
from llmlab.serving.state import ServeConfig, Service

log = logging.getLogger("llmlab.serve")
ADMIN_TOKEN_ENV = "LLMLAB_ADMIN_TOKEN"
RETRY_AFTER_S = 1
# Declared as the schema's security scheme, so clients (and the contract fuzzer) know the routes
# need it; the guard below answers for a missing or wrong token itself (401 and 403).
BEARER = HTTPBearer(auto_error=False, description=f"the admin token, as set in {ADMIN_TOKEN_ENV}")
ADMIN_ERRORS = {
    401: "no admin token (Authorization: Bearer)",
    403: f"a wrong admin token, or admin routes disabled ({ADMIN_TOKEN_ENV} unset)",
}


def _error(status: int, detail: Any, request: Request, **headers: str) -> JSONResponse:
    """A JSON error; 5xx bodies carry the request id (the detail went to the log)."""
    body = {"detail": detail}
    if status >= 500:
        body["request_id"] = request.state.request_id
    return JSONResponse(body, status_code=status, headers=headers or None)


def _shed(service: Service, request: Request, status: int, reason: str) -> JSONResponse:
    service.metrics.shed.labels(reason.split(":")[0]).inc()
    return _error(status, reason, request, **{"Retry-After": str(RETRY_AFTER_S)})


async def _client_gone(request: Request) -> None:
    """Return once the client disconnects (the body was read, so the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def admin_guard(token: str) -> Callable[..., None]:
    """A dependency: `Authorization: Bearer <token>` matching `token` (compared in constant
    time); 401 without credentials, 403 for a wrong one or when no token is configured."""

    def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if not token:
            raise HTTPException(403, f"admin routes are disabled: set {ADMIN_TOKEN_ENV}")
        if credentials is None:
            raise HTTPException(401, "admin token required", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(403, "wrong admin token")

    return check


def install_error_handlers(app: FastAPI) -> None:
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        if any(problem["type"] == "json_invalid" for problem in problems):
            return JSONResponse({"detail": "request body is not valid JSON"}, status_code=400)
        # No echo of the input: it may be a megabyte of text.
        detail = [{"loc": list(p["loc"]), "msg": p["msg"], "type": p["type"]} for p in problems]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if isinstance(error.__cause__, UnicodeDecodeError):
            return JSONResponse({"detail": "request body is not valid UTF-8"}, status_code=400)
        if error.status_code >= 500:
            return _error(error.status_code, error.detail, request)
        return await http_exception_handler(request, error)


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
    admin = Depends(admin_guard(os.environ.get(ADMIN_TOKEN_ENV, "")))

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=error_responses(
            {
                400: "the body is not JSON, or not UTF-8",
                413: f"the body is over {MAX_BODY_BYTES} bytes",
                422: "invalid input, or a text the tokenizer cannot encode (a lone surrogate)",
                429: "queue full: retry after Retry-After seconds",
                500: "the model failed on this request (body: request id)",
                503: "not ready (loading, hung or dead worker)",
                504: "the model did not answer in time",
            }
        ),
    )
    async def predict(body: PredictRequest, request: Request) -> Any:
        """Classify one text or a batch; concurrent requests share forward passes."""
        reason = service.not_ready_reason()
        if reason:
            return _shed(service, request, 503, f"not ready: {reason}")
        variant = service.route()
        texts = [body.text] if body.texts is None else body.texts
        bad = variant.batcher.classifier.unencodable(texts)
        if bad:
            where = ["body", "text"] if body.texts is None else ["body", "texts"]
            detail = [
                {
                    "loc": where + ([i] if body.texts else []),
                    "msg": "the tokenizer cannot encode this text",
                    "type": "unencodable",
                }
                for i in bad
            ]
            return JSONResponse({"detail": detail}, status_code=422)
        try:
            answer = asyncio.gather(*variant.batcher.submit(texts))
        except QueueFull:
            return _shed(service, request, 429, "queue full")
        gone = asyncio.ensure_future(_client_gone(request))
        await asyncio.wait(
            {answer, gone}, timeout=config.timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        gone.cancel()
        if not answer.done():
            answer.cancel()  # its queued texts are skipped, not computed
            # A cancelled gather ends with a CancelledError nobody awaits: take it, quietly.
            answer.add_done_callback(lambda done: done.cancelled() or done.exception())
            if gone.done() and not gone.cancelled():
                service.metrics.abandoned.inc()
                return Response(status_code=499)  # nobody reads it
            return _error(504, f"the model did not answer within {config.timeout_s:g} s", request)
        try:
            outputs = answer.result()
        except ModelError as error:
            log.error("request %s: %s", request.state.request_id, error)
            return _error(500, "the model failed on this request", request)
        return {"variant": variant.name, "predictions": outputs}

    add_probes(app, service, service.ready_details, service.metrics.registry)
    if service.similar:
        app.include_router(service.similar.router())  # lab 15: POST /similar

    reload_errors = {409: "the new models failed their check", 500: "the reload failed"}

    @app.post(
        "/admin/reload",
        dependencies=[admin],
        response_model=ModelsResponse,
        responses=error_responses(ADMIN_ERRORS | reload_errors),
    )
    async def reload(request: Request) -> Any:
        """Re-resolve the aliases (e.g. after a promotion), check the new models on known
        inputs, swap them in, no downtime; on any failure the old models keep serving."""
        try:
            return {"models": await service.reload()}
        except Exception as error:
            log.exception("request %s: reload failed", request.state.request_id)
            message = f"reload failed, still serving {service.versions()}"
            if isinstance(error, ModelCheckError):
                return JSONResponse({"detail": f"{message}: {error}"}, status_code=409)
            return _error(500, message, request)

    traffic_errors = {
        400: "the body is not JSON, or not UTF-8",
        409: "no challenger is loaded",
        413: f"the body is over {MAX_BODY_BYTES} bytes",
        422: "not a fraction between 0 and 1",
    }

    @app.put(
        "/admin/traffic",
        dependencies=[admin],
        response_model=TrafficResponse,
        responses=error_responses(ADMIN_ERRORS | traffic_errors),
    )
    async def traffic(body: TrafficRequest) -> dict[str, float]:
        """Set the share of requests the challenger answers (A/B test)."""
        if "challenger" not in service.variants:
            raise HTTPException(409, "no challenger is loaded: start with --challenger NAME@alias")
        config.challenger_fraction = body.challenger_fraction
        return {"challenger_fraction": config.challenger_fraction}

    return app
