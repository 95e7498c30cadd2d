"""POST /similar (lab 15) on a tiny random encoder: nearest rows sorted by score, 422 for bad
input, probes that report the index, and a service that refuses an index of another model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serving_helpers import SENTENCES, running, save_tiny_index, wait_until

from llmlab.cli import main
from llmlab.embeddings import model_version
from llmlab.serving.app import create_app
from llmlab.serving.similar import SimilarResponse
from llmlab.serving.state import ServeConfig
from llmlab.vectorindex import IndexVersionError


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> dict[str, Path]:
    """A tiny encoder, an index of SENTENCES built with it, and one built by another encoder."""
    root = tmp_path_factory.mktemp("similar")
    paths = {"model": models["v1"]}
    for seed, name in enumerate(("encoder", "other_encoder")):
        paths[name], paths[f"{name}_index"] = save_tiny_index(root, name, seed)
    return paths


def config(setup: dict[str, Path], index: str = "encoder_index") -> ServeConfig:
    """The tiny classifier, with /similar from `index` and queries embedded by the encoder."""
    return ServeConfig(
        model=str(setup["model"]), index_dir=setup[index], embedding_model=setup["encoder"]
    )


@pytest.fixture(scope="module")
def client(setup: dict[str, Path]) -> TestClient:
    """The service with /similar, loaded."""
    with running(create_app(config(setup))) as client:
        yield client


def test_similar_returns_k_rows_nearest_first_itself_on_top(client: TestClient) -> None:
    """A saved sentence's nearest row is itself (score 1); k rows come back, scores falling."""
    for k, sentence in [(3, SENTENCES[2]), (5, SENTENCES[6]), (8, SENTENCES[0])]:
        response = client.post("/similar", json={"text": sentence, "k": k})
        assert response.status_code == 200, response.text
        body = SimilarResponse.model_validate(response.json())
        scores = [result.score for result in body.results]
        assert len(body.results) == k and body.index_rows == len(SENTENCES)
        assert body.results[0].text == sentence and abs(scores[0] - 1) < 1e-4
        assert scores == sorted(scores, reverse=True)
    # JSON Schema's integers include 3.0: the schema allows it, so the service does.
    assert len(client.post("/similar", json={"text": "hi", "k": 3.0}).json()["results"]) == 3
    default = client.post("/similar", json={"text": "flickering screen"}).json()
    assert len(default["results"]) == 5 and set(default["results"][0]) == {
        "text",
        "label",
        "source_id",
        "score",
    }


@pytest.mark.parametrize(
    "body",
    [
        {"text": ""},
        {"text": "   "},
        {"text": "x" * 1001},
        {"text": "hi", "k": 0},
        {"text": "hi", "k": 51},
        {"text": "hi", "k": "5"},
        {"text": "hi", "k": True},
        {"text": "hi", "k": 2.5},
        {"k": 5},
        {"text": "hi", "extra": 1},
    ],
)
def test_bad_input_gets_422_in_the_service_error_shape(client: TestClient, body: dict) -> None:
    """Empty, blank or too long text, k out of 1..50 or not an int, a missing or unknown field."""
    response = client.post("/similar", json=body)
    assert response.status_code == 422
    assert all(set(problem) == {"loc", "msg", "type"} for problem in response.json()["detail"])


def test_text_that_is_not_unicode_gets_422(client: TestClient) -> None:
    """A lone UTF-16 surrogate is refused with the same shape, never a 500."""
    response = client.post("/similar", content=b'{"text": "lone \\ud800"}')
    assert response.status_code == 422
    assert all(set(problem) == {"loc", "msg", "type"} for problem in response.json()["detail"])


def test_probes_and_schema_describe_the_index(client: TestClient, setup: dict[str, Path]) -> None:
    """/health and /ready say the index is loaded and how many rows it has; the published schema
    bounds k to 1..50 and declares the response body /similar returns."""
    version = model_version(setup["encoder"])
    for probe in ("/health", "/ready"):
        index = client.get(probe).json()["index"]
        assert index["loaded"] and index["rows"] == len(SENTENCES)
        assert index["model_version"] == version
    schema = client.get("/openapi.json").json()
    request = schema["components"]["schemas"]["SimilarRequest"]["properties"]["k"]
    assert (request["minimum"], request["maximum"], request["default"]) == (1, 50, 5)
    answer = schema["paths"]["/similar"]["post"]["responses"]["200"]["content"]
    assert answer["application/json"]["schema"]["$ref"].endswith("/SimilarResponse")
    assert client.post("/similar", json={"text": "hi"}).json()["model_version"] == version


def test_an_index_of_another_model_is_refused_at_start(setup: dict[str, Path]) -> None:
    """The service's version check: this test fails if the check at start is removed (the
    tiny encoders have the same dimension, so the wrong index would load and answer)."""
    wrong = config(setup, "other_encoder_index")
    with pytest.raises(IndexVersionError) as refused:
        create_app(wrong)
    assert model_version(setup["other_encoder"]) in str(refused.value)
    assert model_version(setup["encoder"]) in str(refused.value)


def test_an_index_that_cannot_load_fails_health(setup: dict[str, Path], tmp_path: Path) -> None:
    """An index whose FAISS file no longer matches its manifest: /health 503 naming why, /ready
    503, and /similar 503 rather than answers from a broken index."""
    broken = shutil.copytree(setup["encoder_index"], tmp_path / "broken")
    with open(broken / "index.faiss", "ab") as handle:
        handle.write(b"\0")
    app = create_app(config(setup | {"broken": broken}, "broken"))
    with TestClient(app) as client:
        wait_until(
            lambda: client.get("/health").json()["index"]["state"] != "loading",
            "the index finishes loading",
            timeout_s=60,
        )
        health = client.get("/health")
        assert health.status_code == 503 and "digest" in health.json()["index"]["error"]
        assert client.get("/ready").status_code == 503
        assert client.post("/similar", json={"text": "hi"}).status_code == 503


def test_llmlab_serve_exits_with_the_reason(
    setup: dict[str, Path], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`llmlab serve --index` with an index of another model exits 2 and says why."""
    monkeypatch.setattr(
        "llmlab.embeddings.pretrained_model_dir", lambda: setup["encoder"], raising=False
    )
    monkeypatch.setattr("llmlab.text.pretrained_model_dir", lambda: setup["encoder"])
    command = [
        "serve",
        "--model",
        str(setup["model"]),
        "--index",
        str(setup["other_encoder_index"]),
    ]
    assert main(command) == 2
    assert "rebuild the index" in capsys.readouterr().err


def test_without_an_index_there_is_no_similar_route(setup: dict[str, Path]) -> None:
    """/similar exists only when the service is given an index."""
    app = create_app(ServeConfig(model=str(setup["model"])))
    assert "/similar" not in app.openapi()["paths"]
    assert "/similar" in create_app(config(setup)).openapi()["paths"]
