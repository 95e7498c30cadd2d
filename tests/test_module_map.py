"""The package's shape: the README's lab -> module map is current, and no module imports cycle."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("module_map", ROOT / "tools" / "module_map.py")
module_map = importlib.util.module_from_spec(spec)
sys.modules["module_map"] = module_map
spec.loader.exec_module(module_map)


def test_readme_map_is_generated_from_the_labs_imports() -> None:
    """A lab that starts or stops importing a module, or a new module, needs the map rewritten."""
    assert module_map.readme_section() == module_map.table(), (
        "README's module map is stale: run `python tools/module_map.py --write`"
    )


def test_every_module_has_a_home() -> None:
    """Each module is built by a lab or labelled infrastructure, never both."""
    modules = set(module_map.package_modules())
    assert modules <= set(module_map.BUILT_IN) | set(module_map.INFRASTRUCTURE)
    assert not set(module_map.BUILT_IN) & set(module_map.INFRASTRUCTURE)


def _file_imports() -> dict[str, set[str]]:
    """llmlab.* module -> the llmlab.* modules it imports (any scope, TYPE_CHECKING included)."""
    files = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (ROOT / "llmlab").rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module in files:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names} & set(files)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names} & set(files)
        graph[name] = found - {name, "llmlab"}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            if found := visit(nxt, path + [node]):
                return found
        done.add(node)
        return None

    return next((c for n in sorted(graph) if (c := visit(n, []))), None)


def test_no_import_cycle() -> None:
    """Modules form layers: an import back up (even for type hints) makes a cycle and fails."""
    assert _cycle(_file_imports()) is None, " -> ".join(_cycle(_file_imports()) or [])


def test_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a two-module loop is reported."""
    assert _cycle({"a": {"b"}, "b": {"a"}, "c": set()}) == ["a", "b", "a"]
