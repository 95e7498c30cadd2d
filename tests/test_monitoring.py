import json

import numpy as np
import pandas as pd
import pytest

from llmlab.monitoring import (
    DRIFT_THRESHOLD,
    confidence_drift,
    drift_report,
    label_drift,
    population_stability_index,
    read_prediction_log,
)

LABELS = ["a", "b", "c", "d"]


def test_psi_is_zero_for_equal_distributions_and_symmetric():
    assert population_stability_index([10, 20, 30], [20, 40, 60], smoothing=0.0) == pytest.approx(
        0.0
    )
    forward = population_stability_index([50, 30, 20], [20, 30, 50])
    assert forward == pytest.approx(population_stability_index([20, 30, 50], [50, 30, 20]))
    # By hand: (0.2-0.5) ln(0.2/0.5) + 0 + (0.5-0.2) ln(0.5/0.2) = 0.6 ln 2.5, with tiny smoothing.
    exact = population_stability_index([50, 30, 20], [20, 30, 50], smoothing=0.0)
    assert exact == pytest.approx(0.6 * np.log(2.5))
    assert forward == pytest.approx(exact, rel=0.05)


def test_psi_stays_finite_when_a_bin_is_empty():
    assert np.isfinite(population_stability_index([10, 0], [0, 10]))


def test_psi_rejects_mismatched_bins():
    with pytest.raises(ValueError, match="one shape"):
        population_stability_index([1, 2], [1, 2, 3])


def test_label_drift_grows_with_the_shift():
    rng = np.random.default_rng(0)
    reference = rng.choice(LABELS, 2000)
    same = rng.choice(LABELS, 2000)
    shifted = rng.choice(LABELS, 2000, p=[0.7, 0.1, 0.1, 0.1])
    assert label_drift(reference, same, LABELS) < 0.02
    assert label_drift(reference, shifted, LABELS) > DRIFT_THRESHOLD


def test_confidence_drift_sees_a_drop_in_confidence():
    rng = np.random.default_rng(0)
    reference = rng.beta(8, 2, 2000)
    assert confidence_drift(reference, rng.beta(8, 2, 2000)) < 0.05
    assert confidence_drift(reference, rng.beta(3, 3, 2000)) > DRIFT_THRESHOLD


def test_drift_report_flags_only_real_drift():
    rng = np.random.default_rng(1)

    def predictions(p, a, b):
        return pd.DataFrame({"label": rng.choice(LABELS, 1000, p=p), "score": rng.beta(a, b, 1000)})

    reference = predictions([0.25] * 4, 8, 2)
    calm = drift_report(reference, predictions([0.25] * 4, 8, 2), LABELS)
    moved = drift_report(reference, predictions([0.1, 0.1, 0.1, 0.7], 4, 4), LABELS)
    assert not calm["drifted"] and moved["drifted"]
    assert moved["mean_confidence_change"] < -0.2


def test_drift_report_names_missing_columns():
    with pytest.raises(ValueError, match="columns label and score"):
        drift_report(pd.DataFrame({"label": ["a"]}), pd.DataFrame({"label": ["a"]}), LABELS)


def test_read_prediction_log(tmp_path):
    log = tmp_path / "predictions.jsonl"
    rows = [
        {"time": 1_700_000_000 + i, "variant": "champion", "label": "a", "score": 0.9}
        for i in range(3)
    ]
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))
    frame = read_prediction_log(log)
    assert list(frame.label) == ["a"] * 3
    assert frame.time.dt.year.unique().tolist() == [2023]
    with pytest.raises(FileNotFoundError, match="--prediction-log"):
        read_prediction_log(tmp_path / "missing.jsonl")
