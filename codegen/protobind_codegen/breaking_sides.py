"""The two sides of ``protobind breaking``: which files each version is, and where its imports come from.

Both versions of a contract use the same import names (``shop/v1/shop.proto`` in each), so the two
must never share a protoc search path: a file found through the wrong side's directory makes NEW
look like OLD and turns a breaking change into "compatible". Each side is therefore compiled alone:

- its search path starts with its own roots (for each input file, the deepest ``-I`` that holds it
  and none of the other side's files, else its directory argument or, for a file, its directory);
- then the ``-I`` directories, minus those inside the other side's roots or files (so ``-I OLD`` and
  ``-I NEW`` each serve only their own side), then the standard includes;
- an ``-I`` that belongs to neither side but holds a file under one of the inputs' import names would
  shadow that side's own file for an import (a copy of the other version, typically): an error;
- after compiling, every loaded file is traced to the directory protoc took it from, and a file from
  the other side's tree is an error rather than a silent mix.

``git_side`` materialises the ``.proto`` files of a git revision in a temporary directory so that a
CI job can compare the working tree with the last release (``--against git:v1.0``).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2

from .protoc import ProtoError, display_path, find_protos, run_protoc

__all__ = ["LoadedSide", "Side", "git_side", "load_sides"]


@dataclass(frozen=True)
class Side:
    """One version of a contract: ``paths`` (``.proto`` files or directories) and its ``-I`` dirs."""

    label: str
    paths: tuple[str, ...]
    includes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedSide:
    """A compiled side: every file's descriptor (dependencies included) and its inputs by import name."""

    label: str
    files: list[descriptor_pb2.FileDescriptorProto]
    inputs: dict[str, Path]
    roots: tuple[Path, ...]

    def display(self, name: str) -> str:
        """The path to show for the file imported as ``name`` (relative to the current directory when
        inside it); a name this side lacks is shown where it would be under the first root."""
        return display_path(self.inputs.get(name) or self.roots[0] / name)


@dataclass
class _Plan:
    side: Side
    entries: list[tuple[Path, Path]]  # (root, file), both resolved
    trees: list[Path]  # directories and files that are this side's alone

    @property
    def roots(self) -> list[Path]:
        return list(dict.fromkeys(root for root, _ in self.entries))

    @property
    def names(self) -> dict[str, Path]:
        return {file.relative_to(root).as_posix(): file for root, file in self.entries}


def _inside(path: Path, trees: Sequence[Path]) -> Path | None:
    return next((tree for tree in trees if path == tree or path.is_relative_to(tree)), None)


def _files_of(side: Side) -> list[tuple[Path, Path]]:
    """(default root, file) for every input file of ``side``: its directory argument, or its parent."""
    found = []
    for raw in side.paths:
        try:
            found += [(root.resolve(), file.resolve()) for root, file in find_protos([raw])]
        except ProtoError as exc:
            raise ValueError(f"{side.label}: {exc}") from None
    return found


def _plan(side: Side, found: Sequence[tuple[Path, Path]], other_files: Sequence[Path]) -> _Plan:
    """Each input's root: the deepest ``-I`` holding it and none of the other side's files, else
    its default root; the side's trees are its arguments and the ``-I`` dirs chosen as roots."""
    includes = [Path(i).resolve() for i in side.includes]
    entries: list[tuple[Path, Path]] = []
    trees = [Path(raw).resolve() for raw in side.paths]
    for default, file in found:
        covering = [
            i
            for i in includes
            if file.is_relative_to(i) and not any(o.is_relative_to(i) for o in other_files)
        ]
        root = max(covering, key=lambda d: len(d.parts)) if covering else default
        trees += [root] if covering else []
        entries.append((root, file))
    return _Plan(side, entries, trees)


def _search_path(plan: _Plan, foreign: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(protoc's -I order for ``plan``, the ``-I`` dirs that belong to neither side)."""
    search = plan.roots
    neutral = []
    for include in (Path(i).resolve() for i in plan.side.includes):
        if include in search or _inside(include, foreign):
            continue
        search.append(include)
        if not _inside(include, plan.trees):
            neutral.append(include)
    return search, neutral


def _check_shadowing(neutral: Sequence[Path], plans: Sequence[_Plan]) -> None:
    for include in neutral:
        for plan in plans:
            for name, file in plan.names.items():
                candidate = include / name
                if candidate.is_file() and candidate.resolve() != file:
                    raise ValueError(
                        f"include path {include} holds {name}, the import name of {plan.side.label}'s "
                        f"{file}: it would shadow that file; drop -I {include} (each side is resolved "
                        "against its own directories)"
                    )


def _origin(name: str, search: Sequence[Path]) -> Path | None:
    """The file protoc took for import ``name``: the first search directory that has it."""
    return next((d / name for d in search if (d / name).is_file()), None)


def load_sides(old: Side, new: Side) -> tuple[LoadedSide, LoadedSide]:
    """Compile ``old`` and ``new`` each against its own roots; ``ValueError`` when they would mix."""
    old_found, new_found = _files_of(old), _files_of(new)
    plans = (
        _plan(old, old_found, [f for _, f in new_found]),
        _plan(new, new_found, [f for _, f in old_found]),
    )
    same = {f for _, f in old_found} == {f for _, f in new_found}  # a contract against itself
    loaded = []
    for plan, other in ((plans[0], plans[1]), (plans[1], plans[0])):
        foreign = [] if same else other.trees
        for _, file in plan.entries:
            if _inside(file, foreign):
                raise ValueError(f"{plan.side.label} and {other.side.label} overlap: {file} is in both")
        search, neutral = _search_path(plan, foreign)
        _check_shadowing(neutral, plans)
        names = plan.names
        try:
            files = run_protoc(list(names), [str(d) for d in search])
        except ProtoError as exc:
            raise ProtoError(f"{plan.side.label}: {exc}") from None
        for proto in files:
            origin = _origin(proto.name, search)
            if origin is not None and _inside(origin.resolve(), foreign):
                raise ValueError(
                    f"{plan.side.label} would load {proto.name} from {other.side.label}'s files "
                    f"({origin}); give each side its own -I directories"
                )
        loaded.append(LoadedSide(plan.side.label, files, names, tuple(plan.roots)))
    return loaded[0], loaded[1]


def _git(cwd: Path | str, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        result = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, check=False)
    except FileNotFoundError:
        raise ValueError("--against git:REF needs git on PATH") from None
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise ValueError(f"git {args[0]} failed: {message[-1] if message else result.returncode}")
    return result.stdout


@contextmanager
def git_side(ref: str, new: Side) -> Iterator[Side]:
    """The ``.proto`` files of ``new.paths`` (and of its ``-I`` dirs inside the repository) as they were
    at git revision ``ref``, written to a temporary directory for the duration of the block."""
    first = Path(new.paths[0]).resolve()
    start = first if first.is_dir() else first.parent
    if not start.is_dir():
        raise ValueError(f"{new.paths[0]}: no such file or directory")
    try:
        top = Path(_git(start, "rev-parse", "--show-toplevel").decode().strip()).resolve()
    except ValueError:
        raise ValueError(f"{new.paths[0]} is not in a git repository") from None
    try:
        commit = _git(top, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").decode().strip()
    except ValueError:
        raise ValueError(f"git:{ref}: no such revision in {top}") from None

    def in_repo(raw: str) -> str | None:
        path = Path(raw).resolve()
        return path.relative_to(top).as_posix() if path.is_relative_to(top) else None

    paths = [Path(raw).resolve().relative_to(top).as_posix() for raw in new.paths]
    include_rels = {raw: in_repo(raw) for raw in new.includes}
    wanted = list(dict.fromkeys([*paths, *(r for r in include_rels.values() if r is not None)]))
    listing = _git(top, "ls-tree", "-r", "-z", "--full-tree", commit, "--", *wanted)
    blobs: list[tuple[str, str]] = []  # (sha, path)
    for entry in listing.split(b"\0"):
        if not entry:
            continue
        meta, _, name = entry.decode().partition("\t")
        _, kind, sha = meta.split()
        if kind == "blob" and name.endswith(".proto"):
            blobs.append((sha, name))
    present = {name for _, name in blobs}

    def exists(rel: str) -> bool:
        return rel == "." or rel in present or any(n.startswith(rel.rstrip("/") + "/") for n in present)

    for raw, rel in zip(new.paths, paths, strict=True):
        if not exists(rel):
            raise ValueError(f"{raw} has no .proto files at git:{ref}")
    with tempfile.TemporaryDirectory(prefix="protobind-breaking-") as tmp:
        contents = _git(top, "cat-file", "--batch", stdin="".join(f"{sha}\n" for sha, _ in blobs).encode())
        offset = 0
        for _, name in blobs:
            header_end = contents.index(b"\n", offset)
            size = int(contents[offset:header_end].split()[2])
            target = Path(tmp, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(contents[header_end + 1 : header_end + 1 + size])
            offset = header_end + 1 + size + 1
        includes = [
            raw if rel is None else os.path.join(tmp, rel)
            for raw, rel in include_rels.items()
            if rel is None or exists(rel)
        ]
        yield Side(f"git:{ref}", tuple(os.path.join(tmp, rel) for rel in paths), tuple(includes))
