"""A model registry over MLflow: versions with lineage, aliases promoted through a metric gate."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from llmlab.config import REPO_ROOT, build_dir

EXPERIMENT = "model-registry"
# Files that are (or may be) Python pickles: loading one can run arbitrary code.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"}
LINEAGE_TAG = "llmlab.lineage"
HISTORY_TAG = "llmlab.alias_history.{alias}"
EVALUATION_FILE = "evaluation.json"
# Metrics the gate can recompute from per-row predictions, and so compare on the same rows.
PAIRED_METRICS = ("accuracy", "macro_f1")


class PromotionRefused(ValueError):
    """The candidate is worse than the model that holds the alias now."""


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of a registered model, with where its files are and where they came from."""

    name: str
    version: int
    path: Path
    metrics: dict[str, float]
    lineage: dict[str, Any]
    aliases: list[str] = field(default_factory=list)
    run_id: str = ""
    created_ms: int = 0

    @property
    def ref(self) -> str:
        """The `name/version` reference that resolve() accepts."""
        return f"{self.name}/{self.version}"


def tracking_uri(uri: str | None = None) -> str:
    """The registry database: `uri`, else $MLFLOW_TRACKING_URI, else sqlite in the build dir."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{build_dir() / 'mlflow.db'}"


def _client(uri: str | None):
    """An MlflowClient whose tracking and registry both live in `uri`."""
    from mlflow.tracking import MlflowClient

    # MLflow announces its one-time table creation at INFO on every fresh database.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    uri = tracking_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifact_location(uri: str) -> str | None:
    """Keep a sqlite registry's files next to its database (MLflow's default is ./mlruns)."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    return str(database.resolve().parent / f"{database.stem}-artifacts")


def code_version(repo: Path = REPO_ROOT) -> str:
    """The git commit of `repo` (suffixed '-dirty' with uncommitted changes), else 'unknown'."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if status.strip() else commit


def make_lineage(
    data_hash: str,
    config: dict[str, Any],
    parent: str | None = None,
    wandb_run_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Where a model came from: data hash, code version, config, parent version, tracking run."""
    return {
        "data_hash": data_hash,
        "code_version": code_version(),
        "config": config,
        "parent": parent,
        "wandb_run_id": wandb_run_id,
        **extra,
    }


def make_evaluation(texts: list[str], labels: list[Any], predictions: list[Any]) -> dict[str, Any]:
    """Per-row predictions on an evaluation set, with a hash naming exactly which rows."""
    rows = json.dumps([list(texts), [str(label) for label in labels]], ensure_ascii=False)
    evaluation = {
        "rows_hash": hashlib.sha256(rows.encode()).hexdigest(),
        "labels": [str(label) for label in labels],
        "predictions": [str(label) for label in predictions],
    }
    _check_evaluation(evaluation)
    return evaluation


def _check_evaluation(evaluation: dict[str, Any]) -> None:
    """Refuse an evaluation record that a paired comparison could not use."""
    missing = {"rows_hash", "labels", "predictions"} - set(evaluation)
    if missing:
        raise ValueError(f"evaluation needs {sorted(missing)}: build it with make_evaluation()")
    if len(evaluation["labels"]) != len(evaluation["predictions"]) or not evaluation["labels"]:
        raise ValueError(
            f"evaluation has {len(evaluation['labels'])} labels and "
            f"{len(evaluation['predictions'])} predictions: need one prediction per row"
        )


def evaluation_of(entry: RegisteredVersion, uri: str | None = None) -> dict[str, Any] | None:
    """The per-row evaluation recorded with a version, or None if it was registered without."""
    from mlflow.exceptions import MlflowException

    run = _client(uri).get_run(entry.run_id)
    try:
        path = _local_path(f"{run.info.artifact_uri}/{EVALUATION_FILE}", uri)
    except (MlflowException, OSError):
        return None
    return json.loads(path.read_text()) if path.is_file() else None


def register(
    model_dir: Path | str,
    name: str,
    metrics: dict[str, float],
    lineage: dict[str, Any],
    uri: str | None = None,
    evaluation: dict[str, Any] | None = None,
) -> int:
    """Copy `model_dir` into the registry as a new version of `name`; return the version number.

    `evaluation` (from make_evaluation) keeps the per-row predictions, so that the promotion
    gate can compare two versions on the same rows.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir() or not any(model_dir.iterdir()):
        raise FileNotFoundError(f"{model_dir} is not a directory with model files in it")
    pickles = sorted(p.name for p in model_dir.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{model_dir} holds pickle files {pickles}: save weights as safetensors")
    missing = {"data_hash", "code_version"} - set(lineage)
    if missing:
        raise ValueError(f"lineage needs {sorted(missing)}: build it with make_lineage()")
    client = _client(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(EXPERIMENT, _artifact_location(tracking_uri(uri)))
    )
    run = client.create_run(experiment_id, run_name=name, tags={"model": name})
    run_id = run.info.run_id
    client.log_artifacts(run_id, str(model_dir), "model")
    if evaluation is not None:
        _check_evaluation(evaluation)
        client.log_text(run_id, json.dumps(evaluation), EVALUATION_FILE)
    for metric, value in metrics.items():
        client.log_metric(run_id, metric, float(value))
    client.set_terminated(run_id)
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    # One JSON tag round-trips the lineage exactly; the flat tags make it readable in the MLflow UI.
    tags = {LINEAGE_TAG: json.dumps(lineage, sort_keys=True, default=str)}
    tags |= {k: v if isinstance(v, str) else json.dumps(v) for k, v in lineage.items()}
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags
    )
    return int(version.version)


def _local_path(source: str, uri: str | None) -> Path:
    """A local directory with the version's files: the store itself if local, else a download."""
    parsed = urlparse(source)
    if parsed.scheme == "":
        return Path(source)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    from mlflow.artifacts import download_artifacts

    return Path(download_artifacts(artifact_uri=source, tracking_uri=tracking_uri(uri)))


def _describe(client, version, uri: str | None) -> RegisteredVersion:
    """Turn an MLflow ModelVersion into a RegisteredVersion with a local path."""
    path = _local_path(version.source, uri)
    return RegisteredVersion(
        name=version.name,
        version=int(version.version),
        path=path,
        metrics=dict(client.get_run(version.run_id).data.metrics),
        lineage=json.loads(version.tags.get(LINEAGE_TAG, "{}")),
        aliases=list(version.aliases),
        run_id=version.run_id,
        created_ms=int(version.creation_timestamp),
    )


def resolve(ref: str, uri: str | None = None) -> RegisteredVersion:
    """Look up `name@alias` or `name/version` (a `models:/` prefix is allowed)."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    ref = ref.removeprefix("models:/")
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in ref:
            name, number = ref.rsplit("/", 1)
            version = client.get_model_version(name, number)
        else:
            raise ValueError(f"reference {ref!r} must look like name@alias or name/version")
    except MlflowException as error:
        raise LookupError(f"no registered model matches {ref!r}: {error.message}") from error
    return _describe(client, version, uri)


def versions(name: str, uri: str | None = None) -> list[RegisteredVersion]:
    """Every version of `name`, oldest first."""
    client = _client(uri)
    found = client.search_model_versions(filter_string=f"name = '{name}'")
    # Search results leave aliases empty; the registered model knows them.
    holders = client.get_registered_model(name).aliases if found else {}
    described = []
    for version in found:
        entry = _describe(client, version, uri)
        aliases = sorted(a for a, number in holders.items() if int(number) == entry.version)
        described.append(replace(entry, aliases=aliases))
    return sorted(described, key=lambda v: v.version)


def alias_history(name: str, alias: str, uri: str | None = None) -> list[int]:
    """Versions that have held `alias`, oldest first; the last one holds it now."""
    tags = _client(uri).get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG.format(alias=alias), "[]"))


def _set_alias(client, name: str, alias: str, version: int, history: list[int]) -> None:
    """Point `alias` at `version` and remember the history that rollback() walks back."""
    client.set_registered_model_alias(name, alias, str(version))
    client.set_registered_model_tag(name, HISTORY_TAG.format(alias=alias), json.dumps(history))


def _holder(name: str, alias: str, uri: str | None) -> RegisteredVersion | None:
    """The version that holds `alias` now, if any."""
    try:
        return resolve(f"{name}@{alias}", uri)
    except LookupError:
        return None


def promote(
    name: str,
    version: int,
    alias: str = "champion",
    metric: str | None = "accuracy",
    higher_is_better: bool = True,
    tolerance: float = 0.0,
    uri: str | None = None,
    confidence: float = 0.95,
) -> int:
    """Give `alias` to `version`; refuse if it may trail the holder on `metric` by > `tolerance`.

    Versions registered with an evaluation on the same rows are compared row by row: the
    candidate passes if the `confidence` interval of its paired difference stays above
    -`tolerance` (it is not worse by more than that, with that confidence). Otherwise the logged
    metrics are compared as numbers. `metric=None` moves the alias without a gate.
    """
    candidate = resolve(f"{name}/{version}", uri)
    holder = _holder(name, alias, uri)
    if metric is not None and holder is not None and holder.version != candidate.version:
        _gate(candidate, holder, alias, metric, higher_is_better, tolerance, confidence, uri)
    if holder is not None and holder.version == candidate.version:
        return candidate.version
    history = alias_history(name, alias, uri) or ([holder.version] if holder else [])
    _set_alias(_client(uri), name, alias, candidate.version, [*history, candidate.version])
    return candidate.version


def _gate(
    candidate: RegisteredVersion,
    holder: RegisteredVersion,
    alias: str,
    metric: str,
    higher_is_better: bool,
    tolerance: float,
    confidence: float,
    uri: str | None,
) -> None:
    """Raise PromotionRefused unless `candidate` is at most `tolerance` worse than `holder`."""
    from llmlab.metrics import classification_metrics, paired_bootstrap  # sklearn: only here

    versus = f"{candidate.name}@{alias} ({holder.ref})"
    new_rows, old_rows = evaluation_of(candidate, uri), evaluation_of(holder, uri)
    if new_rows and old_rows and metric in PAIRED_METRICS:
        if new_rows["rows_hash"] != old_rows["rows_hash"]:
            raise PromotionRefused(
                f"{candidate.ref} and {versus} were evaluated on different rows "
                f"({new_rows['rows_hash'][:12]} vs {old_rows['rows_hash'][:12]}): evaluate both "
                "on the same set before comparing them"
            )
        labels = new_rows["labels"]
        compared = paired_bootstrap(
            labels, old_rows["predictions"], new_rows["predictions"], metric, confidence
        )
        new = classification_metrics(labels, new_rows["predictions"])[metric]
        if compared["low"] < -tolerance:
            raise PromotionRefused(
                f"{candidate.ref} has {metric}={new:.4f}, {compared['difference']:+.4f} vs "
                f"{versus} on the same {compared['rows']} rows ({confidence:.0%} interval "
                f"{compared['low']:+.4f} to {compared['high']:+.4f}): it may be worse by more "
                f"than {tolerance}: not promoted"
            )
        return
    for entry in (candidate, holder):
        if metric not in entry.metrics:
            raise KeyError(f"{entry.ref} has no metric {metric!r}: {sorted(entry.metrics)}")
    new, old = candidate.metrics[metric], holder.metrics[metric]
    drop = old - new if higher_is_better else new - old
    if drop > tolerance:
        raise PromotionRefused(
            f"{candidate.ref} has {metric}={new:.4f}, worse than {versus} with {old:.4f} by "
            f"more than {tolerance}: not promoted"
        )


def rollback(name: str, alias: str = "champion", uri: str | None = None) -> int:
    """Give `alias` back to the version that held it before; return that version."""
    history = alias_history(name, alias, uri)
    if len(history) < 2:
        raise LookupError(f"{name}@{alias} has no earlier holder to roll back to: {history}")
    _set_alias(_client(uri), name, alias, history[-2], history[:-1])
    return history[-2]
