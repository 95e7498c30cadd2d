"""From data to a served model in one command: run stages in order, stop at the first failure."""

from __future__ import annotations

import datetime as dt
import json
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from llmlab.config import REPO_ROOT, artifacts_dir, resolve_profile

# Lowest test macro-F1 the evaluate stage lets through (three classes: chance is about 0.33):
# the lower end of the score's 95% bootstrap interval must reach it, so that sampling noise on a
# few hundred test sentences cannot carry a model over the gate.
EVALUATION_GATE = {"smoke": 0.5, "cpu": 0.6, "gpu": 0.65}


@dataclass
class RunContext:
    """What every stage gets: the profile, the run folder and the lab parameters."""

    profile: str
    out_dir: Path
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageOutput:
    """What a stage reports: one key metric and the artifact it produced."""

    metric: str = ""
    value: float | None = None
    artifact: str = ""


@dataclass(frozen=True)
class Stage:
    """A named step of the pipeline: `run` does the work or raises."""

    name: str
    run: Callable[[RunContext], StageOutput]
    description: str = ""


@dataclass
class StageResult:
    """One row of the run report."""

    stage: str
    status: str  # ok | failed | skipped
    started_s: float = 0.0  # since the pipeline started
    seconds: float = 0.0
    metric: str = ""
    value: float | None = None
    artifact: str = ""
    error: str = ""


def run_pipeline(
    stages: Sequence[Stage],
    profile: str | None = None,
    out_dir: Path | None = None,
    parameters: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> list[StageResult]:
    """Run `stages` in order; after a failure the rest are skipped. Writes pipeline.json."""
    names = [stage.name for stage in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    context = RunContext(
        resolve_profile(profile), Path(out_dir or REPO_ROOT / "runs" / stamp), parameters or {}
    )
    context.out_dir.mkdir(parents=True, exist_ok=True)
    results: list[StageResult] = []
    start = time.perf_counter()
    for stage in stages:
        if results and results[-1].status != "ok":
            results.append(StageResult(stage.name, "skipped"))
            continue
        log(f"[{stage.name}] running (profile={context.profile})")
        began = time.perf_counter()
        try:
            output, status, error = stage.run(context), "ok", ""
        except Exception as exc:  # report any failure as the stage's, with its cause
            output, status, error = StageOutput(), "failed", f"{type(exc).__name__}: {exc}"
            (context.out_dir / f"{stage.name}.traceback.txt").write_text(traceback.format_exc())
        seconds = time.perf_counter() - began
        result = StageResult(
            stage.name, status, began - start, seconds, error=error, **asdict(output)
        )
        results.append(result)
        shown = f"{output.metric}={output.value:.4g}" if output.value is not None else ""
        log(f"[{stage.name}] {status} in {seconds:.1f} s {shown} {error}")
    report = {"profile": context.profile, "stages": [asdict(r) for r in results]}
    (context.out_dir / "pipeline.json").write_text(json.dumps(report, indent=2))
    return results


def select_stages(stages: Sequence[Stage], names: Sequence[str]) -> list[Stage]:
    """The stages called `names`, in pipeline order."""
    unknown = set(names) - {stage.name for stage in stages}
    if unknown:
        known = ", ".join(stage.name for stage in stages)
        raise LookupError(f"unknown stage(s) {sorted(unknown)}; stages: {known}")
    return [stage for stage in stages if stage.name in names]


def report_table(results: Sequence[StageResult]) -> pd.DataFrame:
    """The run report as a table: stage, status, duration, key metric, artifact."""
    return pd.DataFrame([asdict(result) for result in results]).set_index("stage")


def failed_stage(results: Sequence[StageResult]) -> StageResult | None:
    """The stage that stopped the pipeline, if any."""
    return next((result for result in results if result.status == "failed"), None)


def lab_stage(name: str, lab: str, metric: str = "", artifact: str = "") -> Stage:
    """Execute lab `lab` with papermill into the run folder; report the `metric` it recorded."""

    def run(context: RunContext) -> StageOutput:
        from papermill.exceptions import PapermillExecutionError

        from llmlab.cli import execute_lab, find_lab
        from llmlab.results import require_lab

        notebook = find_lab(lab)
        try:
            execute_lab(notebook, context.profile, context.parameters, context.out_dir)
        except PapermillExecutionError as error:
            raise RuntimeError(
                f"lab {notebook.stem} failed in cell {error.exec_count}: {error.ename}: "
                f"{error.evalue} (executed notebook: {context.out_dir / notebook.name})"
            ) from None
        value = require_lab(lab, context.profile)[metric] if metric else None
        return StageOutput(metric, value, str(artifacts_dir(artifact)) if artifact else "")

    return Stage(name, run, f"execute lab {lab} with papermill")


def check_data(context: RunContext) -> StageOutput:
    """Shipped data passes its checks; the split manifest is saved with the run."""
    from llmlab import data

    problems = {name: status for name, status in data.check_all().items() if status != "ok"}
    if problems:
        raise RuntimeError(f"data checks failed: {problems}")
    manifest = context.out_dir / "data_manifest.json"
    manifest.write_text(json.dumps(data.data_manifest(), indent=2))
    return StageOutput("train_rows", float(len(data.load_splits()["train"])), str(manifest))


def evaluate_stage(min_macro_f1: float | None = None) -> Stage:
    """Macro-F1 of the saved classifier on the test split, measured on the artifact itself;
    the stage fails below `min_macro_f1` (default: the profile's EVALUATION_GATE)."""

    def run(context: RunContext) -> StageOutput:
        from llmlab import data
        from llmlab.config import require_artifact
        from llmlab.metrics import bootstrap_interval, classification_metrics
        from llmlab.serve import load_classifier

        path = require_artifact(artifacts_dir("classifier") / "config.json", "05").parent
        classifier = load_classifier(path)
        test = data.load_splits()["test"]
        texts = test.text.tolist()
        predicted = [
            prediction["label"]
            for start in range(0, len(texts), 64)
            for prediction in classifier.predict(texts[start : start + 64])
        ]
        scores = classification_metrics(test.label.tolist(), predicted)
        interval = bootstrap_interval(test.label.tolist(), predicted, "macro_f1")
        scores["macro_f1_interval"] = [interval["low"], interval["high"]]
        (context.out_dir / "evaluation.json").write_text(json.dumps(scores, indent=2))
        gate = EVALUATION_GATE[context.profile] if min_macro_f1 is None else min_macro_f1
        if interval["low"] < gate:
            raise RuntimeError(
                f"quality gate: test macro-F1 {scores['macro_f1']:.3f} (95% interval "
                f"{interval['low']:.3f}-{interval['high']:.3f} on {len(texts)} sentences) "
                f"does not clear {gate:.3f}"
            )
        return StageOutput("test_macro_f1", scores["macro_f1"], str(path))

    return Stage("evaluate", run, "test macro-F1 of the saved classifier, with a quality gate")


def serve_stage(model: str) -> Stage:
    """Serve `model` on 127.0.0.1; check that it answers, batches and refuses bad input."""

    def run(context: RunContext) -> StageOutput:
        import httpx

        from llmlab import data
        from llmlab.serve import BackgroundServer

        texts = data.load_splits()["test"].text.head(16).tolist()
        with BackgroundServer(model) as server, httpx.Client(base_url=server.url) as client:
            if client.post("/predict", json={"text": ""}).status_code != 422:
                raise RuntimeError("the service accepted an empty text")
            started = time.perf_counter()
            answers = [client.post("/predict", json={"text": text}) for text in texts]
            latency_ms = 1000 * (time.perf_counter() - started) / len(texts)
            batch = client.post("/predict", json={"texts": texts})
            metrics = client.get("/metrics").text
        failed = [a.status_code for a in [*answers, batch] if a.status_code != 200]
        if failed:
            raise RuntimeError(f"{len(failed)} smoke requests failed with {sorted(set(failed))}")
        if "llmlab_requests_total" not in metrics:
            raise RuntimeError("/metrics does not count requests")
        version = answers[0].json()["predictions"][0]["model_version"]
        (context.out_dir / "service.json").write_text(
            json.dumps({"model": model, "version": version})
        )
        return StageOutput("mean_latency_ms", latency_ms, f"{model} (version {version})")

    return Stage("serve", run, f"start `llmlab serve --model {model}` and smoke-test it")


def default_stages(model: str = "classifier@champion") -> list[Stage]:
    """data -> train -> evaluate -> compress -> register (promotion gate) -> serve."""
    return [
        Stage("data", check_data, "checksums of the shipped data; split manifest"),
        lab_stage("train", "05", metric="test_macro_f1", artifact="classifier"),
        evaluate_stage(),
        lab_stage("compress", "08", metric="onnx_int8_accuracy", artifact="compressed"),
        lab_stage("register", "09", metric="champion"),
        serve_stage(model),
    ]
