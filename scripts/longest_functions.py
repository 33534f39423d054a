"""The longest functions under a folder: lines, cyclomatic complexity and nesting depth.

    python scripts/longest_functions.py                      # runtime/protobind, the 20 longest
    python scripts/longest_functions.py runtime/protobind/broker --top 10 --over 60

Lines run from ``def`` to the last line of the body (docstring and comments included); the
complexity counts one per function plus one per branch (``if``/``elif``, loops, ``except``, each
``and``/``or``, conditional expressions, comprehension conditions, ``match`` cases); the nesting is
the deepest stack of ``if``/``for``/``while``/``try``/``with``/``match`` blocks in the body (nested
functions count on their own).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

_BLOCKS = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.With, ast.AsyncWith, ast.Match)
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _complexity(node: ast.AST) -> int:
    count = 1
    for child in _own_nodes(node):
        if isinstance(child, (ast.If, ast.For, ast.AsyncFor, ast.While, ast.IfExp, ast.ExceptHandler)):
            count += 1
        elif isinstance(child, ast.BoolOp):
            count += len(child.values) - 1
        elif isinstance(child, ast.comprehension):
            count += len(child.ifs)
        elif isinstance(child, ast.match_case):
            count += 1
    return count


def _own_nodes(node: ast.AST) -> list[ast.AST]:
    """The nodes of a function's body, without those of the functions defined inside it."""
    found: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(node))
    while stack:
        child = stack.pop()
        if isinstance(child, (*_FUNCTIONS, ast.Lambda, ast.ClassDef)):
            continue
        found.append(child)
        stack.extend(ast.iter_child_nodes(child))
    return found


def _nesting(node: ast.AST, depth: int = 0) -> int:
    deepest = depth
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (*_FUNCTIONS, ast.Lambda, ast.ClassDef)):
            continue
        inner = depth + 1 if isinstance(child, _BLOCKS) else depth
        deepest = max(deepest, _nesting(child, inner))
    return deepest


def functions(root: Path) -> list[tuple[int, int, int, str]]:
    """(lines, complexity, nesting, where) of every function under ``root``."""
    rows = []
    for path in sorted(root.rglob("*.py")):
        if "_pb2" in path.name or "/v1/" in path.as_posix() or "conformance" in path.parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        parents: dict[ast.AST, ast.AST] = {}
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                parents[child] = parent
        for node in ast.walk(tree):
            if not isinstance(node, _FUNCTIONS):
                continue
            name, up = node.name, parents.get(node)
            while up is not None and not isinstance(up, ast.Module):
                if isinstance(up, (*_FUNCTIONS, ast.ClassDef)):
                    name = f"{up.name}.{name}"
                up = parents.get(up)
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            rows.append((lines, _complexity(node), _nesting(node), f"{path}:{node.lineno} {name}"))
    return sorted(rows, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", nargs="?", default="runtime/protobind")
    parser.add_argument("--top", type=int, default=20, help="how many to list (0: all)")
    parser.add_argument("--over", type=int, default=0, help="only those over this many lines")
    args = parser.parse_args()
    rows = [row for row in functions(Path(args.root)) if row[0] > args.over]
    print(f"{'lines':>5} {'cc':>3} {'nest':>4}  function")
    for lines, complexity, nesting, where in rows[: args.top or None]:
        print(f"{lines:5} {complexity:3} {nesting:4}  {where}")


if __name__ == "__main__":
    main()
