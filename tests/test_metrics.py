import pytest

from llmlab.metrics import classification_metrics


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
