import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from llmlab.baselines import fit_tfidf, majority_baseline, majority_label
from llmlab.metrics import predict_in_chunks

TOY_TEXTS = [
    "great sound and great battery",
    "love the screen, great value",
    "works great, very happy",
    "terrible battery, died in a week",
    "awful screen and bad sound",
    "broke after a day, terrible",
    "the box contains a charger",
    "it ships with a manual",
    "the player has two buttons",
    "great player, love it",
]
TOY_LABELS = ["positive"] * 3 + ["negative"] * 3 + ["neutral"] * 3 + ["positive"]


def test_majority_baseline_on_a_known_toy_set():
    scores = majority_baseline(["a", "b", "b", "c"], ["a", "b", "c", "b"])
    # Always "b": right on 2 of 4; F1(b) = 2 * 0.5 * 1 / 1.5, F1(a) = F1(c) = 0.
    assert scores == {"label": "b", "accuracy": 0.5, "macro_f1": pytest.approx((2 / 3) / 3)}


@pytest.mark.parametrize(
    ("labels", "expected"),
    [(["b", "a", "a", "b"], "a"), (np.array([10, 9, 9, 10]), 9), (torch.tensor([2, 1, 2]), 2)],
)
def test_majority_label_breaks_ties_towards_the_smallest_label(labels, expected):
    assert majority_label(labels) == expected


def test_majority_baseline_refuses_empty_labels():
    with pytest.raises(ValueError, match="no training labels"):
        majority_baseline([], ["a"])
    with pytest.raises(ValueError, match="no labels"):
        majority_baseline(["a"], [])


def test_fit_tfidf_is_the_labs_recipe():
    baseline = fit_tfidf(TOY_TEXTS, TOY_LABELS, C=3.0)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features = vectorizer.fit_transform(TOY_TEXTS)
    model = LogisticRegression(C=3.0, max_iter=2000, class_weight="balanced")
    model.fit(features, TOY_LABELS)
    assert baseline.vectorizer.vocabulary_ == vectorizer.vocabulary_
    np.testing.assert_allclose(baseline.model.coef_, model.coef_, rtol=1e-6, atol=1e-9)
    held_out = ["great battery", "terrible sound", "a manual and a charger"]
    assert baseline.predict(held_out).tolist() == ["positive", "negative", "neutral"]
    assert (
        baseline.predict(held_out).tolist()
        == model.predict(vectorizer.transform(held_out)).tolist()
    )
    assert baseline.score(held_out, ["positive", "negative", "positive"]) == {
        "accuracy": pytest.approx(2 / 3),
        "macro_f1": pytest.approx((1 + 2 / 3 + 0) / 3),
    }


def test_fit_tfidf_regularizes_with_c():
    weak, strong = (fit_tfidf(TOY_TEXTS, TOY_LABELS, C=c) for c in (0.01, 100.0))
    assert np.abs(weak.model.coef_).max() < np.abs(strong.model.coef_).max() / 10


@pytest.mark.parametrize(
    ("texts", "labels", "C", "error"),
    [
        (TOY_TEXTS, TOY_LABELS[:-1], 1.0, ValueError),
        ([], [], 1.0, ValueError),
        (TOY_TEXTS, TOY_LABELS, 0.0, ValueError),
        ("one string", ["a"], 1.0, TypeError),
    ],
)
def test_fit_tfidf_refuses_bad_input(texts, labels, C, error):
    with pytest.raises(error):
        fit_tfidf(texts, labels, C=C)


def lengths_of(texts):
    """A stand-in model whose output depends on each row only."""
    return np.array([[len(text), text.count("a")] for text in texts])


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 100])
@pytest.mark.parametrize("sort", [False, True])
def test_chunked_predict_equals_unchunked(chunk_size, sort):
    lengths = [len(text) for text in TOY_TEXTS] if sort else None
    whole = lengths_of(TOY_TEXTS)
    for inputs in (TOY_TEXTS, np.array(TOY_TEXTS, dtype=object)):
        chunked = predict_in_chunks(lengths_of, inputs, chunk_size, lengths=lengths)
        np.testing.assert_array_equal(chunked, whole)


def test_chunked_predict_sorts_chunks_by_length_and_takes_dicts_of_tensors():
    ids = torch.arange(20).reshape(10, 2)
    mask = torch.tensor([[1, 1]] * 5 + [[1, 0]] * 5)
    chunks = []

    def logits(batch):
        chunks.append(batch["attention_mask"].sum(dim=1).tolist())
        return (batch["input_ids"] * batch["attention_mask"]).float().requires_grad_()

    lengths = mask.sum(dim=1).tolist()
    result = predict_in_chunks(logits, {"input_ids": ids, "attention_mask": mask}, 4, lengths)
    np.testing.assert_array_equal(result, (ids * mask).float().numpy())
    assert chunks == [[1, 1, 1, 1], [1, 2, 2, 2], [2, 2]]


def test_chunked_predict_refuses_bad_input():
    with pytest.raises(ValueError, match="chunk_size"):
        predict_in_chunks(lengths_of, TOY_TEXTS, 0)
    with pytest.raises(ValueError, match="as many"):
        predict_in_chunks(lambda b: b["a"], {"a": [1, 2], "b": [1]})
    with pytest.raises(ValueError, match="lengths"):
        predict_in_chunks(lengths_of, TOY_TEXTS, 4, lengths=[1, 2])
    with pytest.raises(ValueError, match="returned 1 rows"):
        predict_in_chunks(lambda rows: np.zeros(1), TOY_TEXTS[:3], 5)
