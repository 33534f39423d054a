"""``protobind generate``: protoc's ``_pb2.py``, mypy-protobuf's ``_pb2.pyi`` and our ``_protobind.py``."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2

from .model import build
from .protoc import ProtoError, locate_protos, run_protoc, shown
from .render import GENERATOR_VERSION, render
from .stubs import typed_stubs


def generated_files(
    files: Sequence[descriptor_pb2.FileDescriptorProto], names: Sequence[str], *, stubs: bool = True
) -> list[tuple[str, str]]:
    """(file name, content) of the ``_pb2.pyi`` stubs and the ``_protobind.py`` modules of ``names``.

    Raises :class:`~protobind_codegen.protoc.ProtoError` for a contract the runtime cannot serve.
    """
    models = build(files, names, GENERATOR_VERSION)  # checks the contract before anything is made
    out = typed_stubs(files, names) if stubs else []
    return out + [(model.output_name, render(model)) for model in models]


def generate(paths: Sequence[str], out: str, includes: Sequence[str] = ()) -> list[Path]:
    """Generate code for every ``.proto`` under ``paths`` into ``out``; return the files written.

    Raises :class:`~protobind_codegen.protoc.ProtoError` when the input is rejected; nothing is
    written then.
    """
    located, include_dirs = locate_protos(paths, includes)
    names = list(located)
    with tempfile.TemporaryDirectory() as tmp:
        files = run_protoc(names, include_dirs, python_out=tmp)
        try:
            produced = generated_files(files, names)
        except ProtoError as exc:  # it names files by import name: show the files themselves
            raise ProtoError(shown(str(exc), located)) from None
        modules = [(p.relative_to(tmp).as_posix(), p.read_text()) for p in sorted(Path(tmp).rglob("*.py"))]
    written = []
    for name, content in modules + produced:
        target = Path(out) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        written.append(target)
    return written
