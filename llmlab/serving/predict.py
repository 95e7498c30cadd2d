"""Lab 10's POST /predict: one text or a batch, validated, queued for the dynamic batcher, shed
with 429/503 under pressure, 504 past the deadline, 499 when the client left. Built in lab 10."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llmlab.serving.batching import ModelError, QueueFull
from llmlab.serving.errors import RETRY_AFTER_S, error_response
from llmlab.serving.schemas import MAX_BODY_BYTES, PredictRequest, PredictResponse, error_responses
from llmlab.serving.state import ServeConfig, Service

log = logging.getLogger("llmlab.serve")
PREDICT_ERRORS = {
    400: "the body is not JSON, or not UTF-8",
    413: f"the body is over {MAX_BODY_BYTES} bytes",
    422: "invalid input, or a text the tokenizer cannot encode (a lone surrogate)",
    429: "queue full: retry after Retry-After seconds",
    500: "the model failed on this request (body: request id)",
    503: "not ready (loading, hung or dead worker)",
    504: "the model did not answer in time",
}


def _shed(service: Service, request: Request, status: int, reason: str) -> JSONResponse:
    service.metrics.shed.labels(reason.split(":")[0]).inc()
    return error_response(status, reason, request, **{"Retry-After": str(RETRY_AFTER_S)})


async def _client_gone(request: Request) -> None:
    """Return once the client disconnects (the body was read, so the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _unencodable(body: PredictRequest, bad: list[int]) -> JSONResponse:
    """422 naming each text the tokenizer cannot encode, where a validation error would."""
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


def predict_router(service: Service, config: ServeConfig) -> APIRouter:
    """POST /predict, answered by the batcher of the variant each request is routed to."""
    router = APIRouter()

    @router.post(
        "/predict", response_model=PredictResponse, responses=error_responses(PREDICT_ERRORS)
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
            return _unencodable(body, bad)
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
            message = f"the model did not answer within {config.timeout_s:g} s"
            return error_response(504, message, request)
        try:
            outputs = answer.result()
        except ModelError as error:
            log.error("request %s: %s", request.state.request_id, error)
            return error_response(500, "the model failed on this request", request)
        return {"variant": variant.name, "predictions": outputs}

    return router
