"""Evaluation metrics shared by every lab that classifies."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

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


def _scores_on_resamples(
    y_true: np.ndarray, y_pred: np.ndarray, rows: np.ndarray, metric: str, n_classes: int
) -> np.ndarray:
    """`metric` of `y_pred` on each resample of rows (one resample a row of `rows`)."""
    truth, predicted = y_true[rows], y_pred[rows]
    if metric == "accuracy":
        return (truth == predicted).mean(axis=1)
    if metric != "macro_f1":
        raise ValueError(f"unknown metric {metric!r}: use accuracy or macro_f1")
    f1 = []
    for k in range(n_classes):
        tp = ((truth == k) & (predicted == k)).sum(axis=1)
        wrong = ((truth == k) != (predicted == k)).sum(axis=1)  # false positives + negatives
        present = ((truth == k) | (predicted == k)).any(axis=1)
        f1.append(np.where(present, 2 * tp / np.maximum(2 * tp + wrong, 1), np.nan))
    return np.nanmean(np.stack(f1), axis=0)


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap samples (percentile method)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2
    low, high = np.quantile(samples, [tail, 1 - tail])
    return float(low), float(high)


def _encode(*label_lists: Sequence) -> tuple[list[np.ndarray], int]:
    """Map labels of any type to integer ids shared by every list."""
    classes = sorted({label for labels in label_lists for label in labels}, key=str)
    ids = {label: index for index, label in enumerate(classes)}
    return [np.array([ids[label] for label in labels]) for labels in label_lists], len(classes)


def paired_bootstrap(
    y_true: Sequence,
    pred_a: Sequence,
    pred_b: Sequence,
    metric: str = "accuracy",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """metric(b) - metric(a) on the same rows, with a paired bootstrap confidence interval.

    Both models are scored on the same resampled rows, so the interval reflects only the rows
    on which they disagree: far narrower than comparing two independent accuracies.
    """
    if not len(y_true) == len(pred_a) == len(pred_b) or len(y_true) == 0:
        raise ValueError(
            f"need predictions of both models for the same rows: {len(y_true)} labels, "
            f"{len(pred_a)} and {len(pred_b)} predictions"
        )
    (truth, a, b), n_classes = _encode(y_true, pred_a, pred_b)
    rows = np.random.default_rng(seed).integers(0, len(truth), (n_resamples, len(truth)))
    differences = _scores_on_resamples(truth, b, rows, metric, n_classes) - _scores_on_resamples(
        truth, a, rows, metric, n_classes
    )
    every_row = np.arange(len(truth))[None, :]
    point = _scores_on_resamples(truth, b, every_row, metric, n_classes) - _scores_on_resamples(
        truth, a, every_row, metric, n_classes
    )
    low, high = _interval(differences, confidence)
    return {
        "difference": float(point[0]),
        "low": low,
        "high": high,
        "confidence": confidence,
        "rows": len(truth),
        "disagreements": int((a != b).sum()),
    }


def bootstrap_interval(
    y_true: Sequence,
    y_pred: Sequence,
    metric: str = "accuracy",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """`metric` of one model with a bootstrap confidence interval over the evaluation rows."""
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    (truth, predicted), n_classes = _encode(y_true, y_pred)
    rows = np.random.default_rng(seed).integers(0, len(truth), (n_resamples, len(truth)))
    scores = _scores_on_resamples(truth, predicted, rows, metric, n_classes)
    point = _scores_on_resamples(
        truth, predicted, np.arange(len(truth))[None, :], metric, n_classes
    )
    low, high = _interval(scores, confidence)
    return {"value": float(point[0]), "low": low, "high": high, "rows": len(truth)}


def _rows(values: Any, rows: np.ndarray) -> Any:
    """The given rows of a list, array, Series or tensor (a dict: of each of its values)."""
    if isinstance(values, Mapping):
        return {name: _rows(value, rows) for name, value in values.items()}
    if isinstance(values, list | tuple):
        return [values[row] for row in rows]
    if hasattr(values, "iloc"):  # pandas: by position, never by index label
        return values.iloc[rows]
    return values[rows]


def _as_numpy(output: Any) -> np.ndarray:
    """A model's output (array, list or tensor on any device) as a numpy array."""
    if hasattr(output, "detach"):
        output = output.detach().float().cpu() if output.is_floating_point() else output.cpu()
    return np.asarray(output)


def predict_in_chunks(
    predict: Callable[[Any], Any],
    inputs: Sequence | Mapping[str, Sequence],
    chunk_size: int = 64,
    lengths: Sequence[int] | None = None,
) -> np.ndarray:
    """`predict(inputs)` computed `chunk_size` rows at a time, returned in the order of `inputs`.

    `inputs` is a list, array or tensor of rows, or a dict of them (e.g. input_ids and
    attention_mask). With `lengths`, chunks take the rows from shortest to longest, so each
    chunk pads little; the output is put back in input order.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    columns = list(inputs.values()) if isinstance(inputs, Mapping) else [inputs]
    n_rows = len(columns[0])
    if any(len(column) != n_rows for column in columns) or n_rows == 0:
        raise ValueError(
            f"need rows to predict, as many in every input: {[len(c) for c in columns]}"
        )
    if lengths is not None and len(lengths) != n_rows:
        raise ValueError(f"{len(lengths)} lengths for {n_rows} rows")
    order = np.arange(n_rows) if lengths is None else np.argsort(lengths, kind="stable")
    outputs = [
        _as_numpy(predict(_rows(inputs, order[start : start + chunk_size])))
        for start in range(0, n_rows, chunk_size)
    ]
    ordered = np.concatenate(outputs)
    if len(ordered) != n_rows:
        raise ValueError(f"predict returned {len(ordered)} rows for {n_rows} inputs")
    result = np.empty_like(ordered)
    result[order] = ordered
    return result
