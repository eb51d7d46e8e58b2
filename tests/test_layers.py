"""The layers of docs/design.md, held to the code: no import cycle among streamkit's modules,
and each core layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "streamkit"

#: The core's layers, bottom first (docs/design.md); a module may import only its own layer's
#: modules and those of the layers below.
LAYERS = [
    {"_checks", "_ends", "_exceptions", "_options"},
    {"_json", "_sse", "_sse_decoder", "_backoff"},
    {"_buffer"},
    {
        "_loop",
        "_logs",
        "_registry",
        "_faults",
        "_connections",
        "_server_shutdown",
        "_sender",
        "_runtime",
    },
    {"_responses"},
]


def _imports(path: Path) -> set[str]:
    """The streamkit modules *path* imports, at any depth of the file (``TYPE_CHECKING``
    blocks and function bodies included: a cycle hidden there is still a cycle)."""
    package = path.parent.relative_to(PACKAGE.parent).as_posix().replace("/", ".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = f"{base}.{node.module}" if node.module else base
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("streamkit"):
            found.add(node.module or "")
    return found


def _graph() -> dict[str, set[str]]:
    modules = {
        path.relative_to(PACKAGE.parent).with_suffix("").as_posix().replace("/", "."): path
        for path in PACKAGE.rglob("*.py")
    }
    names = {name.removesuffix(".__init__") for name in modules}
    return {
        name.removesuffix(".__init__"): {target for target in _imports(path) if target in names}
        for name, path in modules.items()
    }


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = _graph()
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycle = [*trail[trail.index(target) :], module, target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*trail, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


@pytest.mark.parametrize("level", range(len(LAYERS)))
def test_a_core_layer_imports_only_the_layers_below(level: int) -> None:
    graph = _graph()
    allowed = {f"streamkit.{name}" for layer in LAYERS[: level + 1] for name in layer}
    for name in sorted(LAYERS[level]):
        reached = {target for target in graph[f"streamkit.{name}"] if target != "streamkit"}
        assert reached <= allowed, f"streamkit.{name} imports {sorted(reached - allowed)}"
