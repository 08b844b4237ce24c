"""The package's import graph: layers that point down, no cycle, no function-level import.

Read from the source with :mod:`ast` (what Python would import, before it runs),
so a cycle hidden behind a late import inside a function is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import django_readonly_pool

PACKAGE = "django_readonly_pool"
# The package as imported (a checkout or an installed wheel): the graph under test.
ROOT = Path(django_readonly_pool.__file__).resolve().parent
OPTIONAL = {"prometheus_client"}  # imported where used, so the package works without them

# Lower numbers are lower layers: a module imports only from layers below its own,
# or from its own component (the modules of one package, such as pool/).
LAYERS = {
    "errors": 0, "interrupt": 0,
    "conf": 1, "guard": 1, "replication": 1,
    "events": 2, "aliases": 2,
    "bridge": 3,
    "pool": 4, "health": 4,  # they talk through events, never import each other
    "router": 5,
    "compiled": 5,
    "backend": 6, "fastlane": 6, "materialise": 6,
    "dispatch": 7,
    "orm": 8,
    # integrations, wired in AppConfig.ready(): they may use each other (no cycle)
    "metrics": 9, "checks": 9, "asgi": 9, "middleware": 9,
    "views": 10, "diagnose": 10, "testing": 10,
    "management": 11, "apps": 11, "__init__": 12,
}
TOP = 9  # from here up, modules of the same layer may import each other


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package's modules that *node* imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE]
    if node.level:
        base = module.split(".")
        if not is_package:
            base.pop()
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != PACKAGE:
        return []
    found = []
    for alias in node.names:  # "from . import bridge" imports a module
        candidate = f"{target}.{alias.name}"
        found.append(candidate if candidate in MODULES else target)
    return found


def _imports(module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(the package's modules imported at module level, function-level imports as (line, name))."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    top: set[str] = set()
    nested: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if in_function:
                    name = ("." * child.level + (child.module or "") if isinstance(child, ast.ImportFrom)
                            else child.names[0].name)
                    nested.append((child.lineno, name))
                else:
                    top.update(_resolve(module, is_package, child))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    top.discard(module)
    return top, nested


GRAPH = {module: _imports(module)[0] for module in MODULES}


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer() -> None:
    assert sorted({_component(m) for m in MODULES} - set(LAYERS)) == []


def test_no_function_level_imports() -> None:
    found = []
    for module, path in MODULES.items():
        for line, name in _imports(module)[1]:
            if name.split(".")[0] not in OPTIONAL:
                found.append(f"{path.relative_to(ROOT.parent)}:{line} imports {name}")
    assert found == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components: every one of two or more modules is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                cycles.append(sorted(members))

    for module in graph:
        if module not in index:
            connect(module)
    return cycles


def test_no_import_cycle() -> None:
    assert _cycles(GRAPH) == []


def test_a_late_import_that_closes_a_cycle_is_found() -> None:
    """What the package had: router -> orm at module level, orm -> router inside a function."""
    late = ast.parse("def f():\n    from .router import current_read_alias\n").body[0]
    assert isinstance(late, ast.FunctionDef)
    node = late.body[0]
    assert isinstance(node, ast.ImportFrom)
    graph = {**GRAPH, f"{PACKAGE}.aliases": {*GRAPH[f"{PACKAGE}.aliases"],
                                             *_resolve(f"{PACKAGE}.aliases", False, node)}}
    assert any(f"{PACKAGE}.router" in cycle and f"{PACKAGE}.aliases" in cycle for cycle in _cycles(graph))


def test_imports_point_down() -> None:
    upward = []
    for module, targets in GRAPH.items():
        mine = LAYERS[_component(module)]
        for target in targets:
            theirs = LAYERS[_component(target)]
            same_component = _component(target) == _component(module)
            if same_component or theirs < mine or (theirs == mine and mine >= TOP):
                continue
            upward.append(f"{module} (layer {mine}) imports {target} (layer {theirs})")
    assert upward == []


def test_pools_and_health_do_not_import_each_other() -> None:
    pools = {m for m in MODULES if _component(m) == "pool"}
    assert not any(t in pools for t in GRAPH[f"{PACKAGE}.health"])
    assert not any(f"{PACKAGE}.health" in GRAPH[m] for m in pools)


def test_the_bridge_knows_nothing_of_routing() -> None:
    assert GRAPH[f"{PACKAGE}.bridge"] == set()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= 420, f"{module}: {lines} lines; split it along its concepts"
