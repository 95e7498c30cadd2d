import matplotlib.pyplot as plt
import numpy as np
import pytest

from llmlab.plots import plot_confusion


def test_plot_confusion_normalizes_rows_and_names_the_weakest_class():
    truth = [0, 0, 0, 0, 1, 1, 2, 2]
    predicted = [0, 0, 0, 1, 1, 1, 0, 2]
    fig, ax = plt.subplots()
    matrix = plot_confusion(ax, truth, predicted, [0, 1, 2], ["neg", "neu", "pos"], model="Toy")
    np.testing.assert_allclose(matrix, [[0.75, 0.25, 0], [0, 1, 0], [0.5, 0, 0.5]])
    assert ax.get_title() == "Toy recall is lowest on 'pos' (50%)"
    assert [text.get_text() for text in ax.texts] == [
        "75",
        "25",
        "0",
        "0",
        "100",
        "0",
        "50",
        "0",
        "50",
    ]
    plt.close(fig)


def test_plot_confusion_refuses_mismatched_input():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError):
        plot_confusion(ax, [0, 1], [0], [0, 1])
    with pytest.raises(ValueError):
        plot_confusion(ax, [0, 1], [0, 1], [0, 1], ["only one name"])
    plt.close(fig)
