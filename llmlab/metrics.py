"""Evaluation metrics shared by every lab that classifies."""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.metrics import accuracy_score, f1_score


def classification_metrics(y_true: Sequence, y_pred: Sequence) -> dict[str, float]:
    """Accuracy and macro-F1 (every class counts equally, so rare classes are not ignored)."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise ValueError("no labels to score")
    # Macro-F1 over the labels that occur in either list: a class the model never predicts
    # scores F1 = 0 instead of vanishing from the average.
    labels = sorted(set(y_true) | set(y_pred), key=str)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
    }
