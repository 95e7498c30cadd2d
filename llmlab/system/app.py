"""The classifier as three Ray Serve deployments, HTTP ingress -> tokenizer -> model, composed
with deployment handles; the model batches with `@serve.batch` and autoscales. Built and used in
lab 12 (and deployed through `llmlab.system.entrypoint`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from llmlab.serving.classifier import MAX_TOKENS, load_classifier
from llmlab.serving.schemas import PredictRequest
from llmlab.system.cache import PredictionCache

MAX_BATCH_SIZE = 32  # texts per forward pass, as lab 10's batcher
BATCH_WAIT_S = 0.005  # how long a batch waits to fill, as lab 10's batcher
# Serve admits 5 requests per replica by default: a model replica capped at 5 never fills a batch
# of 32, and an ingress capped at 5 makes a cache hit queue in the proxy behind model calls.
MODEL_MAX_ONGOING = 2 * MAX_BATCH_SIZE  # a full batch in the forward pass, the next one filling
INGRESS_MAX_ONGOING = 1000  # the ingress only awaits: it admits everything the proxy receives
# A stopping replica checks this often whether its last requests are done (Serve's default, 2 s,
# is the least a stop takes): replicas here stop within seconds of the autoscaler's decision.
SHUTDOWN_CHECK_S = 0.5
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
    for attempt in range(3):
        try:
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                object_store_memory=object_store_mb * 1024**2,
                log_to_driver=False,
                _node_ip_address="127.0.0.1",
                configure_logging=False,
                # On a busy machine the node's agent takes long to start: wait, do not crash.
                _system_config={"agent_register_timeout_ms": 120_000},
            )
            break
        except Exception as error:  # Ray gives its raylet a fixed 30 s to register
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(error):
                raise
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


@serve.deployment(ray_actor_options={"num_cpus": 0}, graceful_shutdown_wait_loop_s=SHUTDOWN_CHECK_S)
class Tokenizer:
    """Preprocess: one text -> token ids, truncated as in training, not padded. Its model
    directory comes as `user_config` ({"path": ...}): a new one is loaded in place."""

    def reconfigure(self, config: dict[str, str]) -> None:
        """Load the tokenizer of `config["path"]` (Serve calls this on a new `user_config`)."""
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(config["path"])
        self.max_tokens = _max_tokens(Path(config["path"]))

    def tokenize(self, text: str) -> dict[str, Any]:
        """Token ids of `text` and the milliseconds they took."""
        started = time.perf_counter()
        ids = dict(self.tokenizer(text, truncation=True, max_length=self.max_tokens))
        return {"ids": ids, "tokenize_ms": 1000 * (time.perf_counter() - started)}


@serve.deployment(
    ray_actor_options={"num_cpus": 0},
    autoscaling_config={"min_replicas": 2, "initial_replicas": 2, "max_replicas": 3},
    max_ongoing_requests=MODEL_MAX_ONGOING,
    health_check_period_s=1.0,
    graceful_shutdown_wait_loop_s=SHUTDOWN_CHECK_S,
)
class Model:
    """Infer and postprocess: token ids of many requests padded into one forward pass. The
    model comes as `user_config` ({"path": ..., "version": ...}): a promotion loads it in place."""

    def __init__(self, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(threads)  # replicas share the cores: no oversubscription

    def reconfigure(self, config: dict[str, str]) -> None:
        """Load the model of `config` (Serve calls this on a new `user_config`); batches in
        flight finish on the model they started with."""
        self.classifier = load_classifier(Path(config["path"]), config["version"])

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


@serve.deployment(
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=INGRESS_MAX_ONGOING,
    graceful_shutdown_wait_loop_s=SHUTDOWN_CHECK_S,
)
class Ingress:
    """HTTP: validate as lab 10's API, answer from the cache or through tokenizer and model,
    retry a call whose replica died, and time every hop. The model version it answers for and
    its Redis come as `user_config` ({"version": ..., "redis_url": ... or None})."""

    def __init__(
        self, tokenizer: DeploymentHandle, model: DeploymentHandle, retries: int = 6
    ) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.retries = retries
        self.version = ""
        self.cache: PredictionCache | None = None

    def reconfigure(self, config: dict[str, str | None]) -> None:
        """Answer for `config["version"]`, caching in `config["redis_url"]` (None: no cache)."""
        self.version = str(config["version"])
        self.cache = PredictionCache(config["redis_url"]) if config.get("redis_url") else None

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
        hit = await self.cache.get(self.version, text) if self.cache else None
        looked_up = time.perf_counter()
        lookup = {"cache_ms": 1000 * (looked_up - started)} if self.cache else {}
        if hit:
            return hit, lookup, 0, True
        tokens, tokenizer_retries = await self._call(self.tokenizer.tokenize, text)
        tokenized = time.perf_counter()
        answer, model_retries = await self._call(self.model.predict, tokens["ids"])
        done = time.perf_counter()
        timings = lookup | {
            "tokenizer_hop_ms": 1000 * (tokenized - looked_up),
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


def user_configs(path: Path, version: str, redis_url: str | None = None) -> dict[str, dict]:
    """Each deployment's `user_config`: the model files, its version and Redis (None: no cache)."""
    return {
        "Ingress": {"version": version, "redis_url": redis_url},
        "Tokenizer": {"path": str(path)},
        "Model": {"path": str(path), "version": version},
    }


def autoscaling(min_replicas: int = 2, max_replicas: int = 3, **options: float) -> dict:
    """The model's `autoscaling_config`; keyword arguments override (e.g. `upscale_delay_s`)."""
    return {
        "min_replicas": min_replicas,
        "initial_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": MAX_BATCH_SIZE,
    } | options


def build_app(
    path: Path,
    version: str,
    redis_url: str | None = None,
    min_replicas: int = 2,
    max_replicas: int = 3,
    **autoscaling_options: float,
) -> serve.Application:
    """The three deployments bound into one application, models loaded from `path`; keyword
    arguments go to the model's `autoscaling_config` (e.g. `upscale_delay_s`)."""
    configs = user_configs(path, version, redis_url)
    model = Model.options(
        autoscaling_config=autoscaling(min_replicas, max_replicas, **autoscaling_options),
        user_config=configs["Model"],
    ).bind()
    tokenizer = Tokenizer.options(user_config=configs["Tokenizer"]).bind()
    return Ingress.options(user_config=configs["Ingress"]).bind(tokenizer, model)


def graph(args: dict[str, Any]) -> serve.Application:
    """The three deployments bound, no model named: what `app_config`'s import path builds;
    the config's `user_config`s name the model (`args` is unused, and must not change)."""
    return Ingress.bind(Tokenizer.bind(), Model.bind())


def app_config(
    path: Path,
    version: str,
    redis_url: str | None = None,
    min_replicas: int = 2,
    max_replicas: int = 3,
    **autoscaling_options: float,
) -> dict[str, Any]:
    """`build_app`'s application as a declarative config (what `serve deploy` applies and
    KubeRay's `serveConfigV2` holds): one import path, and the model, Redis and autoscaling as
    per-deployment options, which Serve changes on running replicas."""
    configs = user_configs(path, version, redis_url)
    deployments = [{"name": name, "user_config": config} for name, config in configs.items()]
    model = next(d for d in deployments if d["name"] == "Model")
    model["autoscaling_config"] = autoscaling(min_replicas, max_replicas, **autoscaling_options)
    return {"name": "default", "route_prefix": "/", "import_path": f"{__name__}:graph"} | {
        "args": {},
        "deployments": deployments,
    }


# A deploy and serve.status() each pickle the autoscaling policy through cloudpickle's one
# process-wide by-value registry, which is not thread-safe: the replica sampler's status call
# beside the notebook's deploy raised "... is not registered for pickle by value". One lock.
SERVE_LOCK = threading.Lock()


def deploy(config: dict[str, Any], timeout_s: float = 300.0) -> float:
    """Apply `config` (`app_config`) as `serve deploy` does and wait until it serves; seconds.
    The same import path and args as the running application make it a lightweight update:
    Serve calls `reconfigure` on the running replicas (a few at a time) and scales them, and
    restarts none; the first config builds the application."""
    from ray.serve.context import _get_global_client  # the client `serve run CONFIG` uses
    from ray.serve.schema import ServeDeploySchema

    started = time.perf_counter()
    with SERVE_LOCK:
        _get_global_client().deploy_apps(ServeDeploySchema(applications=[config]))
    while time.perf_counter() - started < timeout_s:
        with SERVE_LOCK:
            status = serve.status().applications.get(config["name"])
        if status is not None and status.status == "RUNNING":
            return time.perf_counter() - started
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"application {config['name']} failed: {status.message}")
        time.sleep(0.1)
    raise TimeoutError(f"application {config['name']} not running after {timeout_s} s")


def replica_counts(app: str = "default") -> dict[str, dict[str, int]]:
    """Replicas per state (RUNNING, STARTING, ...) of every deployment of `app`."""
    with SERVE_LOCK:
        deployments = serve.status().applications[app].deployments
    return {name: dict(status.replica_states) for name, status in deployments.items()}


async def kill_a_serving_replica(url: str) -> int:
    """SIGKILL (as the kernel's OOM killer would) the model replica that answers a request to
    `url` now, so the one that dies is one serving traffic; its pid."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.post("/predict", json={"text": "which replica answers me?"})
    pid = response.raise_for_status().json()["predictions"][0]["replica_pid"]
    os.kill(pid, signal.SIGKILL)
    return pid


def replica_actors(deployment: str, app: str = "default") -> pd.DataFrame:
    """Every replica actor of `deployment` Ray's control store (GCS) knows, dead ones included:
    pid, state, start and end (Unix seconds) and why it died. The state API reads the same table
    through the dashboard, which this lab does not start."""
    from ray._private.state import actors  # the GCS table without the dashboard

    rows = [
        {
            "actor_id": actor["ActorID"],
            "pid": actor["Pid"],
            "state": actor["State"],
            "started_s": actor["StartTime"] / 1000,
            "ended_s": actor["EndTime"] / 1000 if actor["EndTime"] else None,
            "death_cause": str(actor.get("DeathCause") or "")[:200],
        }
        for actor in actors().values()
        if actor["ActorClassName"] == f"ServeReplica:{app}:{deployment}"
    ]
    columns = ["actor_id", "pid", "state", "started_s", "ended_s", "death_cause"]
    return pd.DataFrame(rows, columns=columns)
