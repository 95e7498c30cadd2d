"""Prometheus metrics of one app, and the middleware that counts requests and tags them with an
id. Built and used in lab 10."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

log = logging.getLogger("llmlab.serve")
ENDPOINTS = ("/predict", "/health", "/ready", "/metrics", "/admin/reload", "/admin/traffic")


class Metrics:
    """Prometheus metrics of one app, in its own registry so several apps can coexist."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "llmlab_requests", "HTTP requests", ["endpoint", "status"], registry=registry
        )
        self.latency = Histogram(
            "llmlab_request_latency_seconds",
            "Time from request to response",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        self.batch_size = Histogram(
            "llmlab_batch_size",
            "Texts per forward pass",
            ["variant"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self.inference = Histogram(
            "llmlab_inference_seconds", "Time of one batch", ["variant"], registry=registry
        )
        self.predictions = Counter(
            "llmlab_predictions", "Predicted labels", ["variant", "label"], registry=registry
        )
        self.model_info = Gauge(
            "llmlab_model_info",
            "Served model (value 1)",
            ["variant", "version", "backend"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "llmlab_queue_depth", "Texts waiting for a forward pass", ["variant"], registry=registry
        )
        self.queue_wait = Histogram(
            "llmlab_queue_wait_seconds",
            "Time from enqueue to the start of the text's forward pass",
            ["variant"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.shed = Counter(
            "llmlab_shed_requests",
            "Requests refused at once (queue full, not ready, model hung)",
            ["reason"],
            registry=registry,
        )
        self.abandoned = Counter(
            "llmlab_abandoned_requests",
            "Requests whose client left before the answer; their texts are not computed",
            registry=registry,
        )
        self.worker_restarts = Gauge(
            "llmlab_worker_restarts", "Batch worker restarts", ["variant"], registry=registry
        )


async def _send_json(send: Callable, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class RequestContext:
    """ASGI middleware: give every HTTP request an id (header `x-request-id`, and in 5xx bodies),
    turn an unhandled error into a 500 naming only that id, count and time every request."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        status = 0

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                message = {**message, "headers": headers + [(b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # The detail goes to the log; the client gets the id to quote.
            log.exception("request %s %s failed", request_id, scope["path"])
            if status == 0:
                status = 500
                body = {"detail": "internal error", "request_id": request_id}
                await _send_json(send, 500, body)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, status or 500).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
