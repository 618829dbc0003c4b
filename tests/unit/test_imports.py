"""haven's modules import each other without cycles, and the daemon side never needs the lab.

The import graph is read from the source with `ast`, not by importing: every `import` and
`from ... import` counts, at module level or inside a function, except under `if TYPE_CHECKING:`
(never executed). `from haven.x import y` is an edge to `haven.x.y` when that is a module, else
to `haven.x`.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "haven"
# Runs on a host in production: must not pull in the lab (netns, guest images, demo clusters).
DAEMON_SIDE = ("haven.core", "haven.runtime", "haven.drivers", "haven.daemon")
LAB = "haven.lab"


@dataclass(frozen=True)
class Edge:
    target: str
    line: int


def module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def haven_modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(path, package.parent): path for path in sorted(package.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(nodes: Iterable[ast.AST]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import in or below `nodes`, skipping the body (not the else) of `if TYPE_CHECKING:`."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.orelse)
        else:
            yield from _import_nodes(ast.iter_child_nodes(node))


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module `name` names, or its nearest enclosing one that exists (None outside haven)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """The haven modules `module` (at `path`) imports, with the line of each import."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    edges = []
    for node in _import_nodes([ast.parse(path.read_text(), str(path))]):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: `from . import x`, `from ..y import z`
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                     for alias in node.names]
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module and Edge(target, node.lineno) not in edges:
                edges.append(Edge(target, node.lineno))
    return edges


def import_graph(modules: dict[str, Path]) -> dict[str, list[Edge]]:
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def strongly_connected(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """Tarjan's algorithm; the components of more than one module are the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph.get(node, ()):
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def path_between(graph: dict[str, list[Edge]], start: str, goal: str,
                 within: set[str] | None = None) -> list[tuple[str, Edge]]:
    """A shortest chain of imports from `start` to `goal` (breadth first), as (importer, edge)."""
    came: dict[str, tuple[str, Edge]] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        following = []
        for node in frontier:
            for edge in graph.get(node, ()):
                if edge.target == goal:
                    chain = [(node, edge)]
                    while node != start:
                        node, edge = came[node]
                        chain.append((node, edge))
                    return chain[::-1]
                if edge.target not in seen and (within is None or edge.target in within):
                    seen.add(edge.target)
                    came[edge.target] = (node, edge)
                    following.append(edge.target)
        frontier = following
    return []


def describe(chain: list[tuple[str, Edge]], modules: dict[str, Path]) -> str:
    def where(path: Path) -> Path:
        return path.relative_to(SRC.parent) if path.is_relative_to(SRC.parent) else path
    return "\n".join(f"  {importer} imports {edge.target}  ({where(modules[importer])}:{edge.line})"
                     for importer, edge in chain)


def cycle_report(graph: dict[str, list[Edge]], modules: dict[str, Path]) -> list[str]:
    reports = []
    for component in strongly_connected(graph):
        first = component[0]
        chain = path_between(graph, first, first, within=set(component))
        inside = [(module, edge) for module in component for edge in graph[module] if edge.target in component]
        reports.append(f"cycle among {', '.join(component)}:\n{describe(chain, modules)}\n"
                       f" every import among them:\n{describe(inside, modules)}")
    return reports


def test_haven_has_no_import_cycles():
    modules = haven_modules()
    assert len(modules) > 20 and "haven.core.manager" in modules
    cycles = cycle_report(import_graph(modules), modules)
    assert not cycles, "import cycles (move the shared piece into a module of its own):\n" + "\n".join(cycles)


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def test_daemon_side_does_not_import_the_lab():
    """Neither directly nor through another module."""
    modules = haven_modules()
    graph = import_graph(modules)
    problems = []
    for module in sorted(m for m in modules if _within(m, DAEMON_SIDE)):
        for lab_module in sorted(m for m in modules if _within(m, (LAB,))):
            chain = path_between(graph, module, lab_module)
            if chain:
                problems.append(f"{module} -> {lab_module}:\n{describe(chain, modules)}")
                break
    assert not problems, "the daemon side imports the lab:\n" + "\n".join(problems)


# --- the checks themselves ---

def _fake_package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = tmp_path / "haven" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return haven_modules(tmp_path / "haven")


def test_the_graph_reads_every_kind_of_import(tmp_path):
    modules = _fake_package(tmp_path, {
        "__init__.py": "",
        "a/__init__.py": "",
        "a/b.py": ("from typing import TYPE_CHECKING\n"
                   "import haven.a.c\n"
                   "from haven.a import d\n"
                   "from haven.e import thing\n"
                   "from . import f\n"
                   "from .. import g\n"
                   "if TYPE_CHECKING:\n    from haven.a import h\n"
                   "def later():\n    from haven.a.i import x\n"),
        **{f"a/{n}.py": "" for n in "cdfhi"},
        "e.py": "", "g.py": "",
    })
    graph = import_graph(modules)
    assert {edge.target for edge in graph["haven.a.b"]} == {
        "haven.a.c", "haven.a.d", "haven.e", "haven.a.f", "haven.g", "haven.a.i"}


def test_the_check_finds_a_cycle_through_a_function_level_import(tmp_path):
    modules = _fake_package(tmp_path, {
        "__init__.py": "",
        "x.py": "from haven.y import Y\n",
        "y.py": "def f():\n    from haven.z import Z\n",
        "z.py": "import haven.x\n",
        "w.py": "import haven.x\n",
    })
    graph = import_graph(modules)
    assert strongly_connected(graph) == [["haven.x", "haven.y", "haven.z"]]
    report = cycle_report(graph, modules)[0]
    assert "haven.y imports haven.z" in report and "y.py:2" in report
    assert path_between(graph, "haven.w", "haven.z")
