"""The pipeline on DVC: a workspace holding dvc.yaml, params.yaml and versioned feedback.

The repository's dvc.yaml declares the stages (llmlab.stages); a workspace is a DVC project of
its own (no git) under a build folder, with a copy of dvc.yaml, a params.yaml pointing at the
repository, the feedback file tracked by `dvc add`, and a local remote next to it. Runs in one
workspace never touch another's artifacts, registry or data versions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from llmlab.config import REPO_ROOT
from llmlab.stages import LOG_ENV

STAGE_NAMES = ["data", "train", "evaluate", "compress", "register", "serve-check"]
FEEDBACK = "feedback/feedback.csv"


class PipelineFailed(RuntimeError):
    """`dvc repro` stopped at a stage that failed (a gate, a timeout, an error)."""

    def __init__(self, message: str, table: pd.DataFrame) -> None:
        super().__init__(message)
        self.table = table  # what ran before the failure


def _repo(workspace: Path):
    from dvc.repo import Repo

    return Repo(str(workspace))


def init_workspace(
    workspace: Path, feedback: pd.DataFrame | None = None, profile: str = "smoke"
) -> Path:
    """A fresh DVC workspace: dvc.yaml, params.yaml, `feedback` (default: the shipped file)
    tracked by `dvc add` and pushed to a local remote beside the workspace."""
    from dvc.repo import Repo

    from llmlab import data

    workspace = Path(workspace).resolve()
    if workspace.exists():
        raise FileExistsError(f"{workspace} exists: remove it or choose another folder")
    remote = workspace.with_name(workspace.name + "-remote")
    shutil.rmtree(remote, ignore_errors=True)
    Repo.init(str(workspace), no_scm=True)
    (workspace / ".dvc" / "config").write_text(
        f"[core]\n    no_scm = True\n    analytics = false\n    remote = local\n"
        f"['remote \"local\"']\n    url = {remote}\n"
    )
    shutil.copy(REPO_ROOT / "dvc.yaml", workspace / "dvc.yaml")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params |= {
        "profile": profile,
        "python": sys.executable,
        "src": str(REPO_ROOT),
        "feedback": FEEDBACK,
        "build": "build",
        "registry": "registry",
    }
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if feedback is None:
        feedback = pd.read_csv(data.verified_path(data.FEEDBACK_FILE))
    (workspace / FEEDBACK).parent.mkdir()
    feedback.to_csv(workspace / FEEDBACK, index=False)
    commit_feedback(workspace)
    return workspace


def commit_feedback(workspace: Path) -> str:
    """`dvc add` the feedback file and push it to the remote; return its data version (md5)."""
    with _repo(workspace) as repo:
        repo.add([str(Path(workspace) / FEEDBACK)])
        repo.push()
    return data_version(workspace)


def add_feedback(workspace: Path, rows: pd.DataFrame) -> str:
    """Append a batch of labelled feedback; return the new data version."""
    path = Path(workspace) / FEEDBACK
    pd.concat([pd.read_csv(path), rows], ignore_index=True).to_csv(path, index=False)
    return commit_feedback(workspace)


def data_version(workspace: Path) -> str:
    """The md5 that feedback.csv.dvc records: the data version the workspace holds."""
    tracked = yaml.safe_load((Path(workspace) / f"{FEEDBACK}.dvc").read_text())
    return tracked["outs"][0]["md5"]


def checkout_data(workspace: Path, version: str) -> Path:
    """Restore data version `version` (an md5 from the lineage) from the cache or the remote."""
    from llmlab.stages import file_md5

    tracked_file = Path(workspace) / f"{FEEDBACK}.dvc"
    tracked = yaml.safe_load(tracked_file.read_text())
    tracked["outs"][0] = {"md5": version, "path": Path(FEEDBACK).name, "hash": "md5"}
    tracked_file.write_text(yaml.safe_dump(tracked, sort_keys=False))
    with _repo(workspace) as repo:
        repo.pull([str(tracked_file)], force=True)  # the current version was committed before
    path = Path(workspace) / FEEDBACK
    if file_md5(path) != version:
        raise RuntimeError(f"{path} has md5 {file_md5(path)} after checkout, not {version}")
    return path


def set_params(workspace: Path, **changes: Any) -> None:
    """Change parameters in params.yaml; `gates__tolerance=0.1` sets a nested one."""
    path = Path(workspace) / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = params
        for parent in parents:
            node = node[parent]
        if key not in node:
            raise KeyError(f"params.yaml has no parameter {dotted.replace('__', '.')!r}")
        node[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def params_of(workspace: Path) -> dict[str, Any]:
    """The workspace's parameters."""
    return yaml.safe_load((Path(workspace) / "params.yaml").read_text())


@contextmanager
def _stage_log(path: Path):
    previous = os.environ.get(LOG_ENV)
    os.environ[LOG_ENV] = str(path)
    try:
        yield
    finally:
        if previous is None:
            del os.environ[LOG_ENV]
        else:
            os.environ[LOG_ENV] = previous


# The lines that say how far `dvc repro` got: DVC's stage lines and each stage's one-line summary
# (the libraries' warnings and progress bars stay in the captured output).
PROGRESS_LINE = re.compile(r"(Running stage|Stage '|stage '|'[^']+' didn't change|ERROR|Data and )")


def _run_streaming(command: list[str], cwd: Path, echo: bool) -> tuple[int, str]:
    """Run `command`; with `echo`, print its progress lines as they come; (exit code, output)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the stages' lines arrive when printed
    lines = []
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout:
            lines.append(line)
            if echo and PROGRESS_LINE.match(line):
                print(line, end="", flush=True)
    return process.returncode, "".join(lines)


def repro(workspace: Path, force: bool = False, echo: bool = True) -> pd.DataFrame:
    """`dvc repro` in `workspace`: one row per stage (ran, skipped or failed) with its seconds.

    With `echo`, each stage's start and one-line result are printed as they happen.
    Raises PipelineFailed, naming the stage and its error, when a stage fails."""
    log = Path(workspace) / "stage-log.jsonl"
    seen = len(log.read_text().splitlines()) if log.exists() else 0
    started = time.perf_counter()
    command = [sys.executable, "-m", "dvc", "repro", *(["--force"] if force else [])]
    with _stage_log(log):
        returncode, output = _run_streaming(command, Path(workspace), echo)
    lines = log.read_text().splitlines()[seen:] if log.exists() else []
    ran = {entry["stage"]: entry for entry in map(json.loads, lines)}
    rows = [
        {
            "stage": name,
            "status": ran[name]["status"] if name in ran else "skipped",
            "seconds": ran[name]["seconds"] if name in ran else 0.0,
            "summary": ran[name]["summary"] if name in ran else "",
        }
        for name in STAGE_NAMES
    ]
    table = pd.DataFrame(rows).set_index("stage")
    table.attrs["wall_s"] = time.perf_counter() - started
    if returncode != 0:
        failed = [name for name in STAGE_NAMES if ran.get(name, {}).get("status") == "failed"]
        reason = ran[failed[0]]["summary"] if failed else output.strip()[-2000:]
        stage = failed[0] if failed else "?"
        raise PipelineFailed(f"pipeline stopped at stage {stage!r}: {reason}", table) from None
    return table


def dag(workspace: Path | None = None) -> str:
    """`dvc dag` as text: the stages and what feeds what."""
    return subprocess.run(
        [sys.executable, "-m", "dvc", "dag"],
        cwd=workspace or REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
