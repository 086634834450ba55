"""The kernel's modules import each other without a cycle, and only at module level:
each module can be read (and loaded) after the ones it names, never halfway through."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import aosk.kernel

KERNEL = Path(aosk.kernel.__file__).parent
PACKAGE = "aosk.kernel"


def _module(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


def _kernel_imports(node: ast.AST, modules: set[str]) -> set[str]:
    """The kernel modules an import statement names (``from aosk.kernel import x`` names
    submodule ``x`` when there is one, else the package)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.startswith(PACKAGE)}
    if isinstance(node, ast.ImportFrom) and node.module is not None and node.module.startswith(PACKAGE):
        if node.module != PACKAGE:
            return {node.module}
        return {f"{PACKAGE}.{a.name}" if f"{PACKAGE}.{a.name}" in modules else PACKAGE for a in node.names}
    return set()


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    paths = {_module(p): p for p in KERNEL.glob("*.py")}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    local: list[str] = []
    for name, path in paths.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = set().union(*(_kernel_imports(n, modules) for n in tree.body)) - {name}
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                local += [f"{name}.{fn.name}" for n in ast.walk(fn) if _kernel_imports(n, modules)]
    return graph, local


def test_kernel_modules_import_each_other_without_a_cycle() -> None:
    graph, _ = _graph()
    graph.pop(PACKAGE)  # the package re-exports every module; no module imports it for a name
    assert all(PACKAGE not in deps for deps in graph.values()), graph
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise AssertionError(f"kernel modules import in a cycle: {' -> '.join(e.args[1])}") from e
    assert len(order) == len(graph)


def test_no_kernel_module_imports_another_inside_a_function() -> None:
    _, local = _graph()
    assert local == [], f"function-level kernel imports (hide a cycle; import at module level): {local}"
