"""Executing labs with papermill: point the process at a profile's build dir, run a notebook."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from unittest import mock

from llmlab.config import REPO_ROOT, profile_build_dir


def use_profile(profile: str) -> Path:
    """Point this process and its kernels at `profile`'s build dir (unless one was chosen)."""
    chosen = os.environ.get("LLMLAB_BUILD_DIR")
    default = REPO_ROOT / "_build"
    if chosen is None or Path(chosen).resolve() == default.resolve():
        os.environ["LLMLAB_BUILD_DIR"] = str(profile_build_dir(profile))
    if os.environ.get("MLFLOW_TRACKING_URI") == f"sqlite:///{default}/mlflow.db":
        del os.environ["MLFLOW_TRACKING_URI"]  # the registry then lives in the profile's dir
    os.environ["LLMLAB_PROFILE"] = profile
    return Path(os.environ["LLMLAB_BUILD_DIR"])


def execute_lab(
    notebook: Path,
    profile: str,
    parameters: dict[str, object],
    out_dir: Path,
    progress: bool = True,
) -> Path:
    """Execute one lab with papermill into `out_dir`; return the executed notebook's path.

    With `progress`, a bar on stderr counts the cells as they finish (a lab takes minutes)."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / notebook.name
    params = {"profile": profile, **parameters}
    (out_dir / f"{notebook.stem}.parameters.json").write_text(json.dumps(params, indent=2))
    # Off a terminal (CI logs) the bar redraws at most every 30 s instead of after every cell.
    bar = {"desc": notebook.stem, "mininterval": 0.1 if sys.stderr.isatty() else 30.0}
    # The kernel inherits this for its timing record; set only while it runs, then restored.
    with mock.patch.dict(os.environ, {"LLMLAB_EXECUTED_BY": "llmlab run (papermill)"}):
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=params,
            cwd=str(notebook.parent),
            progress_bar=bar if progress else False,
            # The kernel of the interpreter running papermill (the venv's), whatever the
            # notebook's metadata names: python3, or "Python (llmlab)" from `make install`.
            kernel_name="python3",
        )
    return output
