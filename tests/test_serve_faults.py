"""Fault injection: each fault the service must survive, measured by status codes and whether
the replica is ready afterwards (`-s` prints one `fault:` line per test)."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from serving_helpers import ADMIN, ADMIN_TOKEN, TEXTS, live, running, wait_until
from transformers import BertForSequenceClassification

from llmlab.serving.app import create_app
from llmlab.serving.classifier import load_classifier, load_model
from llmlab.serving.state import ServeConfig

pytestmark = pytest.mark.usefixtures("admin_token")


def report(fault: str, statuses: list[int], ready: bool) -> None:
    """One row of the fault table: the status codes seen and readiness afterwards."""
    print(f"\nfault: {fault} | {dict(sorted(Counter(statuses).items()))} | ready {ready}")


def champion(client) -> object:
    return client.app.state.service.variants["champion"].batcher


def post_concurrently(client, bodies: list[bytes]) -> list[httpx.Response]:
    """POST every raw JSON body to /predict at once, one thread each."""
    headers = {"content-type": "application/json"}
    with ThreadPoolExecutor(len(bodies)) as pool:
        calls = [pool.submit(client.post, "/predict", content=b, headers=headers) for b in bodies]
        return [call.result() for call in calls]


def test_a_failing_prediction_log_write_restarts_the_worker_no_504(models, tmp_path):
    config = ServeConfig(model=str(models["v1"]), prediction_log=tmp_path / "p.jsonl")
    config.timeout_s, config.max_restarts = 2.0, 2
    with running(create_app(config)) as client:

        class FullDisk(io.StringIO):
            def write(self, text: str) -> None:
                raise OSError(28, "No space left on device")

        client.app.state.service.log_file = FullDisk()
        statuses = [client.post("/predict", json={"text": t}).status_code for t in TEXTS[:3]]
        health = client.get("/health")
        assert statuses == [200, 200, 200], (
            f"each write kills the worker; it must come back: {statuses}"
        )
        assert health.status_code == 503, "restarts spent: liveness fails so the replica restarts"
        workers = health.json()["workers"]["champion"]
        assert workers["restarts"] == 2 and "No space left" in workers["last_error"]
        after = client.post("/predict", json={"text": "hi"})
        assert after.status_code == 503 and after.headers["retry-after"]
        report(
            "prediction log write fails (3x, 2 restarts allowed)",
            statuses + [after.status_code],
            False,
        )


def test_a_model_returning_one_row_too_few_fails_fast_and_the_worker_survives(client_v1):
    client = client_v1
    classifier = champion(client).classifier
    working = classifier.logits
    classifier.logits = lambda features: working(features)[:-1]
    started = time.perf_counter()
    broken = client.post("/predict", json={"texts": TEXTS[:3]})
    seconds = time.perf_counter() - started
    classifier.logits = working
    fixed = client.post("/predict", json={"text": "hi"})
    ready = client.get("/ready").status_code == 200
    assert broken.status_code == 500 and broken.json()["request_id"]
    # 500, not 504: the error is the model's, not a deadline's; and it came before the 2 s timeout
    assert seconds < 2.0, f"a wrong row count must fail at once, not time out ({seconds:.1f} s)"
    assert fixed.status_code == 200 and ready and champion(client).restarts == 0
    report("model returns N-1 rows", [broken.status_code, fixed.status_code], ready)


@pytest.fixture
def client_v1(models):
    with running(create_app(ServeConfig(model=str(models["v1"]), timeout_s=2.0))) as client:
        yield client


def test_a_model_that_hangs_makes_the_replica_unready_until_it_recovers(models):
    config = ServeConfig(model=str(models["v1"]), timeout_s=0.3)
    config.batch_deadline_s = 0.2
    with running(create_app(config)) as client:
        classifier = champion(client).classifier
        working, release = classifier.logits, threading.Event()

        def hang(features):
            release.wait(30)
            return working(features)

        classifier.logits = hang
        statuses = [client.post("/predict", json={"text": "hi"}).status_code]
        ready_while_hung = client.get("/ready")
        started = time.perf_counter()
        shed = client.post("/predict", json={"text": "hi"})
        shed_s = time.perf_counter() - started
        health = client.get("/health").status_code
        classifier.logits = working
        release.set()
        deadline = time.monotonic() + 5
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        statuses += [shed.status_code, client.post("/predict", json={"text": "hi"}).status_code]
        ready = client.get("/ready").status_code == 200
    assert statuses[0] == 504
    assert ready_while_hung.status_code == 503 and "deadline" in ready_while_hung.json()["reason"]
    # Shed (503 and Retry-After), not queued until its own deadline (504 after timeout_s)
    assert shed.status_code == 503 and shed.headers["retry-after"] and shed_s < config.timeout_s
    assert health == 200, "a hung model is a readiness problem; the process is alive"
    assert statuses[2] == 200 and ready
    report("model hangs past the batch deadline", statuses, ready)


def test_a_reload_to_a_model_that_cannot_infer_is_refused_and_the_old_one_serves(models, tmp_path):
    alias = tmp_path / "champion"
    alias.symlink_to(models["v1"])

    def load_breaking_v2(reference: str, **options) -> object:
        classifier = load_model(reference, **options)
        if classifier.version == "v2":
            classifier.logits = lambda features: np.full((1, 3), np.nan)  # loads, cannot infer
        return classifier

    with running(create_app(ServeConfig(model=str(alias)), load=load_breaking_v2)) as client:
        alias.unlink()
        alias.symlink_to(models["v2"])
        refused = client.post("/admin/reload", headers=ADMIN)
        answer = client.post("/predict", json={"text": "hi"})
        ready = client.get("/ready").status_code == 200
    assert refused.status_code == 409, refused.text
    assert "model v2 gave 1 answers for 4 texts" in refused.json()["detail"]
    assert "still serving {'champion': 'v1'}" in refused.json()["detail"]
    assert answer.status_code == 200 and answer.json()["predictions"][0]["model_version"] == "v1"
    report("reload to a model that cannot infer", [refused.status_code, answer.status_code], ready)


def test_a_challenger_that_fails_to_load_does_not_stop_the_champion(models, tmp_path):
    (tmp_path / "empty").mkdir()  # a directory without a model
    config = ServeConfig(model=str(models["v1"]), challenger=str(tmp_path / "empty"))
    config.challenger_fraction = 0.5
    with running(create_app(config)) as client:
        answers = [client.post("/predict", json={"text": "hi"}) for _ in range(4)]
        health = client.get("/health").json()
        ready = client.get("/ready").status_code == 200
    assert {a.json()["variant"] for a in answers} == {"champion"}
    assert "challenger" in health["load_errors"] and ready
    report("challenger fails to load", [a.status_code for a in answers], ready)


def test_while_models_load_health_answers_and_ready_is_503(models):
    release = threading.Event()

    def slow_load(reference: str, **options) -> object:
        release.wait(10)
        return load_model(reference, **options)

    with TestClient(create_app(ServeConfig(model=str(models["v1"])), load=slow_load)) as c:
        health, ready, predict = (
            c.get("/health"),
            c.get("/ready"),
            c.post("/predict", json={"text": "a"}),
        )
        release.set()
        deadline = time.monotonic() + 30
        while c.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        after = c.post("/predict", json={"text": "a"}).status_code
    assert ready.status_code == 503, "models still loading: not ready"
    assert predict.status_code == 503 and predict.headers["retry-after"]
    assert health.status_code == 200 and health.json()["state"] == "loading"
    assert after == 200
    report("request while loading", [ready.status_code, predict.status_code, after], True)


def test_a_full_queue_sheds_at_once_with_retry_after_and_no_504(models):
    config = ServeConfig(model=str(models["v1"]), max_batch_size=2, timeout_s=1.0)
    config.max_queue = 4
    with live(create_app(config)) as server:
        batcher = server.server.config.app.state.service.variants["champion"].batcher
        classifier = batcher.classifier
        working = classifier.logits

        def slow(features):
            time.sleep(0.05)
            return working(features)

        classifier.logits = slow

        async def flood() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                calls = [client.post("/predict", json={"text": f"hi {i}"}) for i in range(40)]
                return await asyncio.gather(*calls)

        answers = asyncio.run(flood())
        metrics = httpx.get(f"{server.url}/metrics").text
        ready = httpx.get(f"{server.url}/ready").status_code == 200
    statuses = [a.status_code for a in answers]
    shed = [a for a in answers if a.status_code == 429]
    assert 504 not in statuses and set(statuses) <= {200, 429}, Counter(statuses)
    assert shed and all(a.headers["retry-after"] == "1" for a in shed)
    assert statuses.count(200) >= 4, "what fits in the queue is answered"
    assert batcher.peak_depth <= 4, f"the queue grew to {batcher.peak_depth} texts, bound 4"
    assert 'llmlab_shed_requests_total{reason="queue full"}' in metrics
    assert "llmlab_queue_wait_seconds_count" in metrics and "llmlab_queue_depth" in metrics
    report("40 concurrent clients, queue of 4", statuses, ready)


def test_one_text_the_tokenizer_rejects_gets_422_and_its_batch_neighbours_200(client_wide):
    classifier = champion(client_wide).classifier
    tokenizer = classifier.tokenizer

    class StrictTokenizer:  # rejects control characters, as some tokenizers do
        def __call__(self, texts, **options):
            if any("\x07" in text for text in texts):
                raise ValueError("control character in input")
            return tokenizer(texts, **options)

    classifier.tokenizer = StrictTokenizer()
    valid = [b'{"text": "hello"}', b'{"text": "my card"}', b'{"texts": ["a", "b"]}']
    rejected = b'{"texts": ["fine", "bell \\u0007 here"]}'
    answers = post_concurrently(client_wide, [*valid, rejected])
    classifier.tokenizer = tokenizer
    statuses = [a.status_code for a in answers]
    surrogate = client_wide.post("/predict", content=b'{"text": "lone \\ud800"}').status_code
    ready = client_wide.get("/ready").status_code == 200
    assert statuses == [200, 200, 200, 422], statuses
    (problem,) = answers[3].json()["detail"]
    assert problem["type"] == "unencodable" and problem["loc"] == ["body", "texts", 1]
    assert surrogate == 422, "text that is not valid Unicode is refused by the schema"
    report("one text the tokenizer rejects among 3 valid", statuses + [surrogate], ready)


@pytest.fixture
def client_wide(models):
    """Wide batching window: concurrent requests land in one batch."""
    config = ServeConfig(model=str(models["v1"]), max_wait_ms=300, timeout_s=5)
    with running(create_app(config)) as client:
        yield client


def test_a_text_the_model_fails_on_fails_only_its_own_request(client_wide):
    classifier = champion(client_wide).classifier
    working, batch_sizes = classifier.predict, []

    def fails_on_poison(texts):
        batch_sizes.append(len(texts))
        if any("poison" in text for text in texts):
            raise RuntimeError("NaN in the forward pass (simulated)")
        return working(texts)

    classifier.predict = fails_on_poison
    bodies = [b'{"text": "hello"}', b'{"text": "poison"}', b'{"text": "my card"}', b'{"text": "x"}']
    statuses = [a.status_code for a in post_concurrently(client_wide, bodies)]
    classifier.predict = working
    ready = client_wide.get("/ready").status_code == 200
    assert batch_sizes[0] == 4, f"the four requests must share a batch: {batch_sizes}"
    assert statuses == [200, 500, 200, 200], statuses
    report("one text the model fails on, batched with 3", statuses, ready)


def test_a_request_whose_client_left_is_not_computed(models):
    config = ServeConfig(model=str(models["v1"]), max_batch_size=1, timeout_s=10)
    with live(create_app(config)) as server:
        service = server.server.config.app.state.service
        classifier = service.variants["champion"].batcher.classifier
        working, gate, entered, seen = classifier.predict, threading.Event(), threading.Event(), []

        def gated(texts):
            seen.extend(texts)
            entered.set()
            gate.wait(10)
            return working(texts)

        classifier.predict = gated
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, f"{server.url}/predict", json={"text": "first"})
            assert entered.wait(30), '"first" never reached the model thread'
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{server.url}/predict", json={"text": "impatient"}, timeout=0.3)
            abandoned = service.metrics.abandoned._value.get
            wait_until(lambda: abandoned() == 1, "the server notices the disconnect")
            gate.set()
            statuses = [first.result().status_code]
        statuses.append(httpx.post(f"{server.url}/predict", json={"text": "next"}).status_code)
        ready = httpx.get(f"{server.url}/ready").status_code == 200
    assert "impatient" not in seen, f"the model computed an abandoned request: {seen}"
    assert statuses == [200, 200]
    assert service.metrics.abandoned._value.get() == 1
    report("client disconnects while queued", statuses, ready)


def test_sigterm_drains_requests_in_flight_then_exits(models):
    config = ServeConfig(model=str(models["v1"]), max_batch_size=1, timeout_s=10)
    with live(create_app(config)) as server:
        batcher = server.server.config.app.state.service.variants["champion"].batcher
        classifier = batcher.classifier
        working = classifier.predict
        classifier.predict = lambda texts: time.sleep(0.1) or working(texts)  # a slow model

        def arrived() -> int:
            return batcher.computed + batcher.queue.qsize()

        async def load_then_sigterm() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
                calls = [client.post("/predict", json={"text": f"t{i}"}) for i in range(8)]
                pending = asyncio.gather(*calls)
                deadline = time.monotonic() + 30
                while arrived() < 8 and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)  # lets the requests go out
                assert batcher.computed < 8, "SIGTERM must come while requests are in flight"
                server.server.handle_exit(15, None)  # what uvicorn's SIGTERM handler calls
                return await pending

        answers = asyncio.run(load_then_sigterm())
        server.thread.join(20)
        exited = not server.thread.is_alive()
    statuses = [a.status_code for a in answers]
    assert statuses == [200] * 8, f"requests in flight at SIGTERM must be answered: {statuses}"
    assert exited, "the server must exit once drained"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health")
    report("SIGTERM with 8 requests in flight", statuses, False)


def test_admin_routes_need_the_token_from_the_environment(models, monkeypatch):
    statuses = {}
    for token in ("", ADMIN_TOKEN):
        monkeypatch.setenv("LLMLAB_ADMIN_TOKEN", token)
        with running(create_app(ServeConfig(model=str(models["v1"])))) as client:
            for name, headers in {
                "none": {},
                "wrong": {"Authorization": "Bearer guess"},
                "not bearer": {"Authorization": ADMIN_TOKEN},
                "right": ADMIN,
            }.items():
                statuses[token or "unset", name] = client.post("/admin/reload", headers=headers)
    codes = {key: response.status_code for key, response in statuses.items()}
    assert codes == {
        ("unset", "none"): 403,
        ("unset", "wrong"): 403,
        ("unset", "not bearer"): 403,
        ("unset", "right"): 403,
        (ADMIN_TOKEN, "none"): 401,
        (ADMIN_TOKEN, "wrong"): 403,
        (ADMIN_TOKEN, "not bearer"): 401,
        (ADMIN_TOKEN, "right"): 200,
    }, codes
    assert statuses[ADMIN_TOKEN, "none"].headers["www-authenticate"] == "Bearer"
    report("admin reload without/with wrong/right token", list(codes.values()), True)


def test_pickled_weights_are_refused(models, tmp_path):
    model = BertForSequenceClassification.from_pretrained(models["v1"])
    for item in models["v1"].iterdir():
        if item.suffix != ".safetensors":
            (tmp_path / item.name).write_bytes(item.read_bytes())
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"only pickled weights \(pytorch_model\*\.bin\)"):
        load_classifier(tmp_path)
