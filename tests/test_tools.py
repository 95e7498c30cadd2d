"""The build scripts in tools/: the book's execution cache and the stage runner."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from llmlab.config import REPO_ROOT


def cache_script(tree: Path, profile: str = "cpu") -> str:
    """Run tools/book_cache.sh in `tree` on its cache; return what it printed."""
    env = {**os.environ, "LLMLAB_PROFILE": profile}
    script = REPO_ROOT / "tools" / "book_cache.sh"
    return subprocess.run(
        ["bash", str(script), "_build/.jupyter_cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_book_cache_is_emptied_when_package_data_pins_or_profile_change(tmp_path):
    for name in ("llmlab/core.py", "data/rows.csv", "pyproject.toml", "requirements.lock"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("v1\n")
    cache = tmp_path / "_build" / ".jupyter_cache"

    def executed_lab_is_cached() -> bool:
        return (cache / "executed.ipynb").exists()

    cache_script(tmp_path)
    cache.mkdir(parents=True)
    (cache / "executed.ipynb").write_text("{}")
    assert cache_script(tmp_path) == "" and executed_lab_is_cached(), "nothing changed"
    for change in ("llmlab/core.py", "data/rows.csv", "requirements.lock"):
        (tmp_path / change).write_text("v2\n")
        assert "re-executing" in cache_script(tmp_path) and not executed_lab_is_cached(), change
        cache.mkdir()
        (cache / "executed.ipynb").write_text("{}")
    assert "re-executing" in cache_script(tmp_path, profile="smoke")


def test_stages_stop_at_the_first_failure_and_print_timings(tmp_path):
    (tmp_path / "Makefile").write_text("good:\n\t@true\nbad:\n\t@false\nlater:\n\t@true\n")
    shutil.copy(REPO_ROOT / "tools" / "stages.sh", tmp_path)
    done = subprocess.run(
        ["bash", "stages.sh", "good", "bad", "later"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 1
    summary = done.stdout.split("=== stage timings")[1].split()
    assert summary[:2] == ["good", "ok"] and summary[4:6] == ["bad", "FAILED"]
    assert "later" not in done.stdout, "a stage after a failure must not run"
