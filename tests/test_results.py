import json

import numpy as np
import pytest

from llmlab import results
from llmlab.results import (
    ProfileMismatchError,
    UpstreamLabError,
    begin_lab,
    lab_passed,
    load_results,
    record,
    require_lab,
    results_path,
)


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


def test_a_later_lab_uses_only_a_passed_run_of_the_same_profile():
    with pytest.raises(UpstreamLabError, match="lab 98 has not run"):
        require_lab("98", "cpu")
    record("98", accuracy=0.5)  # an old run's values, before the lab tracked its status
    begin_lab("98", "cpu")
    started = load_results("98")
    assert {k: started[k] for k in ("profile", "status")} == {"profile": "cpu", "status": "running"}
    assert "accuracy" not in started, "old values survive"
    record("98", accuracy=0.7)
    with pytest.raises(UpstreamLabError, match="did not pass.*llmlab run 98 --profile cpu"):
        require_lab("98", "cpu")
    lab_passed("98")
    assert require_lab("98", "cpu")["accuracy"] == 0.7
    with pytest.raises(UpstreamLabError, match="profile 'cpu', not 'smoke'"):
        require_lab("98", "smoke")
    begin_lab("98", "cpu")  # a rerun that then fails leaves the lab unusable
    with pytest.raises(UpstreamLabError, match="status 'running'"):
        require_lab("98", "cpu")


def test_a_build_dir_holds_one_profile(isolated_build_dir):
    begin_lab("97", "cpu")
    with pytest.raises(ProfileMismatchError, match="holds the 'cpu' profile's outputs.*smoke"):
        begin_lab("97", "smoke")
    assert load_results("97")["profile"] == "cpu", "the refused run must not touch cpu's results"
    begin_lab("96", "cpu")  # the same profile may go on


def test_a_later_lab_refuses_results_of_other_data(monkeypatch):
    begin_lab("95", "cpu")
    lab_passed("95")
    assert require_lab("95", "cpu")["status"] == "passed"
    monkeypatch.setattr(results, "data_fingerprint", lambda: "other data")
    with pytest.raises(UpstreamLabError, match="other data.*llmlab run 95 --profile cpu"):
        require_lab("95", "cpu")
