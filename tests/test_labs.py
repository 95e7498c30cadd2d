"""Every lab is in the book, has one standard `parameters` cell, and ends in asserted claims."""

import ast

import nbformat
import pytest
import yaml

from llmlab.cli import lab_paths
from llmlab.config import REPO_ROOT

LABS = lab_paths()


def toc_files() -> set[str]:
    """Every `file:` entry of _toc.yml."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                found.add(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
    found.add(toc["root"])
    walk(toc)
    return found


def code_cells(path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_there_are_labs():
    assert LABS, "no labs found in labs/"


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_lab_is_listed_in_the_toc(lab):
    assert f"labs/{lab.stem}" in toc_files(), f"{lab.name} is missing from _toc.yml"


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_lab_has_one_parameters_cell_with_standard_knobs(lab):
    cells = [c for c in code_cells(lab) if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{lab.name}: expected one cell tagged 'parameters', found {len(cells)}"
    assigned = {
        target.id
        for node in ast.parse(cells[0].source).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    missing = {"profile", "seed", "device"} - assigned
    assert not missing, f"{lab.name}: parameters cell does not set {sorted(missing)}"
    assert "LLMLAB_PROFILE" in cells[0].source, f"{lab.name}: profile must read $LLMLAB_PROFILE"


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_lab_ends_with_an_assertions_cell(lab):
    cells = [c.source for c in code_cells(lab)]
    assert cells[-1].lstrip().startswith("# Claims of this lab"), f"{lab.name}: no claims cell"
    assert "lab_passed(" in cells[-1], f"{lab.name}: the last claims cell must call lab_passed"
    claims = []  # the trailing run of claims cells (a long list is split to keep cells short)
    while cells and cells[-1].lstrip().startswith("# Claims of this lab"):
        claims.insert(0, cells.pop())
    assert not claims[0].lstrip().startswith("# Claims of this lab (continued)"), lab.name
    assert all(c.lstrip().startswith("# Claims of this lab (continued)") for c in claims[1:]), (
        f"{lab.name}: claims cells after the first are headed '# Claims of this lab (continued)'"
    )
    for cell in claims:
        asserts = [n for n in ast.walk(ast.parse(cell)) if isinstance(n, ast.Assert)]
        assert asserts, f"{lab.name}: a claims cell asserts nothing:\n{cell[:200]}"
        assert all(a.msg is not None for a in asserts), f"{lab.name}: every claim needs a message"
    total = sum(isinstance(n, ast.Assert) for c in claims for n in ast.walk(ast.parse(c)))
    assert total >= 2, f"{lab.name}: the claims cells assert {total} claim(s)"


MAX_CELL_LINES = 60  # STYLE.md: no notebook cell over ~60 lines


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_lab_code_cells_are_at_most_60_lines(lab):
    cells = nbformat.read(lab, as_version=4).cells
    long = [
        f"cell {i} ({len(c.source.splitlines())} lines, first: {c.source.splitlines()[0]!r})"
        for i, c in enumerate(cells)
        if c.cell_type == "code" and len(c.source.splitlines()) > MAX_CELL_LINES
    ]
    assert not long, f"{lab.name}: code cells over {MAX_CELL_LINES} lines: {'; '.join(long)}"


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_lab_is_stored_without_outputs(lab):
    dirty = [i for i, c in enumerate(code_cells(lab)) if c.outputs or c.execution_count]
    assert not dirty, f"{lab.name}: code cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_lab_header_says_how_to_rerun_it_and_how_long_it_takes(lab):
    cells = nbformat.read(lab, as_version=4).cells
    number = lab.stem[:2]
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith(f"# Lab {number}")
    for promise in ("What you will learn", f"llmlab run {number}", "GPU"):
        assert promise in cells[0].source, f"{lab.name}: the header does not mention {promise!r}"
    assert cells[1].source.strip().endswith(f'lab_timings("{number}")'), (
        f"{lab.name}: the cell after the header must show the measured wall times"
    )


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_lab_has_exercises_with_folded_solutions(lab):
    markdown = [
        c.source for c in nbformat.read(lab, as_version=4).cells if c.cell_type == "markdown"
    ]
    starts = [i for i, text in enumerate(markdown) if text.startswith("## Exercises")]
    assert starts, f"{lab.name}: no '## Exercises' section"
    exercises = "\n".join(markdown[starts[0] :])
    assert exercises.count(":class: dropdown") >= 2, f"{lab.name}: solutions must be folded away"
