"""The folders' import rules (each services/<folder>/__init__ says them; docs/architecture.md
draws them): a folder imports only the layers below it, and no module imports itself back."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SERVICES = Path(__file__).resolve().parent.parent / "services"
# Lowest first; a folder may import its own modules and every layer before it.
LAYERS = [
    {"errors"},
    {"config"},
    {"platform"},
    {"alerts"},
    {"providers"},
    {"resilience"},
    {"routing"},
    {"capacity"},
    {"ledger"},
    {"api"},
    {"console"},
    {"gateway"},
    {"app"},
    {"dev"},
    {"cli"},  # the launcher: starts every process, so it may import every layer
]
# Imports that break the layering: none today. Listed here, if one must be, so that no new one
# creeps in, and checked to still exist so that a fixed one is struck off.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(SERVICES.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "services"
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    return -1  # services/__init__ (the version)


def imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    modules = {module_name(p) for p in SERVICES.rglob("*.py")}
    for path in SERVICES.rglob("*.py"):
        source = module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("services")
            ):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    graph[source].add(target if target in modules else node.module)
            elif isinstance(node, ast.Import):
                graph[source].update(a.name for a in node.names if a.name.startswith("services"))
    return graph


def test_every_folder_imports_only_the_layers_below_it() -> None:
    """No import goes up a layer, except the listed ones (which must still exist)."""
    upward = {
        (source, target)
        for source, targets in imports().items()
        for target in targets
        if layer_of(target) > layer_of(source)
    }
    assert upward - KNOWN_EXCEPTIONS == set()
    assert KNOWN_EXCEPTIONS - upward == set(), "fixed: strike these off KNOWN_EXCEPTIONS"


def test_no_import_cycles() -> None:
    """Following imports from any module never leads back to it."""
    graph = imports()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in graph.get(module, ()):
            assert state.get(target) != 1, " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in list(graph):
        if module not in state:
            visit(module, [])
