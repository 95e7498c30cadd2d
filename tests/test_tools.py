"""The build scripts: the book's execution cache, the stage runner, the system packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


JAVA_17 = "#!/bin/bash\necho 'openjdk version \"17.0.15\" 2025-04-15' >&2\n"


def write_program(path: Path, text: str) -> None:
    """An executable script."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def fake_system(
    tmp_path: Path, uid: int, sudo_works: bool, installed: tuple[str, ...] = ()
) -> Path:
    """A PATH of stubs: id, sudo, apt-get (which installs stub programs) and `installed`."""
    bin_dir, debian, log = tmp_path / "bin", tmp_path / "debian", tmp_path / "calls.log"
    packages = {"redis-server": "redis-server", "npm": "npm", "chromium": "chromium"}
    for package, program in packages.items():
        write_program(debian / package / program, "#!/bin/bash\n")
    write_program(debian / "openjdk-17-jre-headless" / "java", JAVA_17)
    sudo = '[ "$1" = -n ] && shift && exec "$@"\n' if sudo_works else "exit 1\n"
    apt_get = (
        f'for p; do [ "$1" = install ] && [ -d {debian}/$p ] && cp -p {debian}/$p/* {bin_dir}; done'
    )
    stubs = {
        "id": f"echo {uid}",
        "sudo": f"echo sudo $* >>{log}\n{sudo}",
        "apt-get": f"echo apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND >>{log}\n{apt_get}\ntrue",
    }
    for name, text in stubs.items():
        write_program(bin_dir / name, f"#!/bin/bash\n{text}\n")
    for name in installed:
        write_program(bin_dir / name, JAVA_17 if name == "java" else "#!/bin/bash\n")
    for tool in ("env", "sed", "head", "cp", "true"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return bin_dir


def make_target(target: str, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run one of the Makefile's system targets with only `bin_dir` on PATH."""
    return subprocess.run(
        [shutil.which("make"), "-s", "-f", str(REPO_ROOT / "Makefile"), target],
        cwd=bin_dir.parent,
        env={"PATH": str(bin_dir), "HOME": str(bin_dir.parent)},
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    ("target", "package"),
    [("redis", "redis-server"), ("java", "openjdk-17-jre-headless"), ("browser", "chromium")],
)
def test_a_missing_package_is_installed_with_sudo_when_not_root(tmp_path, target, package):
    bin_dir = fake_system(tmp_path, uid=1000, sudo_works=True)
    done = make_target(target, bin_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = (tmp_path / "calls.log").read_text()
    assert f"apt-get install -y -qq {package} DEBIAN_FRONTEND=noninteractive" in calls
    assert f"sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}" in calls
    assert make_target(target, bin_dir).stdout == "", "installed now: nothing more to do"


def test_root_installs_without_sudo_and_present_tools_are_left_alone(tmp_path):
    bin_dir = fake_system(tmp_path, uid=0, sudo_works=False, installed=("redis-server",))
    assert make_target("redis", bin_dir).returncode == 0
    assert not (tmp_path / "calls.log").exists(), "redis-server is there: no apt-get"
    assert make_target("npm", bin_dir).returncode == 0
    calls = (tmp_path / "calls.log").read_text()
    assert "apt-get install -y -qq npm" in calls and "sudo" not in calls


def test_without_root_or_sudo_one_line_names_the_package_and_command(tmp_path):
    bin_dir = fake_system(tmp_path, uid=1000, sudo_works=False)
    done = make_target("redis", bin_dir)
    assert done.returncode != 0
    assert "redis-server: run sudo apt-get install redis-server" in done.stdout
    assert (tmp_path / "calls.log").read_text() == "sudo -n true\n", "asked sudo, nothing else"


def test_java_older_than_17_is_replaced_and_java_home_is_what_counts(tmp_path):
    bin_dir = fake_system(tmp_path, uid=0, sudo_works=False)
    write_program(bin_dir / "java", "#!/bin/bash\necho 'java version \"1.8.0_292\"' >&2\n")
    assert make_target("java", bin_dir).returncode == 0
    assert "openjdk-17-jre-headless" in (tmp_path / "calls.log").read_text()
    (tmp_path / "calls.log").unlink()
    write_program(bin_dir / "java", "#!/bin/bash\necho 'openjdk version \"11.0.2\"' >&2\n")
    home = tmp_path / "jdk21" / "bin"
    write_program(home / "java", "#!/bin/bash\necho 'openjdk version \"21\" 2023-09-19' >&2\n")
    done = subprocess.run(
        [shutil.which("make"), "-s", "-f", str(REPO_ROOT / "Makefile"), "java"],
        env={"PATH": str(bin_dir), "JAVA_HOME": str(home.parent)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and not (tmp_path / "calls.log").exists()


def test_book_failures_names_each_failing_lab_its_line_and_error(tmp_path):
    reports = tmp_path / "reports" / "labs"
    reports.mkdir(parents=True)
    (reports / "12_system.err.log").write_text(
        "An error occurred while executing the following cell:\n# Claims of this lab\n"
        "\x1b[31m---------\x1b[39m\n"
        "\x1b[32m---> \x1b[39m\x1b[32m12\x1b[39m assert hit_miss_ratio < 0.5\n"
        "\x1b[31mAssertionError\x1b[39m: (0.61, 200.0, 330.0)\n"
    )
    (reports / "03_attention.err.log").write_text("Traceback\nKeyError: 'x'\n")
    script = REPO_ROOT / "tools" / "book_failures.py"
    printed = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "reports")], capture_output=True, text=True
    ).stdout.splitlines()
    assert printed[0] == "FAILED 03_attention:" and printed[1] == "  KeyError: 'x'"
    assert "FAILED 12_system:" in printed
    assert "  at ---> 12 assert hit_miss_ratio < 0.5" in printed
    assert "  AssertionError: (0.61, 200.0, 330.0)" in printed
