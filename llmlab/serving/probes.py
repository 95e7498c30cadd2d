"""The probes every service answers: GET /health (liveness), /ready (readiness), /metrics
(Prometheus). Built in lab 10; lab 14's generation service answers the same ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict


class Probed(Protocol):
    """What the probes ask a service: is it alive (and its report), why is it not ready."""

    def health(self) -> tuple[bool, dict[str, Any]]: ...

    def not_ready_reason(self) -> str | None: ...


class Health(BaseModel):
    """/health's report: `ok` or `failing`, and what the service adds (state, workers, errors)."""

    model_config = ConfigDict(extra="allow")
    status: str


class Readiness(BaseModel):
    """/ready's answer: `ready` with what is served, or `not ready` and why."""

    model_config = ConfigDict(extra="allow")
    status: str
    reason: str | None = None


def probes_router(
    service: Probed, ready_details: Callable[[], dict[str, Any]], registry: Any
) -> APIRouter:
    """GET /health (503: restart me), /ready (503: send no traffic), /metrics (Prometheus)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    router = APIRouter()
    failing = {"model": Health, "description": "failing: restart this replica"}

    @router.get("/health", response_model=Health, responses={503: failing})
    async def health() -> JSONResponse:
        """Liveness: the process answers, its model loaded (or is loading), its workers run."""
        alive, report = service.health()
        return JSONResponse(report, status_code=200 if alive else 503)

    @router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
    async def ready() -> JSONResponse:
        """Readiness: the model loaded and passed its test inference, the workers run."""
        reason = service.not_ready_reason()
        if reason:
            return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready", **ready_details()})

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus text format: the service's counters, gauges and histograms."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
