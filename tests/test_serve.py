"""The classifier service on tiny random models: every error case, batching, reload, A/B."""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import ADMIN, LABELS, TEXTS, running, wait_until
from transformers import AutoTokenizer, BertForSequenceClassification

from llmlab.serving.app import create_app
from llmlab.serving.batching import DynamicBatcher
from llmlab.serving.classifier import load_classifier
from llmlab.serving.loadtest import load_test, summarize
from llmlab.serving.manager import BackgroundServer
from llmlab.serving.schemas import MAX_BODY_BYTES, MAX_ITEMS, MAX_TEXT_CHARS
from llmlab.serving.state import ServeConfig

pytestmark = pytest.mark.usefixtures("admin_token")


@pytest.fixture
def client(models: dict[str, Path]):
    with running(create_app(ServeConfig(model=str(models["v1"]), max_wait_ms=2))) as client:
        yield client


def test_predict_one_text_returns_label_probabilities_and_version(client):
    response = client.post("/predict", json={"text": "I lost my card"})
    assert response.status_code == 200
    body = response.json()
    assert body["variant"] == "champion"
    (prediction,) = body["predictions"]
    assert prediction["model_version"] == "v1"
    assert set(prediction["probabilities"]) == set(LABELS)
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction["label"] == max(
        prediction["probabilities"], key=prediction["probabilities"].get
    )
    assert prediction["score"] == pytest.approx(max(prediction["probabilities"].values()))


def test_batch_request_equals_one_request_per_text(client):
    batch = client.post("/predict", json={"texts": TEXTS}).json()["predictions"]
    singles = [client.post("/predict", json={"text": t}).json()["predictions"][0] for t in TEXTS]
    for together, alone in zip(batch, singles, strict=True):
        assert together["label"] == alone["label"]
        for label in LABELS:
            assert together["probabilities"][label] == pytest.approx(
                alone["probabilities"][label], abs=1e-5
            )


BAD_REQUESTS = {
    "empty text": ({"text": ""}, 422, "text is empty"),
    "blank text": ({"text": "  \n "}, 422, "text is empty"),
    "text over the limit": ({"text": "a" * (MAX_TEXT_CHARS + 1)}, 422, "at most 1000 characters"),
    "number instead of text": ({"text": 5}, 422, "valid string"),
    "string instead of list": ({"texts": "hello"}, 422, "valid list"),
    "number inside the list": ({"texts": ["hi", 3]}, 422, "valid string"),
    "empty item in the list": ({"texts": ["hi", ""]}, 422, "text is empty"),
    "too many items": ({"texts": ["hi"] * (MAX_ITEMS + 1)}, 422, "at most 64 items"),
    "empty list": ({"texts": []}, 422, "at least 1 item"),
    "neither field": ({}, 422, "exactly one of 'text' or 'texts'"),
    "both fields": ({"text": "a", "texts": ["b"]}, 422, "exactly one of 'text' or 'texts'"),
    "unknown field": ({"txt": "a"}, 422, "Extra inputs are not permitted"),
    "a list as body": (["hello"], 422, "valid dictionary"),
}


@pytest.mark.parametrize("body,status,message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_json_gets_a_clear_4xx_and_the_service_stays_up(client, body, status, message):
    response = client.post("/predict", json=body)
    assert response.status_code == status
    assert message in response.text
    assert len(response.text) < 1000, "errors must not echo the (possibly huge) input"
    assert client.post("/predict", json={"text": "still there?"}).status_code == 200


RAW_BAD_BODIES = {
    "invalid UTF-8": (b'{"text": "caf\xe9 \xff"}', 400, "not valid UTF-8"),
    "not JSON": (b"text=hello", 400, "not valid JSON"),
    "truncated JSON": (b'{"text": "hel', 400, "not valid JSON"),
    "body over the limit": (b'{"text": "' + b"a" * MAX_BODY_BYTES + b'"}', 413, ""),
}


@pytest.mark.parametrize("raw,status,message", RAW_BAD_BODIES.values(), ids=RAW_BAD_BODIES.keys())
def test_malformed_bodies_get_400_or_413(client, raw, status, message):
    response = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert message in response.text
    assert client.post("/predict", json={"text": "still there?"}).status_code == 200


def test_a_crashing_model_gives_500_with_a_request_id_and_the_next_request_works(client, caplog):
    classifier = client.app.state.service.variants["champion"].batcher.classifier
    working = classifier.logits

    def crash(features):
        raise RuntimeError("CUDA out of memory (simulated)")

    classifier.logits = crash
    with caplog.at_level("ERROR", logger="llmlab.serve"):
        response = client.post("/predict", json={"text": "hello"})
    assert response.status_code == 500
    request_id = response.json()["request_id"]
    assert request_id == response.headers["x-request-id"]
    assert "CUDA" not in response.text, "5xx bodies name the request, not the exception"
    assert any(
        request_id in r.message and "CUDA out of memory" in r.message for r in caplog.records
    )
    classifier.logits = working
    assert client.get("/ready").status_code == 200
    assert client.post("/predict", json={"text": "hello"}).status_code == 200


def test_a_slow_model_gives_504_while_health_still_answers(models):
    app = create_app(ServeConfig(model=str(models["v1"]), timeout_s=0.2))
    with running(app) as client:
        classifier = app.state.service.variants["champion"].batcher.classifier
        working = classifier.logits

        batcher, release = app.state.service.variants["champion"].batcher, threading.Event()

        def slow(features):  # slow until the test releases it
            release.wait(30)
            return working(features)

        classifier.logits = slow
        response = client.post("/predict", json={"text": "hello"})
        assert response.status_code == 504
        assert "did not answer within 0.2 s" in response.text
        assert response.json()["request_id"]
        assert client.get("/health").status_code == 200
        assert batcher.busy_for() > 0, "health answered while the model still computed"
        classifier.logits = working
        release.set()
        wait_until(lambda: batcher.busy_for() == 0, "the slow call finishes; the worker moves on")
        assert client.post("/predict", json={"text": "hello"}).status_code == 200


def test_health_ready_openapi_and_unknown_routes(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["state"] == "serving"
    assert health["workers"]["champion"] == {"alive": True, "restarts": 0, "last_error": None}
    assert client.get("/ready").json() == {"status": "ready", "models": {"champion": "v1"}}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/health", "/ready", "/metrics", "/admin/reload"} <= set(paths)
    assert client.get("/docs").status_code == 200
    assert client.get("/nope").status_code == 404


def test_ready_and_health_report_503_when_the_batch_worker_was_stopped(client):
    batcher = client.app.state.service.variants["champion"].batcher
    client.portal.call(batcher.worker.cancel)  # on the app's event loop, as it is not thread-safe
    wait_until(lambda: not batcher.alive, "the worker task ends")
    assert client.get("/ready").json()["reason"] == "champion batch worker is dead"
    assert client.get("/health").status_code == 503


def metric_values(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from Prometheus text."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_requests_latency_and_batch_sizes(client):
    client.post("/predict", json={"texts": TEXTS})
    client.post("/predict", json={"text": "hi"})
    client.post("/predict", json={"text": ""})
    values = metric_values(client.get("/metrics").text)
    ok = (("endpoint", "/predict"), ("status", "200"))
    assert values[("llmlab_requests_total", ok)] == 2
    assert values[("llmlab_requests_total", (("endpoint", "/predict"), ("status", "422")))] == 1
    assert values[("llmlab_request_latency_seconds_count", (("endpoint", "/predict"),))] == 3
    assert values[("llmlab_batch_size_sum", (("variant", "champion"),))] == len(TEXTS) + 1
    info = (("backend", "torch"), ("variant", "champion"), ("version", "v1"))
    assert values[("llmlab_model_info", info)] == 1
    predicted = sum(v for (name, _), v in values.items() if name == "llmlab_predictions_total")
    assert predicted == len(TEXTS) + 1


def test_batcher_gathers_concurrent_requests_into_one_forward_pass(models):
    classifier = load_classifier(models["v1"])
    batch_sizes: list[int] = []

    async def concurrent_predictions():
        batcher = DynamicBatcher(
            classifier,
            max_batch_size=4,
            max_wait_ms=50,
            on_batch=lambda m, out, s: batch_sizes.append(len(out)),
        )
        batcher.start()
        results = await asyncio.gather(*(batcher.predict([text]) for text in TEXTS))
        await batcher.stop()
        return [result[0] for result in results]

    batched = asyncio.run(concurrent_predictions())
    assert batch_sizes == [4, 1], "5 concurrent texts with max_batch_size=4: one full batch, then 1"
    for text, prediction in zip(TEXTS, batched, strict=True):
        (alone,) = classifier.predict([text])
        assert prediction["label"] == alone["label"]
        np.testing.assert_allclose(
            list(prediction["probabilities"].values()),
            list(alone["probabilities"].values()),
            atol=1e-5,
        )


def test_batcher_rejects_nonsense_settings(models):
    with pytest.raises(ValueError, match="max_batch_size and max_queue must be >= 1"):
        DynamicBatcher(load_classifier(models["v1"]), max_batch_size=0)


def test_hot_reload_switches_version_with_no_failed_request(models, tmp_path):
    alias = tmp_path / "champion"  # a symlink plays the registry alias
    alias.symlink_to(models["v1"])
    app = create_app(ServeConfig(model=str(alias), max_wait_ms=1))
    statuses, versions = [], []
    with running(app) as client:
        stop = threading.Event()

        def traffic():
            while not stop.is_set():
                response = client.post("/predict", json={"text": "hello"})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.append(response.json()["predictions"][0]["model_version"])

        sender = threading.Thread(target=traffic)
        sender.start()
        wait_until(lambda: len(statuses) >= 5, "traffic flows before the switch")
        alias.unlink()
        alias.symlink_to(models["v2"])
        reloaded = client.post("/admin/reload", headers=ADMIN)
        answered = len(statuses)
        wait_until(lambda: len(statuses) >= answered + 5, "traffic flows after the switch")
        stop.set()
        sender.join()
    assert reloaded.json() == {"models": {"champion": "v2"}}
    assert statuses and set(statuses) == {200}, f"failed requests during the switch: {statuses}"
    assert versions[0] == "v1" and versions[-1] == "v2"
    switch = versions.index("v2")
    assert set(versions[switch:]) == {"v2"}, "once switched, every answer comes from v2"


def test_reload_loads_only_the_variants_whose_version_changed(models, tmp_path):
    alias = tmp_path / "champion"
    alias.symlink_to(models["v1"])
    config = ServeConfig(model=str(alias), challenger=str(models["v2"]))
    with running(create_app(config)) as client:
        variants = client.app.state.service.variants
        challenger_before = variants["challenger"].batcher.classifier
        alias.unlink()
        alias.symlink_to(models["v2"])
        assert client.post("/admin/reload", headers=ADMIN).json()["models"] == {
            "champion": "v2",
            "challenger": "v2",
        }
        assert variants["challenger"].batcher.classifier is challenger_before


def test_a_failed_reload_keeps_serving_the_old_model(models, tmp_path):
    alias = tmp_path / "champion"
    alias.symlink_to(models["v1"])
    with running(create_app(ServeConfig(model=str(alias)))) as client:
        alias.unlink()
        alias.symlink_to(tmp_path)  # not a model
        response = client.post("/admin/reload", headers=ADMIN)
        assert response.status_code == 500
        assert "reload failed, still serving {'champion': 'v1'}" in response.text
        assert response.json()["request_id"]
        answer = client.post("/predict", json={"text": "hi"}).json()
        assert answer["predictions"][0]["model_version"] == "v1"


def test_ab_split_routes_a_fraction_to_the_challenger(models):
    config = ServeConfig(
        model=str(models["v1"]), challenger=str(models["v2"]), challenger_fraction=0.3, seed=1
    )
    with running(create_app(config)) as client:
        answers = [client.post("/predict", json={"text": "hi"}).json() for _ in range(60)]
        share = np.mean([a["variant"] == "challenger" for a in answers])
        assert 0.1 < share < 0.5, f"challenger got {share:.0%} of traffic, configured 30%"
        for answer in answers:
            expected = "v2" if answer["variant"] == "challenger" else "v1"
            assert answer["predictions"][0]["model_version"] == expected
        assert (
            client.put(
                "/admin/traffic", headers=ADMIN, json={"challenger_fraction": 1.0}
            ).status_code
            == 200
        )
        assert client.post("/predict", json={"text": "hi"}).json()["variant"] == "challenger"
        assert (
            client.put(
                "/admin/traffic", headers=ADMIN, json={"challenger_fraction": 1.5}
            ).status_code
            == 422
        )


def test_traffic_split_without_challenger_is_a_409(client):
    response = client.put("/admin/traffic", headers=ADMIN, json={"challenger_fraction": 0.1})
    assert response.status_code == 409
    assert "no challenger" in response.text


def test_prediction_log_has_label_and_confidence_but_no_text(models, tmp_path):
    log = tmp_path / "predictions.jsonl"
    with running(create_app(ServeConfig(model=str(models["v1"]), prediction_log=log))) as client:
        predictions = client.post("/predict", json={"texts": TEXTS}).json()["predictions"]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [row["label"] for row in rows] == [p["label"] for p in predictions]
    assert rows[0]["score"] == pytest.approx(predictions[0]["score"], abs=1e-6)
    assert {row["model_version"] for row in rows} == {"v1"}
    assert not any(text in log.read_text() for text in TEXTS)


def test_onnx_backend_matches_pytorch(models, tmp_path):
    source = models["v1"]
    target = tmp_path / "onnx"
    model = BertForSequenceClassification.from_pretrained(source).eval()
    model.config.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    ids = torch.ones(2, 5, dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings():  # the tracer's notes on BERT's shape checks are harmless here
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            target / "model.onnx",
            input_names=names,
            output_names=["logits"],
            dynamic_axes={name: {0: "batch", 1: "tokens"} for name in names},
            dynamo=False,
        )
    onnx = load_classifier(target).predict(TEXTS)
    pytorch = load_classifier(source).predict(TEXTS)
    assert load_classifier(target).backend == "onnx"
    for a, b in zip(onnx, pytorch, strict=True):
        assert a["label"] == b["label"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_load_classifier_names_the_missing_weights(models, tmp_path):
    with pytest.raises(FileNotFoundError, match="needs an .onnx file"):
        load_classifier(models["v1"], backend="onnx")
    with pytest.raises(ValueError, match="unknown backend"):
        load_classifier(models["v1"], backend="tensorrt")


def test_summarize_computes_throughput_and_percentiles():
    latencies = np.arange(1, 101) / 1000  # 1..100 ms
    requests = pd.DataFrame({"sent_s": np.linspace(0, 1.9, 100), "latency_s": latencies})
    requests["status"] = [200] * 99 + [504]
    summary = summarize(requests)
    assert summary["requests"] == 100 and summary["failed"] == 1
    assert summary["throughput_rps"] == pytest.approx(99 / 2.0)  # last answer at 1.9 + 0.1 s
    assert summary["p50_ms"] == pytest.approx(50.0)
    assert summary["p99_ms"] == pytest.approx(98.02)


def test_llmlab_serve_answers_real_http_load_on_localhost(models):
    with BackgroundServer(str(models["v1"]), "--max-batch-size", "8") as server:
        assert server.url.startswith("http://127.0.0.1:")
        requests = asyncio.run(load_test(server.url, TEXTS, requests=24, concurrency=6))
    assert server.process.poll() is not None, "leaving the block stops the server"
    summary = summarize(requests)
    assert summary["failed"] == 0 and summary["requests"] == 24
    assert set(requests.model_version) == {"v1"}
    assert sorted(requests.text_index) == sorted(i % len(TEXTS) for i in range(24))


def test_a_server_that_cannot_start_reports_its_log(tmp_path):
    with pytest.raises(RuntimeError, match="server exited with code"):
        with BackgroundServer(str(tmp_path / "no-such-model")):
            pass


def test_moving_the_registry_alias_and_reloading_switches_the_served_version(models):
    from llmlab import registry

    lineage = registry.make_lineage("data-hash", {"layers": 1})
    first = registry.register(models["v1"], "tiny", {"accuracy": 0.5}, lineage)
    second = registry.register(models["v2"], "tiny", {"accuracy": 0.6}, lineage)
    registry.promote("tiny", first)
    with running(create_app(ServeConfig(model="tiny@champion"))) as client:
        assert client.get("/ready").json()["models"] == {"champion": f"tiny/{first}"}
        registry.promote("tiny", second)
        assert client.post("/admin/reload", headers=ADMIN).json() == {
            "models": {"champion": f"tiny/{second}"}
        }
        answer = client.post("/predict", json={"text": "hi"}).json()
        assert answer["predictions"][0]["model_version"] == f"tiny/{second}"


def test_the_image_ships_no_admin_token_and_builds_from_an_allowlist():
    from llmlab.config import REPO_ROOT

    dockerfile = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    assert "LLMLAB_ADMIN_TOKEN=" not in dockerfile, "a baked-in token is a public token"
    assert "127.0.0.1:8000/health" in dockerfile, "the container's liveness check is /health"
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored, "everything is ignored unless allowed"
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    copied = {
        word
        for line in dockerfile.splitlines()
        if line.startswith("COPY")
        for word in line.split()[1:-1]
    }
    assert allowed == copied, f"allowed {allowed}, but the Dockerfile copies {copied}"
