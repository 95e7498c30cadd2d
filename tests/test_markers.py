"""The inner loop's cut (conftest.MARKS) names tests that exist: a renamed slow test would
otherwise slip into `make quick` unnoticed, and every marker used is registered."""

from __future__ import annotations

import ast
import importlib.util
import tomllib
from pathlib import Path

TESTS = Path(__file__).parent
# By path: with tests/book and tests/site collected too, `import conftest` may find theirs.
_spec = importlib.util.spec_from_file_location("tests_conftest", TESTS / "conftest.py")
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)
MARKS = _conftest.MARKS


def test_every_marked_test_exists():
    missing = []
    for module, names in MARKS.items():
        tree = ast.parse((TESTS / f"{module}.py").read_text())
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        missing += [f"{module}::{name}" for name in names if name != "*" and name not in defined]
    assert not missing, f"conftest.MARKS names tests that do not exist: {missing}"


def test_every_marker_is_registered():
    pyproject = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())
    registered = {
        line.split(":")[0] for line in pyproject["tool"]["pytest"]["ini_options"]["markers"]
    }
    used = {marker for names in MARKS.values() for markers in names.values() for marker in markers}
    assert used <= registered and {"slow", "integration", "service"} <= registered
