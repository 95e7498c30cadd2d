"""The DVC pipeline: its declaration, a stage's failure and timeout, data versions, the CLI, and
(with LLMLAB_PIPELINE_WORKSPACE set by `make pipeline-e2e`) a failing gate on a real run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from llmlab import cli, data, pipeline, registry, stages
from llmlab.config import REPO_ROOT


def small_feedback(rows: int = 60, start: int = 0) -> pd.DataFrame:
    frame = pd.read_csv(data.verified_path(data.FEEDBACK_FILE))
    return frame.iloc[start : start + rows].reset_index(drop=True)


def stage_params(tmp_path: Path, feedback: pd.DataFrame) -> dict:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    feedback.to_csv(tmp_path / "feedback.csv", index=False)
    params |= {"feedback": "feedback.csv", "build": "build", "registry": "registry"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return params


def test_dvc_yaml_declares_the_chain_with_timeouts_and_outputs_in_the_build_dir():
    declared = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert list(declared) == pipeline.STAGE_NAMES == list(stages.STAGES)
    for name, stage in declared.items():
        assert f"-m llmlab.stages {name} --timeout " in stage["cmd"], name
        outs = [next(iter(out)) if isinstance(out, dict) else out for out in stage["outs"]]
        assert all(out.startswith("${build}/") for out in outs), (name, outs)
        assert "${src}/llmlab/stages.py" in stage["deps"], name
    # Each stage after the first reads something an earlier stage wrote.
    produced: set[str] = set()
    for name, stage in declared.items():
        if name != "data":
            assert any(dep in produced for dep in stage["deps"]), name
        produced |= {next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]}
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert {"profile", "seed", "gates"} <= set(params) and params["profile"] in stages.SIZES


def test_the_data_stage_checks_labels_and_records_the_data_version(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(stages.LOG_ENV, str(tmp_path / "log.jsonl"))
    stage_params(tmp_path, small_feedback())
    assert stages.main(["data", "--timeout", "60"]) == 0
    manifest = json.loads((tmp_path / "build/data/manifest.json").read_text())
    assert manifest["data_version"] == stages.file_md5(tmp_path / "feedback.csv")
    assert sum(split["rows"] for split in manifest["splits"].values()) <= 60
    bad = small_feedback().assign(label="furious")
    stage_params(tmp_path, bad)
    assert stages.main(["data", "--timeout", "60"]) == 1
    last = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert last["status"] == "failed" and "labels ['furious']" in last["summary"], last


def test_a_stage_past_its_timeout_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(stages.LOG_ENV, str(tmp_path / "log.jsonl"))
    stage_params(tmp_path, small_feedback())
    monkeypatch.setitem(stages.STAGES, "train", lambda params: time.sleep(5) or "done")
    started = time.perf_counter()
    assert stages.main(["train", "--timeout", "1"]) == 1
    assert time.perf_counter() - started < 4, "the stage was not stopped at its timeout"
    last = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert "ran past its timeout of 1 s" in last["summary"], last


def test_data_versions_are_tracked_and_an_old_one_comes_back(tmp_path):
    workspace = pipeline.init_workspace(tmp_path / "ws", feedback=small_feedback(40))
    first = pipeline.data_version(workspace)
    assert first == stages.file_md5(workspace / pipeline.FEEDBACK)
    second = pipeline.add_feedback(workspace, small_feedback(20, start=40))
    assert second != first and len(pd.read_csv(workspace / pipeline.FEEDBACK)) == 60
    # The cache holds both versions; empty it, so the old one must come from the remote.
    for cached in (workspace / ".dvc" / "cache").rglob("*"):
        if cached.is_file():
            cached.chmod(0o644)
            cached.unlink()
    restored = pipeline.checkout_data(workspace, first)
    assert stages.file_md5(restored) == first and len(pd.read_csv(restored)) == 40
    with pytest.raises(FileExistsError, match="exists"):
        pipeline.init_workspace(workspace)


def test_set_params_refuses_an_unknown_parameter(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "params.yaml").write_text(yaml.safe_dump({"gates": {"tolerance": 0.05}}))
    pipeline.set_params(workspace, gates__tolerance=0.1)
    assert pipeline.params_of(workspace)["gates"]["tolerance"] == 0.1
    with pytest.raises(KeyError, match="gates.tolerence"):
        pipeline.set_params(workspace, gates__tolerence=0.1)


def test_cli_exits_1_and_names_the_failed_stage(monkeypatch, tmp_path, capsys):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    table = pd.DataFrame({"status": ["ok", "failed"]}, index=["data", "train"])

    def failing(workspace, force=False):
        raise pipeline.PipelineFailed("pipeline stopped at stage 'train': boom", table)

    monkeypatch.setattr(pipeline, "repro", failing)
    assert cli.main(["pipeline", "--workspace", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "pipeline stopped at stage 'train': boom" in captured.err
    assert "failed" in captured.out


# A workspace where `make pipeline-e2e` ran the whole pipeline (smoke profile).
E2E_WORKSPACE = os.environ.get("LLMLAB_PIPELINE_WORKSPACE")


@pytest.mark.skipif(not E2E_WORKSPACE, reason="set by `make pipeline-e2e` after `dvc repro`")
def test_a_failing_gate_stops_the_pipeline_and_the_champion_keeps_serving():
    workspace = Path(E2E_WORKSPACE)
    uri = f"sqlite:///{workspace / 'registry'}/mlflow.db"
    champion = registry.resolve("classifier@champion", uri).version
    registered = len(registry.versions("classifier", uri))
    assert pipeline.repro(workspace).status.eq("skipped").all(), "a second run must be cached"
    gate = pipeline.params_of(workspace)["gates"]["min_macro_f1"]
    pipeline.set_params(workspace, gates__min_macro_f1=0.99)
    try:
        with pytest.raises(pipeline.PipelineFailed, match="stage 'evaluate': .*quality gate"):
            pipeline.repro(workspace)
    finally:
        pipeline.set_params(workspace, gates__min_macro_f1=gate)
    assert registry.resolve("classifier@champion", uri).version == champion
    assert len(registry.versions("classifier", uri)) == registered, "nothing was registered"
    served = json.loads((workspace / "build" / "service.json").read_text())["served"]
    assert served == f"classifier/{champion}"
