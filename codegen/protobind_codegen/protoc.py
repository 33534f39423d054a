"""Run protoc (from grpcio-tools) with the include paths every protobind user needs."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2


class ProtoError(Exception):
    """protoc rejected the input; ``str()`` is protoc's ``file:line:col: message`` lines."""


#: Import root of the contracts shipped inside this package (``protobind/v1/options.proto``).
IDL_ROOT = Path(__file__).parent / "idl"


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


def compile_protos(
    paths: Sequence[str],
    includes: Sequence[str] = (),
    python_out: str | None = None,
) -> tuple[list[descriptor_pb2.FileDescriptorProto], list[str]]:
    """Compile ``paths``; return every file's descriptor (dependencies included) and the names of
    the files asked for. With ``python_out``, protoc also writes the ``_pb2.py`` modules there."""
    protos = find_protos(paths)
    include_dirs: list[str] = [os.path.abspath(i) for i in includes]
    names: list[str] = []
    for root, file in protos:
        file_abs = Path(os.path.abspath(file))  # lexical, as protoc sees paths: symlinks stay
        covering = [i for i in include_dirs if file_abs.is_relative_to(i)]
        if covering:
            base = max(covering, key=len)
        else:
            base = os.path.abspath(root)
            include_dirs.append(base)
        names.append(file_abs.relative_to(base).as_posix())
    names = list(dict.fromkeys(names))
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
            raise ProtoError(result.stderr.strip() or result.stdout.strip() or "protoc failed")
        file_set = descriptor_pb2.FileDescriptorSet.FromString(Path(descriptor_out).read_bytes())
    return list(file_set.file)


if __name__ == "__main__":  # the -I flags a protoc or buf user adds to find what `generate` finds
    print("\n".join(f"-I{include}" for include in standard_includes()))
