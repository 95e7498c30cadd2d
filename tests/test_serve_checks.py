"""A model serves only once it passed its check on known inputs: at start (the champion) and at
every reload (same labels as the served model, probabilities that sum to 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serving_helpers import ADMIN, LABELS, running, wait_until
from tiny_models import save_tiny_classifier

from llmlab.serving.app import create_app
from llmlab.serving.state import ServeConfig, load_model

pytestmark = pytest.mark.usefixtures("admin_token")


def reload_to(models: dict[str, Path], tmp_path: Path, new: Path, load=load_model) -> dict:
    """Serve v1 through an alias, point the alias at `new`, reload: what the service answers."""
    alias = tmp_path / "champion"
    alias.symlink_to(models["v1"])
    with running(create_app(ServeConfig(model=str(alias)), load=load)) as client:
        alias.unlink()
        alias.symlink_to(new)
        refused = client.post("/admin/reload", headers=ADMIN)
        answer = client.post("/predict", json={"text": "hi"})
        ready = client.get("/ready").status_code
    return {"refused": refused, "answer": answer, "ready": ready}


def assert_v1_still_serves(seen: dict) -> None:
    assert seen["answer"].status_code == 200 and seen["ready"] == 200
    (prediction,) = seen["answer"].json()["predictions"]
    assert prediction["model_version"] == "v1" and set(prediction["probabilities"]) == set(LABELS)


def test_a_reload_to_a_model_with_other_labels_is_refused_and_the_old_one_serves(models, tmp_path):
    """As many labels, one renamed: only the label check tells them apart (removing it from
    check_classifier fails this test: the reload swaps in a model whose answers clients misread)."""
    other = (*LABELS[:-1], "refund")
    relabelled = save_tiny_classifier(tmp_path / "relabelled", 0, other)
    seen = reload_to(models, tmp_path, relabelled)
    assert seen["refused"].status_code == 409, seen["refused"].text
    detail = seen["refused"].json()["detail"]
    assert "still serving {'champion': 'v1'}" in detail
    assert f"has labels {list(other)}, expected {list(LABELS)}" in detail
    assert_v1_still_serves(seen)


def test_a_reload_whose_probabilities_do_not_sum_to_one_is_refused(models, tmp_path):
    """v2 answers with per-label sigmoids (a multi-label head read as a classifier): every label
    valid, one answer per text, but rows that do not sum to 1. Removing the sum check from
    check_classifier fails this test."""

    def load_sigmoid_v2(reference: str, **options) -> object:
        classifier = load_model(reference, **options)
        if classifier.version == "v2":
            softmax = classifier.postprocess

            def sigmoid(logits: np.ndarray) -> list[dict]:
                outputs = softmax(logits)
                for output, row in zip(outputs, 1 / (1 + np.exp(-logits)), strict=True):
                    output["probabilities"] = dict(
                        zip(classifier.labels, row.tolist(), strict=True)
                    )
                return outputs

            classifier.postprocess = sigmoid
        return classifier

    seen = reload_to(models, tmp_path, models["v2"], load=load_sigmoid_v2)
    assert seen["refused"].status_code == 409, seen["refused"].text
    detail = seen["refused"].json()["detail"]
    assert "still serving {'champion': 'v1'}" in detail and "model v2 gave an invalid" in detail
    assert_v1_still_serves(seen)


def cannot_infer(reference: str, **options) -> object:
    """Loads, but its forward pass gives one row of NaN whatever the batch."""
    classifier = load_model(reference, **options)
    classifier.logits = lambda features: np.full((1, len(classifier.labels)), np.nan)
    return classifier


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("empty directory", "FileNotFoundError: no model in"),
        ("cannot infer", "ModelCheckError: model v1 gave 1 answers for 4 texts"),
    ],
)
def test_a_champion_that_fails_to_load_fails_health_and_ready_with_the_reason(
    models, tmp_path, fault, reason
):
    """In-process (no uvicorn to exit): /health 503 naming the error, /ready 503, /predict 503.
    A champion failure treated like a challenger's (skipped, state 'serving') fails this test."""
    model, load = (tmp_path, load_model) if fault == "empty directory" else (models["v1"], None)
    app = create_app(ServeConfig(model=str(model)), load=load or cannot_infer)
    with TestClient(app) as client:
        wait_until(lambda: client.get("/health").json()["state"] != "loading", "loading ends")
        health, ready = client.get("/health"), client.get("/ready")
        predict = client.post("/predict", json={"text": "hi"})
    assert health.status_code == 503, health.json()
    assert health.json()["state"] == "failed"
    assert health.json()["load_errors"]["champion"].startswith(reason), health.json()
    assert ready.status_code == 503 and ready.json()["reason"] == "models failed"
    assert predict.status_code == 503 and predict.headers["retry-after"]
