"""No import cycle among protobind's modules: each layer imports only the layers below it.

The graph is read from the source (ast), not from a running interpreter, so it holds every import
of a module wherever it is written: at module level, under ``if TYPE_CHECKING:`` (a cycle there is
a cycle in the design, whatever it costs at run time) and inside functions (a deferred import
still makes the importer depend on the imported). Only protobind's own modules are nodes: a
function that imports a transport's library or OpenTelemetry when first called adds no edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .support import ROOT

PACKAGE = ROOT / "runtime" / "protobind"


def _modules() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, at any depth (functions, classes, ``if``, ``try``)."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph() -> dict[str, set[str]]:
    """Module -> the protobind modules it imports anywhere in its source (``from . import x`` of a
    submodule counts as importing that submodule, of a name as importing the package)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name.split(".") if is_package else name.split(".")[:-1]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = alias.name
                    while target and target not in modules:
                        target = target.rpartition(".")[0]
                    if target:
                        edges.add(target)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    if f"{target}.{alias.name}" in modules:
                        edges.add(f"{target}.{alias.name}")
                    elif target in modules:
                        edges.add(target)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or ``None``."""
    done: set[str] = set()
    for start in sorted(graph):
        path: list[str] = []
        on_path: set[str] = set()
        stack = [(start, iter(sorted(graph[start])))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, edges = stack[-1]
            following = next(edges, None)
            if following is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif following in on_path:
                return [*path[path.index(following) :], following]
            elif following not in done:
                stack.append((following, iter(sorted(graph[following]))))
                path.append(following)
                on_path.add(following)
    return None


def test_the_graph_sees_type_checking_deferred_and_relative_imports() -> None:
    graph = import_graph()
    assert "protobind.endpoints" in graph["protobind.transport"]  # under TYPE_CHECKING
    assert "protobind.http._server" in graph["protobind.http"]  # inside asgi_app()
    assert "protobind.options" in graph["protobind.telemetry"]  # inside a method
    assert "protobind.broker.base" in graph["protobind.nats._connection"]  # from ..broker.base import
    assert "protobind._version" in graph["protobind"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
