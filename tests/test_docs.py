"""The docs agree with the code: docs/architecture.md with the tree, and no doc calls a shipped
feature unbuilt. (Each transport's documented options are checked in test_transport.py.)"""

from __future__ import annotations

import re

from .support import ROOT


def test_architecture_doc_matches_the_tree() -> None:
    """docs/architecture.md: its layer table names every core module, every file path it names
    exists, the file names it says each transport package shares are there, and its line count of
    the worked broker example is near the truth."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    package = ROOT / "runtime" / "protobind"
    layers = doc.split("## Layers", 1)[1].split("```", 2)[1]
    core = {p.name for p in package.glob("*.py")} - {"__init__.py"}
    assert not {name for name in core if name not in layers}, "core modules missing from the layer table"
    for path in set(re.findall(r"\b((?:[a-z_0-9]+/)+[a-z_0-9]+\.py)\b", doc)):
        assert (package / path).is_file() or (ROOT / path).is_file(), f"docs/architecture.md: no {path}"
    transports = next(line for line in layers.splitlines() if line.lstrip().startswith("transports"))
    packages = re.findall(r"\b([a-z]+)/\s", transports)
    files = re.findall(r"`([a-z_]+\.py)`", doc.split("Each transport package", 1)[1].split(". ", 1)[0])
    assert {"grpc", "http", "nats"} <= set(packages) and files
    for directory in packages:
        assert all((package / directory / f).is_file() for f in files), f"{directory}/ lacks one of {files}"
    for example in ("memory/_connection.py", "memory/_stored.py"):
        claimed = int(re.search(rf"`{example}`, about (\d+) lines", doc)[1])  # type: ignore[index]
        actual = len((package / example).read_text().splitlines())
        assert abs(claimed - actual) <= 0.15 * actual, (example, claimed, actual)


def test_architecture_names_every_module() -> None:
    """Every module under runtime/protobind appears in docs/architecture.md: a top-level module by
    its file name in the layer diagram, a package's module by its path (``broker/durable/_names.py``),
    a package by its directory (``broker/durable/``)."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    layers = doc.split("## Layers", 1)[1].split("```", 2)[1]
    package = ROOT / "runtime" / "protobind"
    missing = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if "/" not in relative:
            named = path.name in layers
        elif path.name == "__init__.py":
            named = (
                f"`{relative.removesuffix('__init__.py')}" in doc
                or f" {relative.removesuffix('__init__.py')}" in doc
            )
        else:
            named = re.search(rf"(?<![\w/]){re.escape(relative)}\b", doc) is not None
        if not named:
            missing.append(relative)
    assert missing == [], f"docs/architecture.md does not name {missing}"


def test_docs_call_nothing_built_unbuilt() -> None:
    """A doc that says a shipped feature "is not built yet" sends users away from it."""
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = " ".join(doc.read_text().split())
        for phrase in ("not built yet", "not yet built", "not implemented yet", "not yet implemented"):
            assert phrase not in text, f"{doc.name} says {phrase!r}"
