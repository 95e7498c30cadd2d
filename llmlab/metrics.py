"""Evaluation metrics shared by every lab that classifies."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
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


def _confidences(probabilities: np.ndarray, y_true: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Top-class probability and whether that class is right, per example."""
    probabilities = np.asarray(probabilities, dtype=float)
    y_true = np.asarray(y_true)
    if probabilities.ndim != 2 or len(probabilities) != len(y_true):
        raise ValueError(
            f"need (n_examples, n_classes) probabilities for {len(y_true)} labels, "
            f"got shape {probabilities.shape}"
        )
    if len(y_true) == 0:
        raise ValueError("no examples to calibrate")
    if not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probability rows must sum to 1: apply softmax to logits first")
    return probabilities.max(axis=1), probabilities.argmax(axis=1) == y_true


def reliability_bins(
    probabilities: np.ndarray, y_true: Sequence[int], n_bins: int = 10
) -> pd.DataFrame:
    """Per equal-width confidence bin: examples, mean confidence and accuracy (empty bins dropped).

    `probabilities` is (n_examples, n_classes), `y_true` the class ids; a calibrated model is
    right as often as it is confident, so accuracy matches confidence in every bin.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence, correct = _confidences(probabilities, y_true)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are (lower, upper]; a confidence of exactly 0 cannot occur for a top class.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    frame = pd.DataFrame({"bin": index, "confidence": confidence, "accuracy": correct})
    bins = frame.groupby("bin").agg(
        count=("accuracy", "size"), confidence=("confidence", "mean"), accuracy=("accuracy", "mean")
    )
    bins.insert(0, "lower", edges[bins.index])
    bins.insert(1, "upper", edges[bins.index + 1])
    return bins.reset_index(drop=True)


def expected_calibration_error(
    probabilities: np.ndarray, y_true: Sequence[int], n_bins: int = 10
) -> float:
    """ECE: |accuracy - confidence| per confidence bin, averaged with weights = bin sizes."""
    bins = reliability_bins(probabilities, y_true, n_bins)
    gaps = (bins.accuracy - bins.confidence).abs()
    return float((gaps * bins["count"]).sum() / bins["count"].sum())
