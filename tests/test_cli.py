import importlib.metadata
import os
import subprocess
import sys

import pytest
from lab_helpers import write_lab

from llmlab import cli, doctor
from llmlab.cli import find_lab, lab_paths, main, parse_value
from llmlab.environment import apply_environment, read_settings


def test_find_lab_accepts_number_and_name():
    first = lab_paths()[0]
    number = first.stem.split("_")[0]
    assert find_lab(number.lstrip("0")) == first
    assert find_lab(first.stem) == first


def test_find_lab_lists_the_labs_when_nothing_matches():
    with pytest.raises(LookupError, match="no single lab matches '99'"):
        find_lab("99")


@pytest.mark.parametrize(
    ("text", "value"),
    [("3", 3), ("0.5", 0.5), ("true", True), ("null", None), ("[1, 2]", [1, 2]), ("cpu", "cpu")],
)
def test_parse_value_reads_json_else_string(text, value):
    assert parse_value(text) == value


def test_run_rejects_unknown_profile(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "01", "--profile", "huge"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_run_rejects_a_parameter_without_value(capsys):
    with pytest.raises(SystemExit):
        main(["run", "01", "--profile", "smoke", "-p", "seed"])
    assert "expected 2 arguments" in capsys.readouterr().err


def test_run_of_an_unknown_lab_exits_2_with_the_list(capsys):
    assert main(["run", "99", "--profile", "smoke"]) == 2
    assert "no single lab matches '99'" in capsys.readouterr().err


def test_save_timings_refuses_parameters(capsys):
    assert main(["run", "01", "--profile", "smoke", "--save-timings", "-p", "seed", "1"]) == 2
    assert "--save-timings records default runs only" in capsys.readouterr().err


def test_run_names_the_failing_cell_and_its_error(tmp_path, monkeypatch, capsys):
    """A lab whose claim fails: exit 1, and stderr names the cell as the executed notebook numbers
    it, the error and where that notebook is (printing the cell's index instead fails it)."""
    import nbformat

    monkeypatch.setattr(cli, "LABS_DIR", write_lab(tmp_path, "98_broken", "assert 1 == 2, 'x'"))
    monkeypatch.setenv("LLMLAB_PROFILE", "smoke")  # run sets it: restored after the test
    assert main(["run", "98", "--profile", "smoke", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    executed = nbformat.read(tmp_path / "out" / "98_broken.ipynb", as_version=4)
    (failed,) = [c for c in executed.cells if any(o.get("ename") for o in c.get("outputs", []))]
    assert f"98_broken failed in cell {failed.execution_count}: AssertionError: x" in err, err
    assert f"executed notebook with the traceback: {tmp_path / 'out' / '98_broken.ipynb'}" in err


@pytest.mark.parametrize(
    ("profile", "expected"), [("cpu", "_build"), ("smoke", "_build/profiles/smoke/_build")]
)
def test_each_profile_runs_in_its_own_build_dir(monkeypatch, profile, expected):
    monkeypatch.setenv("LLMLAB_BUILD_DIR", str(cli.REPO_ROOT / "_build"))  # what tools/env.sh sets
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{cli.REPO_ROOT / '_build'}/mlflow.db")
    assert cli.use_profile(profile) == cli.REPO_ROOT / expected
    assert os.environ["LLMLAB_PROFILE"] == profile
    assert "MLFLOW_TRACKING_URI" not in os.environ, "the registry must follow the build dir"


def test_an_explicit_build_dir_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMLAB_BUILD_DIR", str(tmp_path))
    assert cli.use_profile("smoke") == tmp_path


@pytest.fixture(autouse=True)
def restored_tool_environment(monkeypatch):
    """`main` applies tools/env.list to os.environ: put every variable back after each test."""
    for setting in read_settings():
        if setting.name in os.environ:
            monkeypatch.setenv(setting.name, os.environ[setting.name])
        else:
            monkeypatch.delenv(setting.name, raising=False)


def test_llmlab_keeps_tool_state_out_of_home_without_env_sh(tmp_path, monkeypatch):
    home, build = tmp_path / "home", tmp_path / "build"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LLMLAB_BUILD_DIR", str(build))
    for setting in read_settings():  # as in a shell that never sourced tools/env.sh
        monkeypatch.delenv(setting.name, raising=False)
    labs = write_lab(tmp_path, "97_plot", "import matplotlib.pyplot as plt\nplt.plot([1, 2])")
    monkeypatch.setattr(cli, "LABS_DIR", labs)
    assert main(["run", "97", "--profile", "smoke", "--out", str(tmp_path / "out")]) == 0
    assert sorted(home.rglob("*")) == [], "nothing written into $HOME"
    assert (build / "home" / "jupyter-runtime").is_dir() and (
        build / "home" / "matplotlib"
    ).is_dir()
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{build}/mlflow.db"


def test_settings_already_made_are_kept_where_env_list_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMLAB_BUILD_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "online")  # ?= in tools/env.list
    monkeypatch.setenv("WANDB_DIR", "/elsewhere")  # = : follows the build dir
    assert apply_environment() == tmp_path
    assert os.environ["WANDB_MODE"] == "online"
    assert os.environ["WANDB_DIR"] == str(tmp_path / "wandb")


def test_env_sh_sets_what_the_cli_sets(tmp_path):
    shell = subprocess.run(
        ["bash", "-c", f". {cli.REPO_ROOT / 'tools' / 'env.sh'} && env -0"],
        env={"PATH": os.environ["PATH"], "LLMLAB_BUILD_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    from_shell = dict(line.split("=", 1) for line in shell.stdout.split("\0") if line)
    from_cli = {"LLMLAB_BUILD_DIR": str(tmp_path)}
    apply_environment(from_cli)
    assert from_cli == {name: from_shell[name] for name in from_cli}


def test_processes_write_bytecode_even_when_the_caller_says_not_to(tmp_path):
    # The venv is installed --no-compile: without written bytecode every process recompiles
    # every module it imports (transformers, mlflow, sklearn: 20-22 s instead of 9 s).
    module = tmp_path / "compiled_once.py"
    module.write_text("VALUE = 1\n")
    env = {"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tmp_path)}
    apply_environment(env)
    subprocess.run([sys.executable, "-c", "import compiled_once"], env=env, check=True)
    assert list((tmp_path / "__pycache__").glob("compiled_once.*.pyc")), "no bytecode written"


def fake_java(folder, version_line):
    """A `java` whose -version prints `version_line`, as a JDK does (on stderr)."""
    java = folder / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/bash\necho '{version_line}' >&2\n")
    java.chmod(0o755)
    return java


@pytest.mark.parametrize(
    ("line", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_292"', 8),
        ('openjdk version "21" 2023-09-19', 21),
    ],
)
def test_java_version_reads_the_major_version(tmp_path, line, major):
    assert doctor.java_version(str(fake_java(tmp_path, line))) == major


def test_doctor_fails_on_old_java_and_missing_tools_with_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(
        "JAVA_HOME",
        str(fake_java(tmp_path / "jdk", 'openjdk version "11.0.2"')).removesuffix("/bin/java"),
    )
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server, npm or chromium
    assert main(["doctor"]) == 1
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "missing" in lines["java"] and "-> make java" in lines["java"]
    assert "missing" in lines["redis-server"] and "-> make redis" in lines["redis-server"]
    assert "optional" in lines["chromium"], "make site's browser is not needed for the book"
    assert lines["pins"].split()[1] == "ok" and lines["python"].split()[1] == "ok"


def test_report_fails_only_on_required_checks(capsys):
    optional = doctor.Check("chromium", False, "not on PATH", "make browser", required=False)
    assert doctor.report([doctor.Check("python", True, "3.11.7"), optional]) == 0
    assert doctor.report([doctor.Check("npm", False, "not on PATH", "make npm")]) == 1
    assert capsys.readouterr().out.splitlines()[-1].endswith("not on PATH -> make npm")


def test_pins_that_differ_are_named(tmp_path):
    lock = tmp_path / "requirements.lock"
    installed = importlib.metadata.version("pytest")
    lock.write_text(f"pytest=={installed}\nnumpy==0.0.1\nno-such-package==1.0\n")
    assert doctor.differing_pins(lock) == [
        "numpy " + importlib.metadata.version("numpy") + " (lock 0.0.1)",
        "no-such-package missing (lock 1.0)",
    ]


def test_tool_state_outside_the_build_dir_is_reported(monkeypatch, tmp_path):
    apply_environment()
    assert doctor.check_tool_state().ok
    monkeypatch.setenv("WANDB_DIR", str(tmp_path.parent / "wandb"))
    monkeypatch.delenv("HF_HOME")
    check = doctor.check_tool_state()
    assert (
        not check.ok and "WANDB_DIR=" in check.detail and "HF_HOME=(unset: $HOME)" in check.detail
    )


def test_serve_lm_passes_its_options_to_the_generation_service(monkeypatch):
    """Catches a serve-lm command that drops its options (main rejects them as unrecognized)."""
    from llmlab.serving import generate

    seen = {}
    monkeypatch.setattr(generate, "serve", lambda args: seen.update(vars(args)) or 0)
    assert main(["serve-lm", "--model", "lm-dir", "--max-active", "3", "--deadline-s", "2"]) == 0
    assert seen["model"] == "lm-dir" and seen["max_active"] == 3 and seen["deadline_s"] == 2.0


def test_serve_lm_requires_a_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve-lm"])
    assert exit_info.value.code == 2
    assert "--model" in capsys.readouterr().err
