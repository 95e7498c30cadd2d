import json
import os

import nbformat
import pytest

from llmlab import cli, results
from llmlab.cli import find_lab, lab_paths, main, parse_value


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


def test_run_with_save_timings_records_the_wall_time(tmp_path, monkeypatch):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    notebook.cells = [
        nbformat.v4.new_code_cell("profile = 'cpu'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import time\ntime.sleep(0.2)"),
    ]
    labs = tmp_path / "labs"
    labs.mkdir()
    nbformat.write(notebook, labs / "98_sleepy.ipynb")
    timings = tmp_path / "timings.json"
    monkeypatch.setattr(cli, "LABS_DIR", labs)
    monkeypatch.setattr(results, "TIMINGS_PATH", timings)
    assert main(["run", "98", "--profile", "smoke", "--save-timings", "--out", str(tmp_path)]) == 0
    recorded = json.loads(timings.read_text())["98"]["smoke"]
    assert 0.2 <= recorded["seconds"] < 120 and "CPU cores" in recorded["machine"]


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
