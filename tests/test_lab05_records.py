"""Lab 05 records every value that later labs read from its results (static: no lab is run)."""

import ast
from pathlib import Path

import nbformat

LABS = Path(__file__).resolve().parents[1] / "labs"


def code_of(notebook: Path) -> ast.Module:
    """The notebook's code cells parsed as one module."""
    cells = nbformat.read(notebook, as_version=4).cells
    return ast.parse("\n".join(c.source for c in cells if c.cell_type == "code"))


def recorded_keys(tree: ast.Module, lab: str) -> set[str]:
    """Keyword names of every `record(lab, ...)` call."""
    return {
        keyword.arg
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "record"
        and node.args
        and getattr(node.args[0], "value", None) == lab
        for keyword in node.keywords
    }


def keys_read(tree: ast.Module, lab: str) -> set[str]:
    """Keys read as `results[...]` from a name bound to `require_lab(lab, ...)`."""
    assigned = [node for node in ast.walk(tree) if isinstance(node, ast.Assign)]
    bound = {
        target.id
        for node in assigned
        if isinstance(node.value, ast.Call)
        and getattr(node.value.func, "id", None) == "require_lab"
        and getattr(node.value.args[0], "value", None) == lab
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    constants = {  # names bound to a tuple or list of strings, e.g. reference_keys = ("a", "b")
        target.id: [getattr(element, "value", None) for element in node.value.elts]
        for node in assigned
        if isinstance(node.value, ast.Tuple | ast.List)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    loops = {  # loop variable -> the name it runs over, in `for` statements and comprehensions
        node.target.id: node.iter.id
        for node in ast.walk(tree)
        if isinstance(node, ast.comprehension | ast.For)
        and isinstance(node.target, ast.Name)
        and isinstance(node.iter, ast.Name)
    }
    read = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) in bound:
            if isinstance(node.slice, ast.Constant):
                read.add(node.slice.value)
            else:  # a key from a loop over named constants, or fail: the test must see every read
                over = loops.get(getattr(node.slice, "id", None))
                assert over in constants, f"cannot tell which key {ast.unparse(node)} reads"
                read |= set(constants[over])
    return read


def test_lab05_records_what_later_labs_read():
    recorded = recorded_keys(code_of(LABS / "05_finetuning.ipynb"), "05")
    readers = {nb.name: keys_read(code_of(nb), "05") for nb in sorted(LABS.glob("*.ipynb"))}
    readers = {name: keys for name, keys in readers.items() if keys}
    assert readers, "no lab reads lab 05's results: the test looks in the wrong place"
    missing = {name: sorted(keys - recorded) for name, keys in readers.items() if keys - recorded}
    assert not missing, f"lab 05 no longer records what these labs read: {missing}"
