"""The pipeline's stages one by one, in process: training learns, and each gate fails when it must.

tests/test_pipeline.py runs them end to end through DVC; here each failure branch is forced on
its own, next to the run where the same stage passes, so a gate that never fires and a gate
that always fires both fail a test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from llmlab import stages
from llmlab.metrics import classification_metrics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Params of a workspace whose data, train and evaluate stages ran (smoke size)."""
    root = tmp_path_factory.mktemp("stages")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params |= {
        "profile": "smoke",
        "feedback": str(REPO / "data" / "customer_feedback.csv"),
        "build": str(root / "build"),
        "registry": str(root / "registry"),
    }
    stages.stage_data(params)
    params["train_summary"] = stages.stage_train(params)
    stages.stage_evaluate(params)
    return params


def test_the_train_stage_learns_through_the_course_loop(trained: dict) -> None:
    """The classifier beats always answering the majority class on macro-F1 by a wide margin."""
    build = Path(trained["build"])
    evaluation = json.loads((build / "evaluation.json").read_text())
    test = stages._splits(trained)["test"]
    majority = test.label.mode()[0]
    floor = classification_metrics(test.label.tolist(), [majority] * len(test))["macro_f1"]
    assert evaluation["macro_f1_interval"][0] > floor + 0.1, (evaluation, floor)
    assert "steps" in trained["train_summary"]  # trained by llmlab.train, which counts steps


def test_the_quality_gate_stops_a_model_below_it(trained: dict) -> None:
    """A gate above the interval's low end raises and writes no predictions for later stages."""
    build = Path(trained["build"])
    low = json.loads((build / "evaluation.json").read_text())["macro_f1_interval"][0]
    strict = trained | {
        "build": trained["build"],
        "gates": {**trained["gates"], "min_macro_f1": low + 0.01},
    }
    (build / "predictions.json").rename(build / "predictions.kept")
    try:
        with pytest.raises(RuntimeError, match="quality gate"):
            stages.stage_evaluate(strict)
        assert not (build / "predictions.json").exists()
    finally:
        (build / "predictions.kept").replace(build / "predictions.json")


def test_the_compress_gate_passes_an_agreeing_model_and_stops_at_a_higher_bar(
    trained: dict,
) -> None:
    """int8 agreement is measured and compared: the same model passes at its own agreement and
    fails one point above it (a stage that skipped the check would pass both)."""
    stages.stage_compress(trained)
    agreement = json.loads((Path(trained["build"]) / "compression.json").read_text())["agreement"]
    assert 0.5 < agreement <= 1.0
    above = trained | {"compress": {"min_agreement": agreement + 0.01}}
    with pytest.raises(RuntimeError, match="agrees with the original on"):
        stages.stage_compress(above)
    stages.stage_compress(trained)  # leave a passing compressed model for the next tests


def test_register_promotes_then_refuses_a_worse_candidate(trained: dict) -> None:
    """The first version becomes champion; one whose test predictions are all wrong is refused
    and the champion stays (a gate that compared nothing would promote it)."""
    assert "promoted to champion" in stages.stage_register(trained)
    build = Path(trained["build"])
    champion = json.loads((build / "registered.json").read_text())["champion"]
    kept = (build / "predictions.json").read_text()
    evaluation = json.loads(kept)
    labels = sorted(set(evaluation["labels"]))
    evaluation["predictions"] = [
        next(other for other in labels if other != truth) for truth in evaluation["labels"]
    ]
    (build / "predictions.json").write_text(json.dumps(evaluation))
    try:
        with pytest.raises(RuntimeError, match=f"version {champion} stays champion"):
            stages.stage_register(trained)
    finally:
        (build / "predictions.json").write_text(kept)


@pytest.mark.service
def test_serve_check_catches_a_service_answering_with_another_version(
    trained: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service answers with the registered champion; a record naming another version fails."""
    for name in ("MLFLOW_TRACKING_URI", "LLMLAB_BUILD_DIR"):  # the stage sets them: restore after
        monkeypatch.setenv(name, os.environ.get(name, ""))
    build = Path(trained["build"])
    registered = json.loads((build / "registered.json").read_text())
    assert "answered by" in stages.stage_serve_check(trained)
    (build / "registered.json").write_text(json.dumps(registered | {"champion": 999}))
    try:
        with pytest.raises(RuntimeError, match="not champion"):
            stages.stage_serve_check(trained)
    finally:
        (build / "registered.json").write_text(json.dumps(registered))
