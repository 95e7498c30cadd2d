"""The pins in pyproject.toml, environment.yml and requirements.lock must not drift apart."""

import re
import tomllib

import yaml
from packaging.requirements import Requirement

from llmlab.config import REPO_ROOT


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    return {r.name.lower(): str(r.specifier) for r in requirements}


def test_every_dependency_is_pinned_exactly():
    loose = [name for name, spec in pyproject_pins().items() if not re.fullmatch(r"==[\w.]+", spec)]
    assert not loose, f"not pinned with ==: {loose}"


def test_environment_yml_names_the_same_pins():
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = {
        Requirement(line).name.lower(): str(Requirement(line).specifier)
        for line in pip_section
        if not line.startswith("-")
    }
    assert conda_pins == pyproject_pins()
    assert "python=3.11" in env["dependencies"]
    assert any(str(d).startswith("openjdk=17") for d in env["dependencies"])


def test_lock_agrees_with_pyproject():
    lock = {}
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            lock[name.lower().replace("_", "-")] = "==" + version
    for name, spec in pyproject_pins().items():
        locked = lock.get(name.replace("_", "-"))
        assert locked == spec, f"{name}: pyproject {spec}, lock {locked}"
