"""The state behind the app: configuration, variants, start-up, health, routing, hot reload.
Built and used in lab 10."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlab.serving.batching import DynamicBatcher
from llmlab.serving.classifier import Classifier, check_classifier, load_model, resolve_model
from llmlab.serving.metrics import Metrics

log = logging.getLogger("llmlab.serve")


@dataclass
class ServeConfig:
    """What `create_app` serves and how: models, traffic split, batching, limits, logging."""

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
    max_queue: int = 256  # texts waiting per variant; more are shed with a 429
    batch_deadline_s: float | None = None  # a batch running longer: not ready (default timeout_s)
    max_restarts: int = 3  # batch worker restarts before /health fails
    index_dir: Path | None = None  # lab 15: serve /similar from this saved vector index
    embedding_model: Path | None = None  # what embeds the queries (default: the packaged MiniLM)


@dataclass
class Variant:
    """A served model reference (champion or challenger) and the batcher running it."""

    name: str
    reference: str
    batcher: DynamicBatcher


def _exit_if_served_by_uvicorn() -> None:
    """SIGTERM ourselves when uvicorn owns the signal (`llmlab serve`): it shuts down, then exits
    non-zero, so the orchestrator restarts the replica. In-process (tests, notebooks): nothing."""
    handler = signal.getsignal(signal.SIGTERM)
    owner = getattr(handler, "__self__", None)
    if type(owner).__module__.startswith("uvicorn"):
        signal.raise_signal(signal.SIGTERM)


class Service:
    """Models loading in the background, their batchers, routing, reload, metrics and the log."""

    def __init__(self, config: ServeConfig, load: Callable[..., Classifier] = load_model) -> None:
        self.config = config
        self.load = load
        self.metrics = Metrics()
        self.variants: dict[str, Variant] = {}
        self.random = random.Random(config.seed)
        self.reload_lock = asyncio.Lock()
        self.log_file = None
        self.state = "loading"  # loading -> serving, or failed (the champion could not serve)
        self.load_errors: dict[str, str] = {}
        self.deadline_s = config.batch_deadline_s or config.timeout_s
        self.similar = None
        if config.index_dir:
            from llmlab.serving.similar import SimilarSearch

            # Checked here, before the server starts: an index of another model must not serve.
            self.similar = SimilarSearch(config.index_dir, config.embedding_model)

    async def _load(self, reference: str, expected_labels: list[str] | None = None) -> Classifier:
        # Loading runs in a thread so the event loop keeps answering while a new model loads.
        classifier = await asyncio.to_thread(
            self.load, reference, backend=self.config.backend, device=self.config.device
        )
        await asyncio.to_thread(check_classifier, classifier, expected_labels)
        return classifier

    async def start(self) -> None:
        """Load and check the champion (required) and the challenger (optional), start batchers."""
        if self.config.prediction_log:
            Path(self.config.prediction_log).parent.mkdir(parents=True, exist_ok=True)
            self.log_file = open(self.config.prediction_log, "a")  # closed in stop()
        if self.similar:
            await self.similar.start()
        references = {"champion": self.config.model}
        if self.config.challenger:
            references["challenger"] = self.config.challenger
        for name, reference in references.items():
            try:
                classifier = await self._load(reference)
            except Exception as error:
                self.load_errors[name] = f"{type(error).__name__}: {error}"
                log.error("%s %s failed to load: %s", name, reference, self.load_errors[name])
                if name == "champion":
                    self.state = "failed"
                    _exit_if_served_by_uvicorn()
                    return
                continue  # a challenger that cannot load must not stop the champion
            self.variants[name] = Variant(name, reference, self._batcher(name, classifier))
            self.variants[name].batcher.start()
        self._publish_versions()
        self.state = "serving"

    def _batcher(self, name: str, classifier: Classifier) -> DynamicBatcher:
        config, metrics = self.config, self.metrics
        batcher = DynamicBatcher(
            classifier,
            config.max_batch_size,
            config.max_wait_ms,
            on_batch=lambda model, outputs, seconds: self._observe(name, model, outputs, seconds),
            max_queue=config.max_queue,
            max_restarts=config.max_restarts,
            on_wait=lambda waits: [metrics.queue_wait.labels(name).observe(w) for w in waits],
        )
        metrics.queue_depth.labels(name).set_function(batcher.queue.qsize)
        metrics.worker_restarts.labels(name).set_function(lambda: batcher.restarts)
        return batcher

    async def stop(self) -> None:
        """Stop the batchers and close the prediction log."""
        for variant in self.variants.values():
            await variant.batcher.stop()
        self.variants.clear()
        if self.log_file:
            self.log_file.close()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Liveness: False once the champion failed to load or a worker stayed dead (restarts
        spent); the report names the state, every worker's restarts and the load errors."""
        workers = {
            name: {
                "alive": variant.batcher.alive,
                "restarts": variant.batcher.restarts,
                "last_error": variant.batcher.last_error,
            }
            for name, variant in self.variants.items()
        }
        alive = self.state != "failed" and all(worker["alive"] for worker in workers.values())
        if self.similar:
            alive = alive and self.similar.state != "failed"
        report = {"status": "ok" if alive else "failing", "state": self.state, "workers": workers}
        report |= {"index": self.similar.report()} if self.similar else {}
        return alive, report | ({"load_errors": self.load_errors} if self.load_errors else {})

    def not_ready_reason(self) -> str | None:
        """Why this replica should get no traffic now (None: ready)."""
        if self.state != "serving":
            return f"models {self.state}"
        for name, variant in self.variants.items():
            if not variant.batcher.alive:
                return f"{name} batch worker is dead"
            busy = variant.batcher.busy_for()
            if busy > self.deadline_s:
                deadline = f"past the {self.deadline_s:g} s deadline"
                return f"{name} batch running for {busy:.1f} s, {deadline}"
        return self.similar.not_ready_reason() if self.similar else None

    def ready_details(self) -> dict[str, Any]:
        """What /ready reports: the served model versions, and the vector index if any."""
        return {"models": self.versions()} | (
            {"index": self.similar.report()} if self.similar else {}
        )

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
        """Re-resolve every variant's reference; load what changed, check it on known inputs
        (same labels as the served model), and only then swap it in: no downtime."""
        async with self.reload_lock:
            loaded = {}
            for name, variant in self.variants.items():
                _, version = await asyncio.to_thread(resolve_model, variant.reference)
                if version != variant.batcher.classifier.version:
                    labels = variant.batcher.classifier.labels
                    loaded[name] = await self._load(variant.reference, labels)
            # Swap only once everything loaded and passed: a failed reload changes nothing.
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
