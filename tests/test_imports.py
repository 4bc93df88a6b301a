"""Imports run one way, loaders → mmtm → cli, and no module takes part in an import cycle.

The graph is read from the source (every `import` statement, function-local ones included), not from what
Python happened to load, so an import hidden in a function counts as much as one at the top."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("loaders", "mmtm", "cli")  # each may import only from itself and the ones before it


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports; `from pkg import name` counts as pkg.name when that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in LAYERS}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    layer = {name: LAYERS.index(name.split(".")[0]) for name in graph}
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if LAYERS.index(b.split(".")[0]) > layer[a])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_upward_imports():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_guard():
    graph = {"loaders.a": {"mmtm.b"}, "mmtm.b": {"mmtm.c"}, "mmtm.c": {"mmtm.b"}, "cli.d": {"loaders.a"}}
    assert upward_imports(graph) == ["loaders.a -> mmtm.b"]
    assert cycles(graph) == [["mmtm.b", "mmtm.c"]]
    assert cycles({"mmtm.x": {"mmtm.x"}}) == [["mmtm.x"]]


def test_the_graph_sees_every_package_and_local_imports():
    graph = import_graph()
    assert {"loaders.dataset", "loaders.prep.build", "mmtm.training", "cli.app"} <= set(graph)
    assert "loaders.dali_backend" in graph["loaders.factory"]  # imported inside a function
    assert "loaders.prep.render" in graph["loaders.prep.build"]  # `from loaders.prep import render`


def test_readme_module_map_names_every_module():
    """Every module of loaders/, mmtm/ and cli/ has a row in docs/layout.md, "Where things are" (its path, or its
    folder and its name in one row), so the map a newcomer reads matches the tree."""
    section = (ROOT / "docs" / "layout.md").read_text()
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    missing = []
    for name, path in project_modules().items():
        if path.name == "__init__.py":
            continue
        folder = path.parent.relative_to(ROOT).as_posix() + "/"
        if not any(folder in row and path.stem in row for row in rows):
            missing.append(name)
    assert missing == []
