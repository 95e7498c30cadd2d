"""Lab 10's admin routes behind a bearer token: POST /admin/reload (new models, no downtime) and
PUT /admin/traffic (the A/B split). Built and used in lab 10 (blue/green reload, A/B test)."""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llmlab.serving.classifier import ModelCheckError
from llmlab.serving.errors import error_response
from llmlab.serving.schemas import (
    MAX_BODY_BYTES,
    ModelsResponse,
    TrafficRequest,
    TrafficResponse,
    error_responses,
)
from llmlab.serving.state import ServeConfig, Service

log = logging.getLogger("llmlab.serve")
ADMIN_TOKEN_ENV = "LLMLAB_ADMIN_TOKEN"
# Declared as the schema's security scheme, so clients (and the contract fuzzer) know the routes
# need it; the guard below answers for a missing or wrong token itself (401 and 403).
BEARER = HTTPBearer(auto_error=False, description=f"the admin token, as set in {ADMIN_TOKEN_ENV}")
ADMIN_ERRORS = {
    401: "no admin token (Authorization: Bearer)",
    403: f"a wrong admin token, or admin routes disabled ({ADMIN_TOKEN_ENV} unset)",
}
RELOAD_ERRORS = {409: "the new models failed their check", 500: "the reload failed"}
TRAFFIC_ERRORS = {
    400: "the body is not JSON, or not UTF-8",
    409: "no challenger is loaded",
    413: f"the body is over {MAX_BODY_BYTES} bytes",
    422: "not a fraction between 0 and 1",
}


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


def admin_router(service: Service, config: ServeConfig) -> APIRouter:
    """POST /admin/reload and PUT /admin/traffic, guarded by the token in $LLMLAB_ADMIN_TOKEN."""
    router = APIRouter(dependencies=[Depends(admin_guard(os.environ.get(ADMIN_TOKEN_ENV, "")))])

    @router.post(
        "/admin/reload",
        response_model=ModelsResponse,
        responses=error_responses(ADMIN_ERRORS | RELOAD_ERRORS),
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
            return error_response(500, message, request)

    @router.put(
        "/admin/traffic",
        response_model=TrafficResponse,
        responses=error_responses(ADMIN_ERRORS | TRAFFIC_ERRORS),
    )
    async def traffic(body: TrafficRequest) -> dict[str, float]:
        """Set the share of requests the challenger answers (A/B test)."""
        if "challenger" not in service.variants:
            raise HTTPException(409, "no challenger is loaded: start with --challenger NAME@alias")
        config.challenger_fraction = body.challenger_fraction
        return {"challenger_fraction": config.challenger_fraction}

    return router
