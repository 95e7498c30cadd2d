"""`llmlab doctor`: is this machine set up for the labs and the book? Each line says how to fix."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from llmlab.config import REPO_ROOT
from llmlab.environment import outside_build_dir

LOCK = REPO_ROOT / "requirements.lock"
MIN_PYTHON = (3, 11, 5)
MIN_JAVA = 17
MIN_FREE_GIB = 3.0  # a cpu build's artifacts, runs and caches, with room to spare


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, whether it passed, and how to fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    def line(self) -> str:
        """`name  ok|missing  detail`, then the fix when it failed."""
        status = "ok" if self.ok else ("missing" if self.required else "optional")
        fix = "" if self.ok or not self.fix else f" -> {self.fix}"
        return f"{self.name:<13}{status:<9}{self.detail}{fix}"


def check_python() -> Check:
    """Python 3.11, at least 3.11.5 (requirements.lock's soupsieve needs it)."""
    version = ".".join(map(str, sys.version_info[:3]))
    ok = MIN_PYTHON <= sys.version_info < (3, 12)
    fix = "a Python 3.11.5+ (pyenv, python.org, conda), then make install PYTHON=<it>, new .venv"
    return Check("python", ok, f"{version} (3.11.5 or a later 3.11)", fix)


def java_version(java: str) -> int | None:
    """The major version `java -version` reports (8 for 1.8), or None when it does not run."""
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if not found:
        return None
    major, minor = int(found[1]), int(found[2] or 0)
    return minor if major == 1 else major


def check_java() -> Check:
    """A Java runtime 17 or newer for Spark (lab 07), from JAVA_HOME or PATH as Spark finds it."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    fix = f"make java (Debian's openjdk-{MIN_JAVA}-jre-headless), or set JAVA_HOME"
    if not java or not Path(java).exists():
        return Check("java", False, "no java on PATH or under JAVA_HOME", fix)
    major = java_version(java)
    ok = major is not None and major >= MIN_JAVA
    return Check("java", ok, f"{major or 'unknown'} ({java}); lab 07 needs {MIN_JAVA}+", fix)


def check_command(name: str, purpose: str, fix: str, required: bool = True) -> Check:
    """A system program on PATH."""
    path = shutil.which(name)
    return Check(name, path is not None, f"{path or 'not on PATH'} ({purpose})", fix, required)


def check_disk(folder: Path, need_gib: float = MIN_FREE_GIB) -> Check:
    """Free space where the build writes."""
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    free_gib = shutil.disk_usage(existing).free / 2**30
    detail = f"{free_gib:.1f} GiB free at {existing} (the build needs {need_gib:.0f})"
    return Check("disk", free_gib >= need_gib, detail, "free some space or set LLMLAB_BUILD_DIR")


def differing_pins(lock: Path = LOCK) -> list[str]:
    """Packages whose installed version is not the one requirements.lock pins."""
    differ = []
    for line in lock.read_text().splitlines():
        if "==" not in line or line.startswith("#"):
            continue
        name, pinned = (part.strip() for part in line.split("=="))
        try:
            installed = importlib.metadata.version(name)
            same = Version(installed).public == Version(pinned).public  # 2.13.0+cpu is 2.13.0
        except importlib.metadata.PackageNotFoundError:
            installed, same = "missing", False
        except InvalidVersion:
            same = installed == pinned
        if not same:
            differ.append(f"{name} {installed} (lock {pinned})")
    return differ


def check_pins(lock: Path = LOCK) -> Check:
    """This environment holds exactly the pinned packages."""
    differ = differing_pins(lock)
    total = sum("==" in line for line in lock.read_text().splitlines())
    detail = f"{total} pins in {lock.name}, {len(differ)} differ" + (
        f": {', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}" if differ else ""
    )
    return Check("pins", not differ, detail, "make install (in a fresh .venv if pins were removed)")


def check_tool_state() -> Check:
    """Tool state (wandb, MLflow, Jupyter, Keras, caches) goes under the build dir, not $HOME."""
    outside = outside_build_dir()
    build = os.environ.get("LLMLAB_BUILD_DIR", "")
    detail = f"under {build}" if not outside else "outside the build dir: " + ", ".join(outside)
    return Check("tool state", not outside, detail, "unset these variables or source tools/env.sh")


def system_checks(build: Path) -> list[Check]:
    """Every check of the set-up, in the order the README's prerequisites table lists them."""
    return [
        check_python(),
        check_pins(),
        check_java(),
        check_command("redis-server", "lab 12's cache", "make redis"),
        check_command("npm", "the book's MathJax and widgets", "make npm"),
        check_command("chromium", "make site's browser tests", "make browser", required=False),
        check_disk(build),
        check_tool_state(),
    ]


def report(checks: list[Check]) -> int:
    """Print one line per check; 1 when a required one failed."""
    for check in checks:
        print(check.line())
    return int(any(check.required and not check.ok for check in checks))
