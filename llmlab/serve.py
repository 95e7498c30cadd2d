"""Serve the classifier over HTTP: preprocess, dynamically batched inference, postprocess."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from llmlab.config import build_dir, pick_device

if TYPE_CHECKING:
    import pandas as pd

MAX_TEXT_CHARS = 1000  # longer texts are refused (422) rather than silently cut
MAX_ITEMS = 64  # texts per request
MAX_BODY_BYTES = 256 * 1024
MAX_TOKENS = 128  # what the model sees; tokens beyond it are truncated
ENDPOINTS = ("/predict", "/health", "/ready", "/metrics", "/admin/reload", "/admin/traffic")


class ModelError(RuntimeError):
    """The model call failed; the request gets a 500, the server keeps serving."""


class Classifier:
    """One loaded model: preprocess (tokenize, truncate) -> infer (logits) -> postprocess."""

    def __init__(
        self,
        tokenizer: Any,
        logits: Callable[[dict[str, np.ndarray]], np.ndarray],
        labels: list[str],
        version: str,
        backend: str,
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        self.tokenizer = tokenizer
        self.logits = logits
        self.labels = labels
        self.version = version
        self.backend = backend
        self.max_tokens = max_tokens

    def preprocess(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Token ids padded to the longest text of the batch, truncated at `max_tokens`."""
        encoded = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="np",
        )
        return {name: np.asarray(ids, dtype=np.int64) for name, ids in encoded.items()}

    def infer(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Logits, one row per text."""
        return self.logits(features)

    def postprocess(self, logits: np.ndarray) -> list[dict[str, Any]]:
        """Label, confidence, every label's probability and the model version, per text."""
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        return [
            {
                "label": self.labels[int(row.argmax())],
                "score": float(row.max()),
                "probabilities": dict(zip(self.labels, row.tolist(), strict=True)),
                "model_version": self.version,
            }
            for row in probabilities
        ]

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """The three stages in one call."""
        return self.postprocess(self.infer(self.preprocess(texts)))


def _torch_logits(path: Path, device: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()

    def logits(features: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            inputs = {name: torch.from_numpy(ids).to(device) for name, ids in features.items()}
            return model(**inputs).logits.float().cpu().numpy()

    return logits


def _onnx_logits(model_file: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(model_file), providers=onnxruntime.get_available_providers()
    )
    names = [node.name for node in session.get_inputs()]

    def logits(features: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(None, {name: features[name] for name in names})[0]

    return logits


def load_classifier(
    path: Path, version: str = "local", backend: str = "auto", device: str = "cpu"
) -> Classifier:
    """Load a saved sequence classifier (PyTorch weights or an .onnx file) with its tokenizer."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(path)
    onnx_files = sorted(path.glob("*.onnx"))
    has_torch = any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))
    if backend == "auto":
        backend = "torch" if has_torch else "onnx"
    if backend == "onnx" and not onnx_files:
        raise FileNotFoundError(f"backend 'onnx' needs an .onnx file in {path}")
    if backend == "torch" and not has_torch:
        raise FileNotFoundError(f"backend 'torch' needs PyTorch weights in {path}")
    if backend not in ("torch", "onnx"):
        raise ValueError(f"unknown backend {backend!r}: use auto, torch or onnx")
    config = AutoConfig.from_pretrained(path)
    labels = [config.id2label[index] for index in range(config.num_labels)]
    meta_file = path / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    logits = (
        _torch_logits(path, pick_device(device))
        if backend == "torch"
        else _onnx_logits(onnx_files[0])
    )
    return Classifier(
        AutoTokenizer.from_pretrained(path),
        logits,
        labels,
        version,
        backend,
        # What training used, and never more positions than the model has.
        max_tokens=min(meta.get("max_length", MAX_TOKENS), config.max_position_embeddings),
    )


def resolve_model(reference: str) -> tuple[Path, str]:
    """A model directory (version: its resolved name) or a registry reference NAME@alias or
    NAME/VERSION (version: NAME/VERSION, which the alias points at now)."""
    path = Path(reference)
    if path.is_dir():
        return path, path.resolve().name
    from llmlab import registry

    resolved = registry.resolve(reference)
    return resolved.path, resolved.ref


def load_model(reference: str, backend: str = "auto", device: str = "cpu") -> Classifier:
    """Resolve `reference` (directory or NAME@alias) and load it."""
    path, version = resolve_model(reference)
    return load_classifier(path, version, backend, device)


class DynamicBatcher:
    """Gather concurrent requests into one forward pass: up to `max_batch_size` texts,
    waiting at most `max_wait_ms` for the batch to fill."""

    def __init__(
        self,
        classifier: Classifier,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[Classifier, list[dict[str, Any]], float], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size must be >= 1 and max_wait_ms >= 0")
        self.classifier = classifier  # hot reload swaps it; each batch reads it once
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.on_batch = on_batch
        self.queue: asyncio.Queue[tuple[str, asyncio.Future]] = asyncio.Queue()
        # One model thread: forward passes run one after another, each using every core.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.worker: asyncio.Task | None = None

    async def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Queue `texts` and wait for their predictions."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in texts]
        for text, future in zip(texts, futures, strict=True):
            self.queue.put_nowait((text, future))
        return list(await asyncio.gather(*futures))

    async def _next_batch(self) -> list[tuple[str, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        # Requests that timed out while queued were cancelled: don't spend compute on them.
        return [(text, future) for text, future in batch if not future.done()]

    async def run(self) -> None:
        """The worker: form a batch, run it in the model thread, hand out the results."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            classifier = self.classifier
            start = time.perf_counter()
            try:
                texts = [text for text, _ in batch]
                outputs = await loop.run_in_executor(self.executor, classifier.predict, texts)
            except Exception as error:  # a failing model must not kill the worker
                for _, future in batch:
                    if not future.done():
                        future.set_exception(ModelError(f"{type(error).__name__}: {error}"))
                continue
            for (_, future), output in zip(batch, outputs, strict=True):
                if not future.done():
                    future.set_result(output)
            if self.on_batch:
                self.on_batch(classifier, outputs, time.perf_counter() - start)

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self.worker = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """Stop the worker and the model thread."""
        if self.worker:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class ServeConfig:
    """What `create_app` serves and how: models, traffic split, batching, time limit, logging."""

    model: str  # NAME@alias from the registry, or a model directory
    challenger: str | None = None
    challenger_fraction: float = 0.0
    backend: str = "auto"
    device: str = "cpu"
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    timeout_s: float = 10.0
    prediction_log: Path | None = None
    seed: int = 0


class Metrics:
    """Prometheus metrics of one app, in its own registry so several apps can coexist."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llmlab_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "llmlab_request_latency_seconds",
            "Time from request to response",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "llmlab_batch_size",
            "Texts per forward pass",
            ["variant"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.inference = Histogram(
            "llmlab_inference_seconds", "Time of one batch", ["variant"], registry=self.registry
        )
        self.predictions = Counter(
            "llmlab_predictions", "Predicted labels", ["variant", "label"], registry=self.registry
        )
        self.model_info = Gauge(
            "llmlab_model_info",
            "Served model (value 1)",
            ["variant", "version", "backend"],
            registry=self.registry,
        )


@dataclass
class Variant:
    """A served model reference (champion or challenger) and the batcher running it."""

    name: str
    reference: str
    batcher: DynamicBatcher


class Service:
    """The state behind the app: variants, routing, hot reload, metrics and the prediction log."""

    def __init__(self, config: ServeConfig, load: Callable[..., Classifier]) -> None:
        self.config = config
        self.load = load
        self.metrics = Metrics()
        self.variants: dict[str, Variant] = {}
        self.random = random.Random(config.seed)
        self.reload_lock = asyncio.Lock()
        self.log_file = None

    async def _load(self, reference: str) -> Classifier:
        # Loading runs in a thread so the event loop keeps answering while a new model loads.
        return await asyncio.to_thread(
            self.load, reference, backend=self.config.backend, device=self.config.device
        )

    async def start(self) -> None:
        """Load the models and start their batchers."""
        references = {"champion": self.config.model}
        if self.config.challenger:
            references["challenger"] = self.config.challenger
        if self.config.prediction_log:
            Path(self.config.prediction_log).parent.mkdir(parents=True, exist_ok=True)
            self.log_file = open(self.config.prediction_log, "a")  # closed in stop()
        for name, reference in references.items():
            batcher = DynamicBatcher(
                await self._load(reference),
                self.config.max_batch_size,
                self.config.max_wait_ms,
                on_batch=lambda model, outputs, seconds, name=name: self._observe(
                    name, model, outputs, seconds
                ),
            )
            batcher.start()
            self.variants[name] = Variant(name, reference, batcher)
        self._publish_versions()

    async def stop(self) -> None:
        """Stop the batchers and close the prediction log."""
        for variant in self.variants.values():
            await variant.batcher.stop()
        self.variants.clear()
        if self.log_file:
            self.log_file.close()

    @property
    def ready(self) -> bool:
        """Models loaded and every batcher's worker alive."""
        workers = [variant.batcher.worker for variant in self.variants.values()]
        return bool(workers) and all(worker and not worker.done() for worker in workers)

    def versions(self) -> dict[str, str]:
        """Model version served by each variant."""
        return {name: v.batcher.classifier.version for name, v in self.variants.items()}

    def route(self) -> Variant:
        """Champion, or the challenger for a `challenger_fraction` of requests."""
        challenger = self.variants.get("challenger")
        if challenger and self.random.random() < self.config.challenger_fraction:
            return challenger
        return self.variants["champion"]

    async def reload(self) -> dict[str, str]:
        """Re-resolve every variant's reference; load what changed and swap it in, no downtime."""
        async with self.reload_lock:
            loaded = {}
            for name, variant in self.variants.items():
                _, version = await asyncio.to_thread(resolve_model, variant.reference)
                if version != variant.batcher.classifier.version:
                    loaded[name] = await self._load(variant.reference)
            # Swap only once everything loaded: a failed reload changes nothing.
            for name, classifier in loaded.items():
                self.variants[name].batcher.classifier = classifier
            self._publish_versions()
        return self.versions()

    def _publish_versions(self) -> None:
        self.metrics.model_info.clear()
        for name, variant in self.variants.items():
            classifier = variant.batcher.classifier
            self.metrics.model_info.labels(name, classifier.version, classifier.backend).set(1)

    def _observe(
        self, variant: str, model: Classifier, outputs: list[dict[str, Any]], seconds: float
    ) -> None:
        self.metrics.batch_size.labels(variant).observe(len(outputs))
        self.metrics.inference.labels(variant).observe(seconds)
        for output in outputs:
            self.metrics.predictions.labels(variant, output["label"]).inc()
        if self.log_file:
            # Label and confidence only: enough for drift monitoring, no user text at rest.
            now = time.time()
            for output in outputs:
                record = {"time": now, "variant": variant, "model_version": model.version}
                record |= {"label": output["label"], "score": round(output["score"], 6)}
                self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()


class CountRequests:
    """ASGI middleware: count and time every HTTP request by endpoint and status code."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500  # what the client sees if the app raises before responding

        async def send_and_note_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, status).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("text is empty")
    return text


Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS), AfterValidator(_not_blank)]


class PredictRequest(BaseModel):
    """Send one `text`, or a batch of `texts`."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"text": "I lost my card"}, {"texts": ["hi", "bye"]}]},
    )
    text: Text | None = None
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_ITEMS)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("send exactly one of 'text' or 'texts'")
        return self


class Prediction(BaseModel):
    """What the model says about one text."""

    label: str
    score: float
    probabilities: dict[str, float]
    model_version: str


class PredictResponse(BaseModel):
    """Predictions in request order and the variant (champion/challenger) that made them."""

    variant: str
    predictions: list[Prediction]


class TrafficRequest(BaseModel):
    """Share of requests routed to the challenger."""

    challenger_fraction: Annotated[float, Field(ge=0.0, le=1.0)]


def create_app(config: ServeConfig, load: Callable[..., Classifier] = load_model) -> FastAPI:
    """The FastAPI app: /predict, /health, /ready, /metrics, /admin/reload, /admin/traffic."""
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException as StarletteHTTPException

    service = Service(config, load)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    app = FastAPI(
        title="llmlab intent classifier",
        description="Predicts the intent of customer-service messages (llmlab lab 10).",
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
    )
    app.state.service = service

    app.add_middleware(CountRequests, metrics=service.metrics)

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
        return await http_exception_handler(request, error)

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses={500: {"description": "model failed"}, 504: {"description": "model timed out"}},
    )
    async def predict(body: PredictRequest) -> dict[str, Any]:
        """Classify one text or a batch; concurrent requests share forward passes."""
        variant = service.route()
        texts = [body.text] if body.texts is None else body.texts
        try:
            outputs = await asyncio.wait_for(variant.batcher.predict(texts), config.timeout_s)
        except TimeoutError:
            message = f"the model did not answer within {config.timeout_s:g} s"
            raise HTTPException(504, message) from None
        except ModelError as error:
            raise HTTPException(500, f"the model failed: {error}") from None
        return {"variant": variant.name, "predictions": outputs}

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "not ready"}})
    async def ready() -> JSONResponse:
        """Readiness: models loaded and batch workers running."""
        if not service.ready:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return JSONResponse({"status": "ready", "models": service.versions()})

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format: requests, latency, batch sizes, predictions, model."""
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def reload() -> dict[str, dict[str, str]]:
        """Re-resolve the aliases (e.g. after a promotion) and swap models in, no downtime."""
        try:
            return {"models": await service.reload()}
        except Exception as error:
            still = service.versions()
            raise HTTPException(500, f"reload failed, still serving {still}: {error}") from None

    @app.put("/admin/traffic")
    async def traffic(body: TrafficRequest) -> dict[str, float]:
        """Set the share of requests the challenger answers (A/B test)."""
        if "challenger" not in service.variants:
            raise HTTPException(409, "no challenger is loaded: start with --challenger NAME@alias")
        config.challenger_fraction = body.challenger_fraction
        return {"challenger_fraction": config.challenger_fraction}

    return app


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (Linux), so no server outlives a crashed
    notebook kernel."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class BackgroundServer:
    """`llmlab serve --model MODEL OPTIONS` in a subprocess on 127.0.0.1.

    `start()` returns at once (start several, then wait for each); `with` starts and waits."""

    def __init__(self, model: str, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = build_dir() / "serving" / f"server-{self.port}.log"
        self.command = [sys.executable, "-m", "llmlab.cli", "serve", "--model", model]
        self.command += ["--host", "127.0.0.1", "--port", str(self.port), *options]
        self.process: subprocess.Popen | None = None

    def start(self) -> BackgroundServer:
        """Launch the server process (output goes to `self.log`)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as output:
            self.process = subprocess.Popen(
                self.command, stdout=output, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> str:
        """Poll GET /ready until 200; fail with the server's log if it exits or takes too long."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text()[-2000:]
                raise RuntimeError(f"server exited with code {self.process.returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/ready", timeout=1.0).status_code == 200:
                    return self.url
            time.sleep(0.1)
        raise TimeoutError(f"server at {self.url} not ready after {timeout_s:g} s; log: {self.log}")

    def stop(self) -> None:
        """SIGTERM (uvicorn finishes requests in flight), SIGKILL if that takes over 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> BackgroundServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


async def load_test(
    url: str,
    texts: Sequence[str],
    requests: int = 200,
    concurrency: int = 16,
    time_limit_s: float = 30.0,
    timeout_s: float = 10.0,
    stop: asyncio.Event | None = None,
) -> pd.DataFrame:
    """Closed-loop load: `concurrency` clients each send one text per POST /predict, then the
    next, until `requests` were sent, `time_limit_s` passed or `stop` was set. One row per
    request: its text's index, send time, latency, status, the answer's variant, label, version."""
    import httpx
    import pandas as pd

    rows: list[dict[str, Any]] = []
    counter = itertools.count()
    tls = ssl.create_default_context()  # built once: each client would otherwise spend ~30 ms
    start = time.perf_counter()

    def keep_going() -> bool:
        in_time = time.perf_counter() - start < time_limit_s
        return in_time and not (stop and stop.is_set())

    async def one_client() -> None:
        # A client (one keep-alive connection) per simulated user: one shared pool costs more
        # CPU per request than the server does.
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s, verify=tls) as client:
            while keep_going() and (index := next(counter)) < requests:
                sent = time.perf_counter()
                row: dict[str, Any] = {"text_index": index % len(texts), "sent_s": sent - start}
                row["status"] = 0  # no HTTP answer at all
                try:
                    text = texts[row["text_index"]]
                    response = await client.post("/predict", json={"text": text})
                    row["status"] = response.status_code
                    if response.status_code == 200:
                        body = response.json()
                        first = body["predictions"][0]
                        row |= {"variant": body["variant"], "label": first["label"]}
                        row |= {"score": first["score"], "model_version": first["model_version"]}
                except httpx.HTTPError as error:  # refused, reset, timed out: a failed request
                    row["error"] = type(error).__name__
                row["latency_s"] = time.perf_counter() - sent
                rows.append(row)

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return pd.DataFrame(rows)


def summarize(requests: pd.DataFrame) -> dict[str, float]:
    """Throughput (successful requests/s) and latency percentiles (ms) of a load test."""
    ok = requests[requests.status == 200]
    span = (requests.sent_s + requests.latency_s).max() - requests.sent_s.min()
    latency_ms = ok.latency_s.to_numpy() * 1000
    return {
        "requests": len(requests),
        "failed": int((requests.status != 200).sum()),
        "throughput_rps": len(ok) / span,
        "p50_ms": float(np.percentile(latency_ms, 50)),
        "p95_ms": float(np.percentile(latency_ms, 95)),
        "p99_ms": float(np.percentile(latency_ms, 99)),
    }
