"""Tiny labs for tests of the lab runner: a parameters cell and one cell of code."""

from __future__ import annotations

from pathlib import Path

import nbformat


def write_lab(tmp_path: Path, name: str, code: str) -> Path:
    """A lab `name` whose one cell (after its parameters cell) runs `code`, in tmp_path/labs."""
    notebook = nbformat.v4.new_notebook()
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["kernelspec"] = kernel
    notebook.cells = [
        nbformat.v4.new_code_cell("profile = 'cpu'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(code),
    ]
    labs = tmp_path / "labs"
    labs.mkdir(exist_ok=True)
    nbformat.write(notebook, labs / f"{name}.ipynb")
    return labs
