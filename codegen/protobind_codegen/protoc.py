"""Run protoc (from grpcio-tools) with the include paths every protobind user needs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2


class ProtoError(Exception):
    """protoc rejected the input; ``str()`` is protoc's ``file:line:col: message`` lines."""


#: Import root of the contracts shipped inside this package (``protobind/v1/options.proto``).
IDL_ROOT = Path(__file__).parent / "idl"
#: Import root of the contract of ``protobind demo`` (``greeter/v1/greeter.proto``).
DEMO_PROTO = Path(__file__).parent / "demo_proto"


def standard_includes() -> list[str]:
    """Well-known types (shipped by grpcio-tools), ``google/api/*.proto`` (googleapis-common-protos)
    and ``protobind/v1/*.proto`` (shipped here)."""
    try:
        import grpc_tools
    except ModuleNotFoundError as exc:
        raise ImportError("code generation needs grpcio-tools: pip install 'protobind[codegen]'") from exc
    includes = [str(Path(grpc_tools.__file__).parent / "_proto")]
    import google.api

    for path in google.api.__path__:
        root = Path(path).parent.parent
        if (root / "google" / "api" / "annotations.proto").exists():
            includes.append(str(root))
            break
    includes.append(str(IDL_ROOT))
    return includes


def find_protos(paths: Iterable[str]) -> list[tuple[Path, Path]]:
    """(include root, file) for every ``.proto`` under ``paths``: a directory is its files' root,
    a file's root is its parent unless an ``-I`` covers it."""
    found: list[tuple[Path, Path]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend((path, f) for f in sorted(path.rglob("*.proto")))
        elif path.is_file():
            found.append((path.parent, path))
        else:
            raise ProtoError(f"{raw}: no such file or directory")
    if not found:
        raise ProtoError("no .proto files found in " + ", ".join(paths))
    return found


def locate_protos(paths: Sequence[str], includes: Sequence[str] = ()) -> tuple[dict[str, Path], list[str]]:
    """The import name of every ``.proto`` under ``paths`` with its file (absolute), and the import
    directories protoc needs to find them as those names: ``includes`` first, then the roots."""
    include_dirs: list[str] = [os.path.abspath(i) for i in includes]
    located: dict[str, Path] = {}
    for root, file in find_protos(paths):
        file_abs = Path(os.path.abspath(file))  # lexical, as protoc sees paths: symlinks stay
        covering = [i for i in include_dirs if file_abs.is_relative_to(i)]
        if covering:
            base = max(covering, key=len)
        else:
            base = os.path.abspath(root)
            include_dirs.append(base)
        located.setdefault(file_abs.relative_to(base).as_posix(), file_abs)
    return located, include_dirs


def compile_protos(
    paths: Sequence[str],
    includes: Sequence[str] = (),
    python_out: str | None = None,
) -> tuple[list[descriptor_pb2.FileDescriptorProto], list[str]]:
    """Compile ``paths``; return every file's descriptor (dependencies included) and the names of
    the files asked for. With ``python_out``, protoc also writes the ``_pb2.py`` modules there."""
    located, include_dirs = locate_protos(paths, includes)
    names = list(located)
    return run_protoc(names, include_dirs, python_out), names


def run_protoc(
    names: Sequence[str], include_dirs: Sequence[str], python_out: str | None = None
) -> list[descriptor_pb2.FileDescriptorProto]:
    """Compile the files ``names`` (import names) found through ``include_dirs``, searched in order and
    followed by :func:`standard_includes`; every file's descriptor with source info, dependencies first."""
    with tempfile.TemporaryDirectory() as tmp:
        descriptor_out = os.path.join(tmp, "descriptors.pb")
        args = [sys.executable, "-m", "grpc_tools.protoc"]
        args += [f"-I{i}" for i in [*include_dirs, *standard_includes()]]
        args += [f"--descriptor_set_out={descriptor_out}", "--include_imports", "--include_source_info"]
        if python_out is not None:
            os.makedirs(python_out, exist_ok=True)
            args += [f"--python_out={python_out}"]
        args += names
        result = subprocess.run(args, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ProtoError(shown(result.stderr.strip() or result.stdout.strip() or "protoc failed"))
        file_set = descriptor_pb2.FileDescriptorSet.FromString(Path(descriptor_out).read_bytes())
    return list(file_set.file)


def display_path(path: str | Path) -> str:
    """A file as protobind's messages show it: relative to the current directory when inside it."""
    try:
        return Path(path).relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


#: The file of a ``file:line:col: message`` line (protoc's and the generator's).
_LOCATED = re.compile(r"^(?P<file>[^\n]+?\.proto):")
#: protoc's complaint about an RPC's type that names something else in the service's scope.
_NOT_A_MESSAGE = re.compile(r'"(?P<name>\w+)" is not a message type\.$')


def shown(text: str, files: Mapping[str, Path] | None = None) -> str:
    """protoc's or the generator's error lines as ``protobind`` prints them: each file shown by
    :func:`display_path` (``files`` maps import names to their files; protoc already names the
    files themselves), with a hint where protoc's own message does not say what to do."""
    lines = []
    hinted: set[str] = set()  # protoc reports a wrong type once per use: the hint goes on the first
    for line in text.splitlines():
        match = _LOCATED.match(line)
        if match is not None:
            name = match["file"]
            file = files.get(name) if files is not None else None
            if file is None and os.path.isabs(name):
                file = Path(name)
            if file is not None:
                hint = _hint(file, line)
                line = display_path(file) + line[match.end("file") :] + ("" if hint in hinted else hint)
                hinted.add(hint)
        lines.append(line)
    return "\n".join(lines)


def _hint(file: Path, line: str) -> str:
    """`rpc OrderPlaced(OrderPlaced)`: inside the service, the name is the RPC, not the message."""
    match = _NOT_A_MESSAGE.search(line)
    if match is None:
        return ""
    name = match["name"]
    try:
        source = file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    if not re.search(rf"\brpc\s+{name}\s*\(", source):
        return ""
    package = re.search(r"^\s*package\s+([\w.]+)\s*;", source, re.MULTILINE)
    full = f".{package[1]}.{name}" if package else f".{name}"
    return (
        f" Inside a service, {name} is the RPC of that name: write the message's full name, {full}, "
        "or rename the RPC."
    )


if __name__ == "__main__":  # the -I flags a protoc or buf user adds to find what `generate` finds
    print("\n".join(f"-I{include}" for include in standard_includes()))
