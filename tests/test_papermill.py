"""Papermill reruns: parameters injected into a lab change what it computes and records."""

from pathlib import Path

import pytest

from llmlab.cli import execute_lab, find_lab
from llmlab.results import load_results

# Two kernels importing torch and scikit-learn: about 15-20 s each on a laptop CPU.
pytestmark = pytest.mark.notebook


def run_lab_01(out_dir: Path, **parameters: object) -> dict:
    """Execute lab 01 under the smoke profile with `parameters`; return what it recorded."""
    executed = execute_lab(find_lab("01"), "smoke", parameters, out_dir)
    assert executed.exists(), f"papermill wrote no executed notebook to {executed}"
    return load_results("01")


def test_lab_01_records_what_papermill_injected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    first = run_lab_01(tmp_path / "a", seed=0, max_steps=40, learning_rate=0.5)
    second = run_lab_01(tmp_path / "b", seed=1, max_steps=80, learning_rate=0.2)

    for recorded, injected in ((first, (0, 40, 0.5)), (second, (1, 80, 0.2))):
        assert recorded["profile"] == "smoke"
        assert (recorded["seed"], recorded["max_steps"], recorded["learning_rate"]) == injected

    # The seed picks the train/test split, so the held-out wines differ ...
    assert first["first_test_index"] != second["first_test_index"], "seed did not change the split"
    # ... and steps, step size and split together change where gradient descent ends.
    assert first["final_train_risk"] != pytest.approx(second["final_train_risk"], rel=1e-6)
    # The race to a fixed target risk is measured, not the budget: raw features do not get there
    # within 40 or 80 steps (recorded as None), standardized ones do.
    assert first["steps_raw"] is None and second["steps_raw"] is None, "raw cannot be that fast"
    assert 0 < first["steps_standardized"] <= 40 and 0 < second["steps_standardized"] <= 80
    assert first["raw_risk_at_budget"] > second["raw_risk_at_budget"], "max_steps was not used"
