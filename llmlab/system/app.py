"""The classifier as three Ray Serve deployments, HTTP ingress -> tokenizer -> model, composed
with deployment handles; the model batches with `@serve.batch` and autoscales."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from llmlab.serving.loading import MAX_TOKENS, load_classifier
from llmlab.serving.schemas import PredictRequest
from llmlab.system.cache import PredictionCache

MAX_BATCH_SIZE = 32  # texts per forward pass, as lab 10's batcher
BATCH_WAIT_S = 0.005  # how long a batch waits to fill, as lab 10's batcher
# A replica that died mid-call, or one the router cannot reach yet: worth another replica.
RETRYABLE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


def _skip_iri_grammar() -> None:
    """Let every Ray process skip jsonschema's optional IRI checker, whose import compiles a
    grammar (seconds of CPU per process; Ray starts a dozen, none validates IRIs): on two busy
    cores the node's agents otherwise miss the raylet's start-up deadline."""
    site = Path(tempfile.gettempdir()) / "llmlab-ray-site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\n\nsys.modules.setdefault('rfc3987_syntax', None)  # see llmlab.system.app\n"
    )
    paths = [str(site), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


@contextlib.contextmanager
def local_ray(num_cpus: int = 2, object_store_mb: int = 200) -> Iterator[None]:
    """A small Ray instance on this machine (no dashboard, loopback only), shut down after."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only: no token to manage
    _skip_iri_grammar()
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=object_store_mb * 1024**2,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        # On a busy machine the node's agent takes long to start: wait for it, do not crash.
        _system_config={"agent_register_timeout_ms": 120_000},
    )
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def start_serve(port: int) -> str:
    """Start Serve's HTTP proxy on 127.0.0.1:`port`; its base URL."""
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def _max_tokens(path: Path) -> int:
    """What training used, and never more positions than the model has (as lab 10's loader)."""
    from transformers import AutoConfig

    meta_file = path / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    return min(
        meta.get("max_length", MAX_TOKENS), AutoConfig.from_pretrained(path).max_position_embeddings
    )


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Tokenizer:
    """Preprocess: one text -> token ids, truncated as in training, not padded."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_tokens = _max_tokens(Path(path))

    def tokenize(self, text: str) -> dict[str, Any]:
        """Token ids of `text` and the milliseconds they took."""
        started = time.perf_counter()
        ids = dict(self.tokenizer(text, truncation=True, max_length=self.max_tokens))
        return {"ids": ids, "tokenize_ms": 1000 * (time.perf_counter() - started)}


@serve.deployment(
    ray_actor_options={"num_cpus": 0},
    autoscaling_config={"min_replicas": 2, "initial_replicas": 2, "max_replicas": 3},
    health_check_period_s=1.0,
)
class Model:
    """Infer and postprocess: token ids of many requests padded into one forward pass."""

    def __init__(self, path: str, version: str, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(threads)  # replicas share the cores: no oversubscription
        self.classifier = load_classifier(Path(path), version)

    async def predict(self, ids: dict[str, list[int]]) -> dict[str, Any]:
        """One text's answer, with its queue wait, forward time, batch size and replica pid."""
        return await self._batched((ids, time.perf_counter()))

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _batched(self, items: list[tuple[dict[str, list[int]], float]]) -> list[dict]:
        started = time.perf_counter()
        padded = self.classifier.tokenizer.pad([ids for ids, _ in items], return_tensors="np")
        features = {name: np.asarray(value, dtype=np.int64) for name, value in padded.items()}
        answers = self.classifier.postprocess(self.classifier.infer(features))
        forward_ms = 1000 * (time.perf_counter() - started)
        return [
            answer
            | {
                "queued_ms": 1000 * (started - arrived),
                "forward_ms": forward_ms,
                "batch_size": len(items),
                "replica_pid": os.getpid(),
            }
            for answer, (_, arrived) in zip(answers, items, strict=True)
        ]

    def die(self) -> None:
        """Crash this replica's process at once (a fault to inject, as an OOM kill would)."""
        os._exit(1)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Ingress:
    """HTTP: validate as lab 10's API, answer from the cache or through tokenizer and model,
    retry a call whose replica died, and time every hop."""

    def __init__(
        self,
        tokenizer: DeploymentHandle,
        model: DeploymentHandle,
        version: str,
        redis_url: str | None = None,
        retries: int = 6,
    ) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.version = version
        self.cache = PredictionCache(redis_url) if redis_url else None
        self.retries = retries

    async def _call(self, method: Any, argument: Any) -> tuple[Any, int]:
        """`method.remote(argument)`, retried with backoff while its replica is dead."""
        for attempt in range(self.retries + 1):
            try:
                return await method.remote(argument), attempt
            except RETRYABLE:
                if attempt == self.retries:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    async def _answer(self, text: str) -> tuple[dict[str, Any], dict[str, float], int, bool]:
        """One text: prediction, per-hop milliseconds, retries, whether the cache answered."""
        started = time.perf_counter()
        if self.cache and (hit := await self.cache.get(self.version, text)):
            return hit, {"cache_ms": 1000 * (time.perf_counter() - started)}, 0, True
        tokens, tokenizer_retries = await self._call(self.tokenizer.tokenize, text)
        tokenized = time.perf_counter()
        answer, model_retries = await self._call(self.model.predict, tokens["ids"])
        done = time.perf_counter()
        timings = {
            "tokenizer_hop_ms": 1000 * (tokenized - started),
            "tokenize_ms": tokens["tokenize_ms"],
            "model_hop_ms": 1000 * (done - tokenized),
            "queued_ms": answer.pop("queued_ms"),
            "forward_ms": answer.pop("forward_ms"),
        }
        if self.cache:
            await self.cache.put(self.version, text, answer)
        return answer, timings, tokenizer_retries + model_retries, False

    async def __call__(self, request: Request) -> JSONResponse:
        """POST /predict like lab 10's service; GET /ready and /health answer 200."""
        if request.method == "GET" and request.url.path.rstrip("/") in ("/ready", "/health"):
            return JSONResponse({"status": "ready", "version": self.version})
        if request.method != "POST" or request.url.path.rstrip("/") != "/predict":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        try:
            body = PredictRequest.model_validate_json(await request.body())
        except ValidationError as error:
            detail = [{"msg": item["msg"], "loc": item["loc"]} for item in error.errors()]
            return JSONResponse({"detail": detail}, status_code=422)
        started = time.perf_counter()
        texts = body.texts or [body.text]
        answers = await asyncio.gather(*(self._answer(text) for text in texts))
        return JSONResponse(
            {
                "variant": "champion",
                "predictions": [answer for answer, *_ in answers],
                "timings_ms": [timing for _, timing, *_ in answers],
                "retries": sum(retries for _, _, retries, _ in answers),
                "cached": [cached for *_, cached in answers],
                "ingress_ms": 1000 * (time.perf_counter() - started),
            }
        )


def build_app(
    path: Path,
    version: str,
    redis_url: str | None = None,
    min_replicas: int = 2,
    max_replicas: int = 3,
) -> serve.Application:
    """The three deployments bound into one application, models loaded from `path`."""
    autoscaling = {
        "min_replicas": min_replicas,
        "initial_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": 2 * MAX_BATCH_SIZE,
    }
    model = Model.options(autoscaling_config=autoscaling).bind(str(path), version)
    return Ingress.bind(Tokenizer.bind(str(path)), model, version, redis_url)


def replica_counts(app: str = "default") -> dict[str, dict[str, int]]:
    """Replicas per state (RUNNING, STARTING, ...) of every deployment of `app`."""
    deployments = serve.status().applications[app].deployments
    return {name: dict(status.replica_states) for name, status in deployments.items()}
