"""Serve the classifier over HTTP: the public API of `llmlab.serving`, in one import."""

from llmlab.serving.app import ADMIN_TOKEN_ENV, admin_guard, create_app
from llmlab.serving.batching import DynamicBatcher, ModelError, QueueFull
from llmlab.serving.load import load_test, summarize
from llmlab.serving.loading import (
    MAX_TOKENS,
    PROBE_TEXTS,
    Classifier,
    ModelCheckError,
    check_classifier,
    load_classifier,
    load_model,
    resolve_model,
)
from llmlab.serving.manager import BackgroundServer, free_port
from llmlab.serving.metrics import ENDPOINTS, Metrics, RequestContext
from llmlab.serving.schemas import (
    MAX_BODY_BYTES,
    MAX_ITEMS,
    MAX_TEXT_CHARS,
    PredictRequest,
    PredictResponse,
    TrafficRequest,
)
from llmlab.serving.state import ServeConfig, Service, Variant

__all__ = [
    "ADMIN_TOKEN_ENV",
    "ENDPOINTS",
    "MAX_BODY_BYTES",
    "MAX_ITEMS",
    "MAX_TEXT_CHARS",
    "MAX_TOKENS",
    "PROBE_TEXTS",
    "BackgroundServer",
    "Classifier",
    "DynamicBatcher",
    "Metrics",
    "ModelCheckError",
    "ModelError",
    "PredictRequest",
    "PredictResponse",
    "QueueFull",
    "RequestContext",
    "ServeConfig",
    "Service",
    "TrafficRequest",
    "Variant",
    "admin_guard",
    "check_classifier",
    "create_app",
    "free_port",
    "load_classifier",
    "load_model",
    "load_test",
    "resolve_model",
    "summarize",
]
