"""The layering of Sentinel's three packages, read from the source with :mod:`ast` (nothing is imported).

- No import cycle among the modules of monitor/, detectors/ and storage/. Imports inside functions count (a
  cycle hidden in a function is still one: it only moves the failure to run time), imports under
  ``if TYPE_CHECKING:`` do not (they never run).
- The arrows: monitor may import detectors and storage; detectors and storage never import monitor, and
  never import each other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("monitor", "detectors", "storage")
# The packages each package may not import (an arrow that does not exist).
FORBIDDEN = {
    "detectors": ("monitor", "storage"),
    "storage": ("monitor", "detectors"),
    "monitor": (),
}

ImportGraph = dict[str, set[str]]


def module_files(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of ``packages`` (a package is its __init__)."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth (functions included), except those under ``if TYPE_CHECKING``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for branch in node.orelse:
                yield from _import_nodes(branch)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _import_nodes(node)


def imported_names(module: str, path: Path) -> set[str]:
    """The absolute dotted names ``module`` imports (``from a.b import c`` gives ``a.b.c``)."""
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_package else module.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, base] if base else parts)
        names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _owning_module(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module of ours that ``name`` is, or lives in (``a.b.C`` -> ``a.b``); None for third-party names."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: Mapping[str, Path]) -> ImportGraph:
    """Module -> the modules of ours it imports."""
    graph: ImportGraph = {}
    for module, path in modules.items():
        targets = {_owning_module(name, modules) for name in imported_names(module, path)}
        graph[module] = {target for target in targets if target is not None and target != module}
    return graph


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Each import cycle as the path around it (first module repeated at the end), one per strongly
    connected group of modules (Tarjan's algorithm, iterative so deep graphs need no recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            successor = next(successors, None)
            if successor is not None:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph.get(successor, ())))))
                elif successor in on_stack:
                    low[node] = min(low[node], index[successor])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)
    return [_path_around(group, graph) for group in groups]


def _path_around(group: set[str], graph: Mapping[str, set[str]]) -> list[str]:
    """One concrete cycle through the group's first module (breadth-first, so the shortest one)."""
    first = min(group)
    came_from: dict[str, str] = {}
    frontier = [first]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for successor in sorted(graph.get(node, set()) & group):
                if successor == first:
                    path = [node]
                    while path[-1] != first:
                        path.append(came_from[path[-1]])
                    return [first, *reversed(path[:-1]), first] if node != first else [first, first]
                if successor not in came_from:
                    came_from[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"no cycle through {first} in its own strongly connected group")  # pragma: no cover


def forbidden_imports(modules: Mapping[str, Path]) -> list[str]:
    """``module imports name`` for every import that goes against the arrows."""
    found: list[str] = []
    for module, path in modules.items():
        refused = FORBIDDEN[module.split(".")[0]]
        for name in sorted(imported_names(module, path)):
            if name.split(".")[0] in refused:
                found.append(f"{module} imports {name}")
    return found


# ----------------------------------------------------------------------------------- the checks


def test_no_import_cycle() -> None:
    cycles = find_cycles(import_graph(module_files()))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_detectors_and_storage_import_neither_monitor_nor_each_other() -> None:
    wrong = forbidden_imports(module_files())
    assert not wrong, "imports against the arrows (monitor -> detectors, monitor -> storage):\n" + "\n".join(
        wrong
    )


# ----------------------------------------------------------------------------------- the checker itself


TYPING_ONLY = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"


def _write(root: Path, files: Mapping[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_cycle_through_package_init_and_function_imports_is_found(tmp_path: Path) -> None:
    # The shape Sentinel once had: config imports the settings, the settings import config's base back
    # (here one of them inside a function, which hides it from a module-level scan).
    _write(
        tmp_path,
        {
            "monitor/__init__.py": "",
            "monitor/config.py": "from monitor.alerting.settings import AlertingSettings\n",
            "monitor/alerting/__init__.py": "from . import settings\n",
            "monitor/alerting/settings.py": "def base():\n    from monitor.config import _Strict\n",
            "monitor/leaf.py": TYPING_ONLY + "    import monitor.config\n",
        },
    )
    cycles = find_cycles(import_graph(module_files(tmp_path, ("monitor",))))
    assert cycles == [["monitor.alerting.settings", "monitor.config", "monitor.alerting.settings"]]


def test_typing_only_imports_make_no_cycle(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "monitor/__init__.py": "",
            "monitor/a.py": "import monitor.b\n",
            "monitor/b.py": TYPING_ONLY + "    from monitor.a import A\n",
        },
    )
    assert find_cycles(import_graph(module_files(tmp_path, ("monitor",)))) == []


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        (
            "detectors",
            "from monitor.config import AppConfig\n",
            "detectors.mod imports monitor.config.AppConfig",
        ),
        ("storage", "import detectors.base\n", "storage.mod imports detectors.base"),
    ],
)
def test_an_import_against_the_arrows_is_found(
    tmp_path: Path, package: str, source: str, expected: str
) -> None:
    _write(tmp_path, {f"{package}/__init__.py": "", f"{package}/mod.py": source})
    assert forbidden_imports(module_files(tmp_path, (package,))) == [expected]
