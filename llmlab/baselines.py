"""The bars every model must clear: always the majority class, and TF-IDF + logistic regression."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from llmlab.metrics import classification_metrics


def majority_label(train_labels: Sequence[Hashable]) -> Hashable:
    """The most frequent training label; ties go to the smallest label (as pandas' mode does)."""
    counts = Counter(np.asarray(train_labels).tolist())
    if not counts:
        raise ValueError("no training labels to take the majority of")
    top = max(counts.values())
    return min((label for label, count in counts.items() if count == top), key=_order)


def _order(label: Hashable) -> tuple:
    """Sort key that orders numbers numerically and everything else as strings."""
    return (0, label, "") if isinstance(label, int | float) else (1, 0, str(label))


def majority_baseline(
    train_labels: Sequence[Hashable], test_labels: Sequence[Hashable]
) -> dict[str, object]:
    """Accuracy and macro-F1 of always answering the training split's majority label."""
    label = majority_label(train_labels)
    truth = np.asarray(test_labels).tolist()
    return {"label": label, **classification_metrics(truth, [label] * len(truth))}


@dataclass
class TfidfBaseline:
    """A fitted TF-IDF vectorizer and the logistic regression on its features."""

    vectorizer: TfidfVectorizer
    model: LogisticRegression

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Predicted label of every text."""
        return self.model.predict(self.vectorizer.transform(_texts(texts)))

    def score(self, texts: Sequence[str], labels: Sequence[Hashable]) -> dict[str, float]:
        """Accuracy and macro-F1 on labelled texts."""
        return classification_metrics(np.asarray(labels).tolist(), self.predict(texts).tolist())


def _texts(texts: Sequence[str]) -> list[str]:
    """Texts as a list, refusing a bare string (which would be read one character a text)."""
    if isinstance(texts, str):
        raise TypeError("pass a list of texts, not one string")
    return list(texts)


def fit_tfidf(
    train_texts: Sequence[str], train_labels: Sequence[Hashable], C: float = 1.0
) -> TfidfBaseline:
    """Word uni+bigram TF-IDF (sublinear tf) + class-balanced logistic regression, fitted."""
    texts, labels = _texts(train_texts), np.asarray(train_labels)
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"need one label per text: {len(texts)} texts, {len(labels)} labels")
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features = vectorizer.fit_transform(texts)
    # One BLAS thread: the sparse problem is tiny, and extra threads only contend for the cores.
    with threadpool_limits(1):
        model = LogisticRegression(C=C, max_iter=2000, class_weight="balanced")
        model.fit(features, labels)
    return TfidfBaseline(vectorizer, model)
