import numpy as np
import pytest

from llmlab.metrics import (
    bootstrap_interval,
    classification_metrics,
    expected_calibration_error,
    paired_bootstrap,
    reliability_bins,
)


def test_perfect_predictions():
    assert classification_metrics(["a", "b", "c"], ["a", "b", "c"]) == {
        "accuracy": 1.0,
        "macro_f1": 1.0,
    }


def test_macro_f1_punishes_ignoring_a_rare_class():
    truth = ["common"] * 9 + ["rare"]
    scores = classification_metrics(truth, ["common"] * 10)
    assert scores["accuracy"] == pytest.approx(0.9)
    # F1(common) = 2 * 0.9 * 1 / 1.9, F1(rare) = 0, averaged with equal weight.
    assert scores["macro_f1"] == pytest.approx((2 * 0.9 / 1.9) / 2)


def test_a_predicted_label_that_never_occurs_counts_as_a_class():
    scores = classification_metrics(["a", "a"], ["a", "b"])
    assert scores["accuracy"] == 0.5
    assert scores["macro_f1"] == pytest.approx((2 / 3) / 2)


@pytest.mark.parametrize(("truth", "predicted"), [(["a"], ["a", "b"]), ([], [])])
def test_bad_input_is_refused(truth, predicted):
    with pytest.raises(ValueError):
        classification_metrics(truth, predicted)


def test_reliability_bins_group_by_top_class_confidence():
    # Two examples at confidence 0.9 (one right), one at 0.6 (right).
    probabilities = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]])
    bins = reliability_bins(probabilities, [0, 0, 0], n_bins=10)
    assert bins["count"].tolist() == [1, 2]
    assert bins.confidence.tolist() == pytest.approx([0.6, 0.9])
    assert bins.accuracy.tolist() == pytest.approx([1.0, 0.5])
    assert bins.lower.tolist() == pytest.approx([0.5, 0.8])
    assert bins.upper.tolist() == pytest.approx([0.6, 0.9])


def test_ece_is_zero_when_confidence_matches_accuracy():
    # Confidence 0.75 and right on 3 of 4 examples: perfectly calibrated.
    probabilities = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(probabilities, [0, 0, 0, 1]) == pytest.approx(0.0)


def test_ece_of_an_overconfident_model():
    # Confidence 0.99 but right only half the time: gap 0.49 in the only bin.
    probabilities = np.tile([0.99, 0.01], (4, 1))
    assert expected_calibration_error(probabilities, [0, 0, 1, 1]) == pytest.approx(0.49)


@pytest.mark.parametrize(
    ("probabilities", "truth"),
    [
        (np.array([[0.5, 0.5]]), [0, 1]),  # one row, two labels
        (np.array([[2.0, 0.5]]), [0]),  # logits, not probabilities
        (np.array([0.5, 0.5]), [0, 1]),  # not (n_examples, n_classes)
    ],
)
def test_calibration_refuses_bad_input(probabilities, truth):
    with pytest.raises(ValueError):
        expected_calibration_error(probabilities, truth)


def _noisy_predictions(n: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    wrong = rng.random(n) > accuracy
    return truth, np.where(wrong, (truth + rng.integers(1, 3, n)) % 3, truth)


def test_paired_bootstrap_sees_a_small_consistent_loss_that_unpaired_noise_hides():
    truth, a = _noisy_predictions(540, 0.75, 0)
    b = a.copy()
    right = np.flatnonzero(a == truth)[:8]  # b gets 8 of a's right answers wrong, nothing else
    b[right] = (b[right] + 1) % 3
    paired = paired_bootstrap(truth, a, b)
    assert paired["difference"] == pytest.approx(-8 / 540)
    assert paired["disagreements"] == 8 and paired["high"] < 0 < paired["high"] + 0.02
    single = bootstrap_interval(truth, a)
    assert single["high"] - single["low"] > 3 * (paired["high"] - paired["low"])


def test_paired_bootstrap_of_identical_models_is_exactly_zero():
    truth, a = _noisy_predictions(200, 0.6, 1)
    paired = paired_bootstrap(list(truth), list(a), list(a), metric="macro_f1")
    assert paired["difference"] == paired["low"] == paired["high"] == 0.0


def test_bootstrap_macro_f1_matches_sklearn_and_brackets_it():
    truth, predicted = _noisy_predictions(300, 0.7, 2)
    labels = np.array(["neg", "neu", "pos"])
    scored = bootstrap_interval(labels[truth], labels[predicted], metric="macro_f1")
    expected = classification_metrics(labels[truth], labels[predicted])["macro_f1"]
    assert scored["value"] == pytest.approx(expected)
    assert scored["low"] < expected < scored["high"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: paired_bootstrap([0, 1], [0, 1], [0]), "same rows"),
        (lambda: paired_bootstrap([0], [0], [0], metric="auc"), "unknown metric"),
        (lambda: bootstrap_interval([0, 1], [0, 1], confidence=1.0), "confidence"),
    ],
)
def test_bootstrap_refuses_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
