"""``protobind generate``: protoc's ``_pb2.py``/``_pb2.pyi`` plus our ``_protobind.py`` per file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .model import build
from .protoc import compile_protos
from .render import GENERATOR_VERSION, render


def generate(paths: Sequence[str], out: str, includes: Sequence[str] = ()) -> list[Path]:
    """Generate code for every ``.proto`` under ``paths`` into ``out``; return the files written.

    Raises :class:`~protobind_codegen.protoc.ProtoError` when protoc rejects the input.
    """
    files, names = compile_protos(paths, includes, python_out=out)
    written = [Path(out) / (name[: -len(".proto")] + "_pb2.py") for name in names]
    for model in build(files, names, GENERATOR_VERSION):
        target = Path(out) / model.output_name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(model))
        written.append(target)
    return written
