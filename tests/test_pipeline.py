"""The pipeline engine on fake stages (fast), one real lab stage, and the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from tiny_models import save_tiny_classifier

from llmlab import cli, data, pipeline, registry
from llmlab.config import REPO_ROOT, artifacts_dir
from llmlab.pipeline import (
    RunContext,
    Stage,
    StageOutput,
    evaluate_stage,
    failed_stage,
    lab_stage,
    report_table,
    run_pipeline,
    select_stages,
)


def fake_stage(name: str, calls: list[str], fail: bool = False) -> Stage:
    def run(context):
        calls.append(name)
        if fail:
            raise RuntimeError(f"{name} broke")
        return StageOutput("score", 0.5, f"{context.out_dir}/{name}")

    return Stage(name, run)


def test_all_stages_run_in_order_and_the_report_is_saved(tmp_path):
    calls: list[str] = []
    stages = [fake_stage(name, calls) for name in ("data", "train", "serve")]
    results = run_pipeline(stages, "smoke", tmp_path, log=lambda line: None)
    assert calls == ["data", "train", "serve"]
    assert [r.status for r in results] == ["ok"] * 3
    assert failed_stage(results) is None
    assert results[1].started_s >= results[0].started_s + results[0].seconds
    saved = json.loads((tmp_path / "pipeline.json").read_text())
    assert saved["profile"] == "smoke"
    assert [s["artifact"] for s in saved["stages"]] == [f"{tmp_path}/{n}" for n in calls]


def test_the_first_failure_stops_the_pipeline(tmp_path):
    calls: list[str] = []
    stages = [
        fake_stage("data", calls),
        fake_stage("train", calls, fail=True),
        fake_stage("register", calls),
    ]
    results = run_pipeline(stages, "smoke", tmp_path, log=lambda line: None)
    assert calls == ["data", "train"], "nothing runs after a failed stage"
    assert [r.status for r in results] == ["ok", "failed", "skipped"]
    assert failed_stage(results).error == "RuntimeError: train broke"
    assert "train broke" in (tmp_path / "train.traceback.txt").read_text()
    table = report_table(results)
    assert table.loc["register", "status"] == "skipped"


def test_stage_names_must_be_unique(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        run_pipeline([fake_stage("a", []), fake_stage("a", [])], "smoke", tmp_path)


def test_select_stages_keeps_pipeline_order_and_names_unknown_ones():
    stages = [fake_stage(name, []) for name in ("data", "train", "serve")]
    assert [s.name for s in select_stages(stages, ["serve", "data"])] == ["data", "serve"]
    with pytest.raises(LookupError, match=r"unknown stage\(s\) \['deploy'\]; stages: data, train"):
        select_stages(stages, ["deploy"])


def test_default_stages_cover_the_whole_path():
    names = [stage.name for stage in pipeline.default_stages()]
    assert names == ["data", "train", "evaluate", "compress", "register", "serve"]


def test_a_failing_lab_stops_with_the_cell_and_the_error(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    parameters = nbformat.v4.new_code_cell("profile = 'cpu'", metadata={"tags": ["parameters"]})
    notebook.cells = [parameters, nbformat.v4.new_code_cell("assert profile == 'gpu', 'no GPU'")]
    path = tmp_path / "99_broken.ipynb"
    nbformat.write(notebook, path)
    results = run_pipeline([lab_stage("train", str(path))], "smoke", tmp_path / "run", log=print)
    error = failed_stage(results).error
    # Cell 3 of the executed notebook: papermill inserts the injected parameters as cell 2.
    assert "lab 99_broken failed in cell 3: AssertionError: no GPU" in error
    assert (tmp_path / "run" / "99_broken.ipynb").exists(), "the executed notebook is kept"


def test_cli_exits_1_and_names_the_failed_stage(monkeypatch, tmp_path, capsys):
    calls: list[str] = []
    stages = [fake_stage("data", calls), fake_stage("train", calls, fail=True)]
    monkeypatch.setattr(pipeline, "default_stages", lambda model: stages)
    assert cli.main(["pipeline", "--profile", "smoke", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "pipeline stopped at stage 'train': RuntimeError: train broke" in captured.err
    assert "skipped" not in captured.out and "failed" in captured.out


def test_cli_runs_a_chosen_subset(monkeypatch, tmp_path):
    calls: list[str] = []
    stages = [fake_stage(name, calls) for name in ("data", "train", "serve")]
    monkeypatch.setattr(pipeline, "default_stages", lambda model: stages)
    assert cli.main(["pipeline", "--stages", "data,serve", "--out", str(tmp_path)]) == 0
    assert calls == ["data", "serve"]
    assert cli.main(["pipeline", "--stages", "deploy"]) == 2


def test_evaluate_stage_scores_the_saved_classifier_and_gates_it(tmp_path):
    save_tiny_classifier(artifacts_dir("classifier"), seed=0, labels=data.label_names())
    context = RunContext("smoke", tmp_path)
    output = evaluate_stage(min_macro_f1=0.0).run(context)
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert output.metric == "test_macro_f1" and output.value == saved["macro_f1"]
    assert 0.0 <= output.value < 0.9, "a random one-layer model cannot be good"
    low, high = saved["macro_f1_interval"]
    assert low < output.value < high and high - low > 0.02, "an interval over a few hundred rows"
    with pytest.raises(RuntimeError, match=r"quality gate: test macro-F1 0\.\d+ \(95% interval"):
        evaluate_stage(min_macro_f1=0.99).run(context)
    # A gate between the interval's lower end and the score: the point estimate alone would pass.
    with pytest.raises(RuntimeError, match="does not clear"):
        evaluate_stage(min_macro_f1=(low + output.value) / 2).run(context)


def test_evaluate_stage_names_the_lab_that_makes_the_classifier(tmp_path):
    with pytest.raises(FileNotFoundError, match="lab 05 produces it"):
        evaluate_stage().run(RunContext("smoke", tmp_path))


# The real build folder, read at import time: the autouse fixture points LLMLAB_BUILD_DIR at a
# temporary folder only while a test runs.
BUILD_WITH_EARLIER_LABS = Path(os.environ.get("LLMLAB_BUILD_DIR", REPO_ROOT / "_build"))


@pytest.mark.skipif(
    os.environ.get("LLMLAB_PIPELINE_E2E") != "1",
    reason="runs labs 05, 08 and 09 (minutes): set LLMLAB_PIPELINE_E2E=1 after the labs ran",
)
def test_llmlab_pipeline_smoke_end_to_end(isolated_build_dir, tmp_path, capsys):
    # Lab 05 needs what labs 02 and 04 left; everything the pipeline makes goes to a fresh folder.
    for needed in ("results/lab02.json", "results/lab04.json", "artifacts/lm"):
        source = BUILD_WITH_EARLIER_LABS / needed
        if not source.exists():
            pytest.fail(f"{source} is missing: run labs 01-04 (smoke) before this test")
        target = isolated_build_dir / needed
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    out = tmp_path / "run"
    assert cli.main(["pipeline", "--profile", "smoke", "--out", str(out)]) == 0, capsys.readouterr()
    report = json.loads((out / "pipeline.json").read_text())
    assert [s["status"] for s in report["stages"]] == ["ok"] * 6, report
    for notebook in ("05_finetuning", "08_compression", "09_versioning"):
        assert (out / f"{notebook}.ipynb").exists(), f"executed {notebook} not kept"
        assert json.loads((out / f"{notebook}.parameters.json").read_text())["profile"] == "smoke"
    served = json.loads((out / "service.json").read_text())
    assert served["version"] == registry.resolve("classifier@champion").ref
