"""Imports run one way, loaders → mmtm → cli, and no module takes part in an import cycle.

The graph is read from the source (every `import` statement, function-local ones included), not from what
Python happened to load, so an import hidden in a function counts as much as one at the top."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("loaders", "mmtm", "cli")  # folders; each may import only from itself and the ones before it
PACKAGES = {"loaders": "mmtm.loaders", "mmtm": "mmtm", "cli": "mmtm.cli"}  # what each folder installs as
OLD = ("loaders", "cli")  # the top-level names they had before


def project_modules() -> dict[str, Path]:
    modules = {}
    for folder in LAYERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            modules[".".join((PACKAGES[folder], *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return modules


def layer(name: str) -> int:
    """0 for mmtm.loaders, 2 for mmtm.cli, 1 for the rest of mmtm (an old top-level name counts as its folder)."""
    first, _, rest = name.partition(".")
    if first in OLD:
        return LAYERS.index(first)
    sub = rest.partition(".")[0]
    return LAYERS.index(sub) if sub in OLD else 1


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
        found |= {n for n in names if n.split(".")[0] in ("mmtm", *OLD)}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer(b) > layer(a))


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


def test_nothing_imports_the_old_top_level_names():
    """cli and loaders install inside mmtm; an import of the bare names would load a second copy (or another
    project's module of that name)."""
    graph = import_graph()
    assert sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if b.split(".")[0] in OLD) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_guard():
    graph = {"mmtm.loaders.a": {"mmtm.b"}, "mmtm.b": {"mmtm.c"}, "mmtm.c": {"mmtm.b"}, "mmtm.cli.d": {"mmtm.loaders.a"}}
    assert upward_imports(graph) == ["mmtm.loaders.a -> mmtm.b"]
    old = f"{OLD[0]}.e"  # a module under the old top-level name still counts as its layer
    assert upward_imports({"mmtm.b": {"mmtm.cli.d", "mmtm"}, old: {"mmtm.b"}}) == [f"{old} -> mmtm.b",
                                                                                 "mmtm.b -> mmtm.cli.d"]
    assert cycles(graph) == [["mmtm.b", "mmtm.c"]]
    assert cycles({"mmtm.x": {"mmtm.x"}}) == [["mmtm.x"]]


def test_the_graph_sees_every_package_and_local_imports():
    graph = import_graph()
    assert {"mmtm.loaders.dataset", "mmtm.loaders.prep.build", "mmtm.training.loop", "mmtm.cli.app"} <= set(graph)
    assert "mmtm.loaders.dali_backend" in graph["mmtm.loaders.factory"]  # imported inside a function
    assert "mmtm.loaders.prep.render" in graph["mmtm.loaders.prep.build"]  # `from mmtm.loaders.prep import render`


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


def test_the_wheel_installs_one_top_level_package(tmp_path):
    """A wheel built from the checkout holds mmtm/ alone (cli and loaders inside it, every module of the folders
    included), its `mmtm` command is mmtm.cli.app:main, and it imports with nothing but the wheel on the path."""
    src = tmp_path / "src"
    for folder in LAYERS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    tmp_path / "wheel", src], check=True, capture_output=True)
    wheel, = (tmp_path / "wheel").glob("mmtm-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    assert {n.split("/")[0] for n in names} == {"mmtm", wheel.name.removesuffix("-py3-none-any.whl") + ".dist-info"}
    packaged = {n for n in names if n.endswith(".py")}
    assert {"mmtm/cli/app.py", "mmtm/loaders/prep/build.py", "mmtm/loaders/dataset.py"} <= packaged
    assert {"/".join(m.split(".")) + ("/__init__.py" if p.name == "__init__.py" else ".py")
            for m, p in project_modules().items()} == packaged
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mmtm = mmtm.cli.app:main" in (tmp_path / "site" / entry_points).read_text()
    found = subprocess.run([sys.executable, "-c", "import mmtm.loaders.dataset, mmtm.cli.app; "
                            "print(mmtm.loaders.dataset.__file__, mmtm.cli.app.__file__)"],
                           cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")}, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [str(tmp_path / "site/mmtm/loaders/dataset.py"),
                                    str(tmp_path / "site/mmtm/cli/app.py")]


def test_a_source_checkout_imports_the_same_names(tmp_path):
    """With only the checkout on the path (no install), mmtm.loaders and mmtm.cli are its top-level folders, and
    importing mmtm.loaders loads no other part of mmtm (nor torch)."""
    code = ("import sys, mmtm.loaders.dataset; print(sorted(m for m in sys.modules if m.startswith('mmtm')), "
            "'torch' in sys.modules); import mmtm.cli.app; print(mmtm.loaders.dataset.__file__, mmtm.cli.app.__file__)")
    found = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    first, second = found.stdout.splitlines()
    assert first == "['mmtm', 'mmtm.loaders', 'mmtm.loaders.dataset', 'mmtm.loaders.errors'] False"
    assert second.split() == [str(ROOT / "loaders" / "dataset.py"), str(ROOT / "cli" / "app.py")]
