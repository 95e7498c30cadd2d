"""Lab timings: each run records its own wall time and source; labs/timings.json copies them."""

import json
import os
import subprocess

import pytest
from lab_helpers import write_lab

from llmlab import cli, results
from llmlab.cli import main
from llmlab.environment import read_settings
from llmlab.results import (
    TIMING_FIELDS,
    TIMINGS_PATH,
    begin_lab,
    build_timings,
    collect_timings,
    drop_unsourced,
    git_commit,
    lab_passed,
    lab_timings,
    load_results,
    save_timing,
    timing_problems,
)


@pytest.fixture(autouse=True)
def restored_environment(monkeypatch):
    """`main` and papermill runs set variables in os.environ: put each back after each test."""
    for name in ("LLMLAB_EXECUTED_BY", "LLMLAB_PROFILE", *(s.name for s in read_settings())):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # remembered, restored at teardown
        if not os.environ.get(name):
            monkeypatch.delenv(name)


def a_timing(seconds: float = 95.0, profile: str = "cpu", **extra) -> dict:
    """A timing record as lab_passed writes one."""
    return {
        "seconds": seconds,
        "profile": profile,
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "machine": {"cores": 2, "cpu": "Some CPU", "gpu": None},
        "load_start": [1.5, 1.2, 1.0],
        "load_end": [2.0, 1.4, 1.1],
        "date": "2026-12-07T03:00:00+00:00",
        **extra,
    }


def test_a_passed_lab_records_its_wall_time_with_its_source(monkeypatch):
    clock = iter([1000.0, 1012.34])
    monkeypatch.setattr(results.time, "time", lambda: next(clock))
    begin_lab("98", "smoke")
    lab_passed("98")
    timing = load_results("98")["timing"]
    assert set(TIMING_FIELDS) <= set(timing) and "reason" not in timing
    assert timing["seconds"] == 12.3 and timing["profile"] == "smoke"
    assert timing["date"] == "1970-01-01T00:16:40+00:00", "the date is the run's start"
    assert timing["machine"]["cores"] == os.cpu_count() and timing["machine"]["cpu"]
    assert len(timing["load_start"]) == len(timing["load_end"]) == 3
    assert timing["executed_by"] == "a Jupyter kernel"
    assert load_results("98")["status"] == "passed"


def test_a_lab_that_never_began_cannot_pass():
    results.record("98", status="running")
    with pytest.raises(RuntimeError, match="without begin_lab"):
        lab_passed("98")


def test_a_stated_reason_travels_with_the_timing():
    begin_lab("98", "smoke")
    lab_passed("98", timing_reason="smoke also trains X")
    assert load_results("98")["timing"]["reason"] == "smoke also trains X"


def test_the_commit_is_heads_and_says_when_the_lab_differs_from_it():
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=cli.REPO_ROOT, capture_output=True, text=True
    )
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert git_commit("01").removesuffix("-dirty") == head.stdout.strip()
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "labs/01_standardization.ipynb", "llmlab"],
        cwd=cli.REPO_ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert git_commit("01").endswith("-dirty") == bool(changed)


def test_save_timing_keeps_other_labs_and_profiles(tmp_path):
    path = tmp_path / "timings.json"
    save_timing("01", a_timing(12.34, "smoke"), "test", path)
    save_timing("01", a_timing(95.0, "cpu"), "test", path)
    save_timing("02", a_timing(3725.0, "smoke"), "test", path)
    save_timing("01", a_timing(14.0, "smoke"), "test", path)
    saved = json.loads(path.read_text())
    assert saved["01"]["smoke"]["seconds"] == 14.0 and saved["01"]["cpu"]["seconds"] == 95.0
    assert saved["01"]["cpu"]["source"] == "test"
    table = lab_timings("01", path)
    assert list(table.index) == ["smoke", "cpu", "gpu"]
    assert list(table["wall time"]) == ["14 s", "1 min 35 s", "not measured yet"]
    assert table.loc["cpu", "machine"] == "2 CPU cores (Some CPU)"
    assert table.loc["cpu", "load average"] == "1.50 -> 2.00"
    assert lab_timings("02", path).loc["smoke", "wall time"] == "1 h 2 min"


@pytest.mark.parametrize(
    "timing",
    [
        a_timing(profile="huge"),
        a_timing(0.0),
        a_timing(-1.0),
        {k: v for k, v in a_timing().items() if k != "commit"},
        {k: v for k, v in a_timing().items() if k != "load_end"},
        {"seconds": 12.0, "machine": "2 CPU cores", "date": "2026-12-01", "profile": "cpu"},
    ],
)
def test_save_timing_refuses_a_record_without_its_source(tmp_path, timing):
    path = tmp_path / "timings.json"
    with pytest.raises(ValueError):
        save_timing("01", timing, "test", path)
    assert not path.exists()


def test_an_unsourced_entry_is_not_shown_and_can_be_dropped(tmp_path):
    path = tmp_path / "timings.json"
    old = {"seconds": 17.1, "machine": "2 CPU cores", "date": "2026-12-01"}
    path.write_text(json.dumps({"01": {"cpu": old, "smoke": a_timing(9.0, "smoke")}}))
    assert lab_timings("01", path).loc["cpu", "wall time"] == "not measured yet"
    assert timing_problems(json.loads(path.read_text())) == [
        "lab 01 cpu: no source record (lacks ['profile', 'commit', 'load_start', 'load_end'])"
    ]
    assert drop_unsourced(path) == ["01 cpu"]
    assert json.loads(path.read_text()) == {"01": {"smoke": a_timing(9.0, "smoke")}}


def test_smoke_slower_than_cpu_needs_a_stated_reason():
    timings = {"13": {"smoke": a_timing(161.0, "smoke"), "cpu": a_timing(124.2)}}
    assert timing_problems(timings) == [
        "lab 13: smoke took 161.0 s, more than cpu's 124.2 s by over 10%, and no run states a "
        "reason (lab_passed's timing_reason)"
    ]
    timings["13"]["smoke"]["reason"] = "smoke's attack runs on every row"
    assert timing_problems(timings) == []


def test_smoke_within_run_noise_of_cpu_needs_no_reason():
    # lab 01 measured 4.2 s on smoke and 3.9 s on cpu: imports dominate both runs.
    assert timing_problems({"01": {"smoke": a_timing(4.2, "smoke"), "cpu": a_timing(3.9)}}) == []
    slower = {"01": {"smoke": a_timing(4.4, "smoke"), "cpu": a_timing(3.9)}}
    assert len(timing_problems(slower)) == 1


def test_the_committed_timings_come_from_run_records():
    """labs/timings.json: every entry has its source fields; smoke above cpu only with a reason."""
    problems = timing_problems(json.loads(TIMINGS_PATH.read_text()))
    assert not problems, (
        "labs/timings.json must be written by `llmlab run NN --save-timings` or `llmlab timings "
        "collect` from the labs' own records:\n" + "\n".join(problems)
    )


def test_collect_copies_the_passed_labs_records(tmp_path):
    build = tmp_path / "book"
    (build / "results").mkdir(parents=True)
    passed = {"status": "passed", "profile": "cpu", "timing": a_timing(50.0)}
    (build / "results" / "lab03.json").write_text(json.dumps(passed))
    running = {"status": "running", "profile": "cpu", "timing": a_timing(60.0)}
    (build / "results" / "lab04.json").write_text(json.dumps(running))
    path = tmp_path / "timings.json"
    assert set(build_timings(build)) == {"03"}, "a lab that did not pass has no timing to collect"
    collect_timings(build, path)
    saved = json.loads(path.read_text())
    assert list(saved) == ["03"] and saved["03"]["cpu"]["seconds"] == 50.0
    assert saved["03"]["cpu"]["source"] == f"llmlab timings collect --build-dir {build}"


def test_timings_collect_command(tmp_path, monkeypatch, capsys):
    build = tmp_path / "book"
    (build / "results").mkdir(parents=True)
    (build / "results" / "lab03.json").write_text(
        json.dumps({"status": "passed", "profile": "cpu", "timing": a_timing(50.0)})
    )
    path = tmp_path / "timings.json"
    path.write_text(json.dumps({"05": {"cpu": {"seconds": 1.0, "machine": "2 CPU cores"}}}))
    monkeypatch.setattr(results, "TIMINGS_PATH", path)
    assert main(["timings", "collect", "--build-dir", str(build)]) == 1, "05 has no source"
    assert "lab 05 cpu: no source record" in capsys.readouterr().err
    assert main(["timings", "collect", "--build-dir", str(build), "--drop-unsourced"]) == 0
    assert set(json.loads(path.read_text())) == {"03"}
    assert main(["timings", "collect", "--build-dir", str(tmp_path / "empty")]) == 2


def test_run_with_save_timings_copies_the_labs_own_record(tmp_path, monkeypatch):
    code = (
        "import time\nfrom llmlab.results import begin_lab, lab_passed\n"
        "begin_lab('98', profile)\ntime.sleep(0.2)\nlab_passed('98')"
    )
    labs = write_lab(tmp_path, "98_sleepy", code)
    timings = tmp_path / "timings.json"
    monkeypatch.setattr(cli, "LABS_DIR", labs)
    monkeypatch.setattr(results, "TIMINGS_PATH", timings)
    assert main(["run", "98", "--profile", "smoke", "--save-timings", "--out", str(tmp_path)]) == 0
    recorded = json.loads(timings.read_text())["98"]["smoke"]
    assert 0.2 <= recorded["seconds"] < 120 and recorded["profile"] == "smoke"
    assert recorded["executed_by"] == "llmlab run (papermill)"
    assert recorded["source"] == "llmlab run --save-timings"
    assert recorded == {**load_results("98")["timing"], "source": "llmlab run --save-timings"}


def test_run_with_save_timings_refuses_a_lab_that_records_no_timing(tmp_path, monkeypatch, capsys):
    labs = write_lab(tmp_path, "98_silent", "x = 1")
    timings = tmp_path / "timings.json"
    monkeypatch.setattr(cli, "LABS_DIR", labs)
    monkeypatch.setattr(results, "TIMINGS_PATH", timings)
    assert main(["run", "98", "--profile", "smoke", "--save-timings", "--out", str(tmp_path)]) == 2
    assert "llmlab run 98" in capsys.readouterr().err and not timings.exists()
