"""Lab 10's error answers: JSON bodies (5xx with the request id), 400 for a body that is not JSON
or not UTF-8, 422 without echoing the input. Built in lab 10; lab 14's service uses them too."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

RETRY_AFTER_S = 1  # what a shed request is told to wait (the Retry-After header)


def error_response(status: int, detail: Any, request: Request, **headers: str) -> JSONResponse:
    """A JSON error; 5xx bodies carry the request id (the detail went to the log)."""
    body = {"detail": detail}
    if status >= 500:
        body["request_id"] = request.state.request_id
    return JSONResponse(body, status_code=status, headers=headers or None)


def install_error_handlers(app: FastAPI) -> None:
    """Answer invalid requests with 400 (not JSON, not UTF-8) or 422, and 5xx with a request id."""
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
            return error_response(error.status_code, error.detail, request)
        return await http_exception_handler(request, error)
