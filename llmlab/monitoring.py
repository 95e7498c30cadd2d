"""Watch a served model: read its prediction log and measure drift against a reference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

# Rule of thumb for PSI: < 0.1 stable, 0.1-0.25 worth a look, > 0.25 the population has moved.
DRIFT_THRESHOLD = 0.25


def population_stability_index(
    reference: Sequence[float], current: Sequence[float], smoothing: float = 0.5
) -> float:
    """PSI = sum((c - r) ln(c / r)) over the bins of two count vectors (symmetric KL divergence);
    `smoothing` pseudo-counts per bin keep empty bins finite."""
    reference = np.asarray(reference, dtype=float) + smoothing
    current = np.asarray(current, dtype=float) + smoothing
    if reference.shape != current.shape or reference.ndim != 1:
        raise ValueError(
            f"need two count vectors of one shape, got {reference.shape}, {current.shape}"
        )
    r, c = reference / reference.sum(), current / current.sum()
    return float(np.sum((c - r) * np.log(c / r)))


def label_drift(reference: Sequence[str], current: Sequence[str], labels: Sequence[str]) -> float:
    """PSI between the predicted-label distributions of two samples."""
    counts = [
        pd.Series(sample).value_counts().reindex(labels, fill_value=0)
        for sample in (reference, current)
    ]
    return population_stability_index(counts[0].to_numpy(), counts[1].to_numpy())


def confidence_drift(reference: Sequence[float], current: Sequence[float], bins: int = 10) -> float:
    """PSI between confidence (top probability) histograms, bins at the reference's deciles."""
    reference, current = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    # Quantile edges give every bin about the same reference mass, so none is empty by design.
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    counts = [np.histogram(sample, edges)[0] for sample in (reference, current)]
    return population_stability_index(counts[0], counts[1])


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    labels: Sequence[str],
    threshold: float = DRIFT_THRESHOLD,
) -> dict[str, float | bool]:
    """Label and confidence PSI of `current` vs `reference` predictions (columns label, score)
    and whether either crosses `threshold`: the signal that starts retraining."""
    for name, frame in (("reference", reference), ("current", current)):
        missing = {"label", "score"} - set(frame.columns)
        if missing or frame.empty:
            raise ValueError(f"{name} predictions need rows with columns label and score")
    label_psi = label_drift(reference.label, current.label, labels)
    confidence_psi = confidence_drift(reference.score, current.score)
    return {
        "label_psi": label_psi,
        "confidence_psi": confidence_psi,
        "mean_confidence_change": float(current.score.mean() - reference.score.mean()),
        "drifted": max(label_psi, confidence_psi) > threshold,
    }


def read_prediction_log(path: Path) -> pd.DataFrame:
    """The JSONL prediction log written by `llmlab serve --prediction-log`, one row each."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        raise FileNotFoundError(f"no predictions logged at {path}: serve with --prediction-log")
    frame = pd.read_json(path, lines=True)
    frame["time"] = pd.to_datetime(frame["time"], unit="s")
    return frame
