import json

import numpy as np
import pytest

from llmlab.results import load_results, record, results_path


def test_record_merges_and_converts_numpy_scalars():
    record("99", accuracy=np.float64(0.5), steps=np.int64(3))
    record("99", accuracy=0.75)
    saved = json.loads(results_path("99").read_text())
    assert saved == {"accuracy": 0.75, "steps": 3}
    assert load_results("99") == saved


def test_record_refuses_non_finite_values():
    with pytest.raises(ValueError, match="non-finite"):
        record("99", loss=float("nan"))
    assert not results_path("99").exists()


def test_load_results_of_a_lab_that_never_ran():
    with pytest.raises(FileNotFoundError, match="llmlab run 42"):
        load_results("42")
