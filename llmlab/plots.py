"""Plots that several labs draw the same way."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from matplotlib.axes import Axes
from sklearn.metrics import confusion_matrix


def plot_confusion(
    ax: Axes,
    truth: Sequence[Hashable],
    predictions: Sequence[Hashable],
    labels: Sequence[Hashable],
    names: Sequence[str] | None = None,
    model: str = "",
) -> np.ndarray:
    """Draw the row-normalized confusion matrix (% of each true class) and return it."""
    if len(truth) != len(predictions) or len(truth) == 0:
        raise ValueError(f"{len(truth)} true labels but {len(predictions)} predictions")
    names = [str(label) for label in labels] if names is None else list(names)
    if len(names) != len(labels):
        raise ValueError(f"{len(names)} names for {len(labels)} labels")
    matrix = confusion_matrix(truth, predictions, labels=list(labels), normalize="true")
    image = ax.imshow(100 * matrix, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    for (row, column), value in np.ndenumerate(100 * matrix):
        ax.text(column, row, f"{value:.0f}", ha="center", va="center")
    ax.set(xlabel="predicted label", ylabel="true label")
    ax.figure.colorbar(image, ax=ax, label="% of the true class")
    weakest = int(np.argmin(np.diag(matrix)))
    ax.set_title(
        f"{model + ' recall' if model else 'Recall'} is lowest on '{names[weakest]}' "
        f"({100 * matrix[weakest, weakest]:.0f}%)"
    )
    return matrix
