"""The Ray system on a tiny model: the Serve app answers like lab 10's service, survives a
dying model replica, and a bulk job loses and duplicates no row when a worker is killed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from serving_helpers import TEXTS, save_models

from llmlab.serving.classifier import load_classifier
from llmlab.serving.manager import free_port
from llmlab.system import app as system
from llmlab.system import bulk, elastic
from llmlab.system.client import call_all

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny classifiers (v1, v2)."""
    return save_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """One small Ray instance for the whole module."""
    with system.local_ray(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def url(cluster: None, tiny: dict[str, Path]) -> Iterator[str]:
    """The three-deployment app on v1, on a free loopback port."""
    base = system.start_serve(free_port())
    system.deploy(system.app_config(tiny["v1"], "v1"))
    yield base
    serve.delete("default")


def test_answers_like_the_single_process_service(url: str, tiny: dict[str, Path]) -> None:
    expected = load_classifier(tiny["v1"], "v1").predict(TEXTS)
    body = httpx.post(f"{url}/predict", json={"texts": TEXTS}, timeout=30).json()
    assert body["variant"] == "champion"
    for got, want in zip(body["predictions"], expected, strict=True):
        assert got["label"] == want["label"] and got["model_version"] == "v1"
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    assert body["retries"] == 0 and not any(body["cached"])
    hops = body["timings_ms"][0]
    assert hops["tokenizer_hop_ms"] >= hops["tokenize_ms"] > 0
    assert hops["model_hop_ms"] >= hops["forward_ms"] > 0


def test_a_new_model_is_loaded_in_place(url: str, tiny: dict[str, Path]) -> None:
    """A config that changes only the model (`user_config`) reconfigures the running replicas:
    every answer then comes from v2, and no replica was started or stopped for it."""
    before = system.replica_actors("Model")
    try:
        system.deploy(system.app_config(tiny["v2"], "v2"))
        body = httpx.post(f"{url}/predict", json={"texts": TEXTS}, timeout=30).json()
        after = system.replica_actors("Model")
    finally:
        system.deploy(system.app_config(tiny["v1"], "v1"))
    assert {answer["model_version"] for answer in body["predictions"]} == {"v2"}
    assert body["predictions"][0]["label"] == load_classifier(tiny["v2"]).predict(TEXTS)[0]["label"]
    assert after.equals(before), (before, after)


def test_bad_input_gets_422(url: str) -> None:
    for payload in ({"text": ""}, {"text": 42}, {"texts": ["ok"] * 65}, {"message": "hi"}):
        assert httpx.post(f"{url}/predict", json=payload, timeout=30).status_code == 422


def test_replica_timeline_and_the_bill(url: str) -> None:
    phases = [("load", 4, 30.0, 2), ("light", 1, 0.5)]  # load ends once 2 replicas run
    timeline, requests, spans = asyncio.run(elastic.drive_phases(url, TEXTS, phases))
    assert list(spans.phase) == ["load", "light"] and (spans.end_s > spans.start_s).all()
    assert spans.end_s[0] - spans.start_s[0] < 30.0, "two replicas already run: the phase ends"
    assert (requests.status == 200).all() and set(requests.phase) == {"load", "light"}
    assert len(timeline) >= 3 and timeline.RUNNING.max() >= 2, timeline
    assert elastic.replica_seconds(timeline) == pytest.approx(
        (timeline.RUNNING[:-1] * timeline.t_s.diff()[1:].to_numpy()).sum()
    )


def test_a_dying_model_replica_fails_no_request(url: str) -> None:
    texts = [TEXTS[i % len(TEXTS)] for i in range(150)]

    async def traffic_with_a_death() -> pd.DataFrame:
        load = asyncio.create_task(call_all(url, texts, concurrency=8))
        await asyncio.sleep(0.3)
        killed.append(await system.kill_a_serving_replica(url))
        return await load

    killed: list[int] = []

    began = time.time()
    requests = asyncio.run(traffic_with_a_death())
    assert len(requests) == 150 and (requests.status == 200).all(), requests.status.value_counts()
    assert (requests.retries >= 0).all() and requests.replica_pid.notna().all()
    replicas = system.replica_actors("Model")
    died = replicas[(replicas.state == "DEAD") & (replicas.ended_s >= began)]  # may log late
    assert list(died.pid) == killed, replicas
    assert set(killed) <= set(requests.replica_pid), "the killed replica served this traffic"


def test_cost_per_thousand_and_replica_seconds() -> None:
    # 2 CPUs at 0.05/h serving 10 answers/s: 0.1 per hour over 36000 answers an hour
    assert elastic.cost_per_thousand(10.0, 2, 0.05) == pytest.approx(0.1 / 36)
    assert elastic.cost_per_thousand(10.0, 0, 0.05, gpus=1, gpu_hour_price=3.6) == pytest.approx(
        0.1
    )
    timeline = pd.DataFrame({"t_s": [0.0, 1.0, 3.0, 3.5], "RUNNING": [1, 2, 0, 5]})
    assert elastic.replica_seconds(timeline) == pytest.approx(1 * 1 + 2 * 2 + 0 * 0.5)


def test_admission_limits_let_batches_fill_and_hits_pass() -> None:
    assert system.Model.max_ongoing_requests >= system.MAX_BATCH_SIZE
    assert system.Ingress.max_ongoing_requests >= 10 * system.Model.max_ongoing_requests


def test_bulk_job_survives_a_killed_worker(cluster: None, tiny: dict[str, Path], tmp_path) -> None:
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(600)]
    ids = list(range(1000, 1600))
    job = bulk.submit_job(texts, ids, tiny["v2"], "v2", tmp_path, chunk_size=50, max_retries=3)
    killed = bulk.kill_worker_of(job, chunk=3)
    assert job.status()["state"] in ("running", "done")
    job.wait(timeout_s=120)
    rows = job.results()
    assert job.status() == job.status() | {"state": "done", "written": 12, "rows": 600}
    assert sorted(rows.id) == ids, "lost or duplicated rows"
    assert set(rows.model_version) == {"v2"}
    attempts = job.attempts()
    assert killed in set(attempts.pid) and (attempts.chunk == 3).sum() >= 2, attempts
    assert not list(job.directory.glob("*.tmp"))


def test_bulk_job_refuses_bad_input(tiny: dict[str, Path], tmp_path) -> None:
    with pytest.raises(ValueError, match="unique id"):
        bulk.submit_job(["a", "b"], [1, 1], tiny["v1"], "v1", tmp_path)


class Remote:
    """A deployment method as a handle exposes it: `await method.remote(argument)`."""

    def __init__(self, function, calls: list) -> None:
        self.function, self.calls = function, calls

    async def remote(self, argument):
        self.calls.append(argument)
        return self.function(argument)


class MemoryCache:
    """PredictionCache's interface on a dict, keyed by (version, text) as the real one is."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], dict] = {}

    async def get(self, version: str, text: str) -> dict | None:
        return self.entries.get((version, text))

    async def put(self, version: str, text: str, answer: dict) -> None:
        self.entries[version, text] = dict(answer)


def ingress_call(ingress, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """One HTTP request through the Ingress's __call__, without Ray: (status, JSON body)."""
    from starlette.requests import Request

    raw = json.dumps(body).encode() if body is not None else b""

    async def receive() -> dict:
        return {"type": "http.request", "body": raw, "more_body": False}

    scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
    response = asyncio.run(ingress(Request(scope, receive)))
    return response.status_code, json.loads(response.body)


def test_ingress_probes_404_and_cache_flags_without_ray() -> None:
    """The Ingress class on stand-in handles: /ready and /health answer 200 with the version,
    other routes 404, and `cached` is true exactly for the texts the cache answered (those skip
    tokenizer and model). Fails if a hit is reported as a miss or still reaches the model."""
    tokenized, predicted = [], []
    tokenizer = type("Tokenizer", (), {})()
    tokenizer.tokenize = Remote(lambda text: {"ids": [len(text)], "tokenize_ms": 0.1}, tokenized)
    model = type("Model", (), {})()
    answer = {"label": "greeting", "score": 0.9, "model_version": "v1"}
    model.predict = Remote(lambda ids: answer | {"queued_ms": 0.1, "forward_ms": 0.2}, predicted)
    ingress = system.Ingress.func_or_class(tokenizer, model)
    ingress.reconfigure({"version": "v1", "redis_url": None})
    assert ingress.cache is None, "no Redis named: no cache"
    ingress.cache = MemoryCache()
    for path in ("/ready", "/health", "/ready/"):
        assert ingress_call(ingress, "GET", path) == (200, {"status": "ready", "version": "v1"})
    assert ingress_call(ingress, "GET", "/nope")[0] == 404
    assert ingress_call(ingress, "GET", "/predict")[0] == 404, "predict is POST only"
    assert ingress_call(ingress, "POST", "/predict", {"text": ""})[0] == 422
    first = ingress_call(ingress, "POST", "/predict", {"texts": ["hi", "card lost"]})[1]
    second = ingress_call(ingress, "POST", "/predict", {"texts": ["hi", "balance"]})[1]
    assert first["cached"] == [False, False] and second["cached"] == [True, False]
    assert tokenized == ["hi", "card lost", "balance"] and len(predicted) == 3
    assert second["predictions"][0] == first["predictions"][0] == answer
    assert "cache_ms" in second["timings_ms"][0] and "forward_ms" not in second["timings_ms"][0]
