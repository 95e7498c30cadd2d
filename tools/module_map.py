"""The README's lab -> module map, generated from the labs' own imports.

`python tools/module_map.py` prints the table; `--write` puts it into README.md between the
module-map markers. tests/test_module_map.py fails when the README's copy is stale.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- module-map:start -->", "<!-- module-map:end -->"

# The lab whose notebook builds (explains) each module; "infrastructure" runs the course itself.
BUILT_IN = {
    "attention": "03",
    "baselines": "02",
    "batches": "04",
    "batching": "14",
    "bench": "03",
    "bow": "13",
    "checkpoints": "04",
    "config": "01",
    "data": "02",
    "distributed": "07",
    "embeddings": "15",
    "federated": "13",
    "finetune": "05",
    "flops": "04",
    "generation": "14",
    "knowledge": "15",
    "loop": "04",
    "metrics": "03",
    "modelcard": "09",
    "models": "04",
    "monitoring": "10",
    "pipeline": "11",
    "ranks": "07",
    "plots": "02",
    "registry": "09",
    "results": "01",
    "serving": "10",
    "spark": "07",
    "speculative": "14",
    "stages": "11",
    "streaming": "07",
    "system": "12",
    "text": "02",
    "track": "04",
    "train": "04",
    "trust": "13",
    "vectorindex": "15",
}
INFRASTRUCTURE = {
    "checkreport": "`make gpu-check`'s sizes and report",
    "cli": "the `llmlab` command",
    "doctor": "`llmlab doctor`",
    "environment": "tool state out of `$HOME`",
    "gpucheck": "`make gpu-check`",
    "gpucheck_generation": "`make gpu-check`'s generation checks",
    "runner": "`llmlab run` (papermill)",
}


def package_modules() -> list[str]:
    """Top-level modules and sub-packages of llmlab, by name."""
    names = [p.stem for p in (ROOT / "llmlab").glob("*.py") if p.stem != "__init__"]
    names += [p.name for p in (ROOT / "llmlab").iterdir() if (p / "__init__.py").exists()]
    return sorted(names)


def _imported(tree: ast.AST, modules: set[str]) -> set[str]:
    """llmlab modules an AST imports, at the top level of the package."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "llmlab":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "llmlab" and len(parts) > 1:
                    found.add(parts[1])
    return found


def lab_imports() -> dict[str, set[str]]:
    """For each lab number, the llmlab modules its code cells import."""
    modules = set(package_modules())
    uses = {}
    for notebook in sorted((ROOT / "labs").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        found: set[str] = set()
        for cell in cells:
            if cell["cell_type"] != "code":
                continue
            source = cell["source"]
            source = "".join(source) if isinstance(source, list) else source
            code = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
            found |= _imported(ast.parse("\n".join(code)), modules)
        uses[notebook.name[:2]] = found
    return uses


def module_imports() -> dict[str, set[str]]:
    """For each llmlab module, the other llmlab modules it imports."""
    modules = set(package_modules())
    uses = {}
    for name in modules:
        path = ROOT / "llmlab" / name
        files = sorted(path.glob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        found: set[str] = set()
        for file in files:
            found |= _imported(ast.parse(file.read_text()), modules)
        uses[name] = found - {name}
    return uses


def table() -> str:
    """The map as a Markdown table: module, the lab that builds it, who imports it."""
    uses, inner = lab_imports(), module_imports()
    rows = [
        "| module | built in | imported by labs | imported by modules |",
        "| --- | --- | --- | --- |",
    ]
    for name in package_modules():
        users = ", ".join(lab for lab, found in uses.items() if name in found) or "none"
        importers = ", ".join(f"`{m}`" for m, found in sorted(inner.items()) if name in found)
        if name in INFRASTRUCTURE:
            home = f"infrastructure: {INFRASTRUCTURE[name]}"
        elif name in BUILT_IN:
            home = f"lab {BUILT_IN[name]}"
        else:
            raise KeyError(f"llmlab.{name} has no home: add it to BUILT_IN or INFRASTRUCTURE")
        rows.append(f"| `{name}` | {home} | {users} | {importers or 'none'} |")
    return "\n".join(rows)


def readme_section() -> str:
    """The map as it stands in README.md, between the markers."""
    text = README.read_text()
    return text[text.index(START) + len(START) : text.index(END)].strip()


def write() -> None:
    """Replace the README's map with a freshly generated one."""
    text = README.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{table()}\n{END}{tail}")


if __name__ == "__main__":
    write() if "--write" in sys.argv else print(table())
