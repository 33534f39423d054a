"""Typed ``_pb2.pyi`` stubs, written by mypy-protobuf.

Chosen by measurement over protoc's own ``--pyi_out`` (``python -m benchmarks.stubs`` repeats it).
Errors over the test suite's edge corpus (maps, oneofs, optional, nested types, well-known types,
keyword names, enums, repeated, bytes), its ``_protobind.py`` modules and tests/typing_user.py,
which uses every construct; mypy 2.4.1, pyright 1.1.414, types-protobuf 7.35.1, mypy-protobuf
5.1.0, grpcio-tools 1.85.1:

================================  =============  =======  ==============
stubs                             mypy --strict  pyright  pyright strict
================================  =============  =======  ==============
protoc ``--pyi_out``              3              0        25
mypy-protobuf                     0              10       12
mypy-protobuf + header (shipped)  0              0        0
================================  =============  =======  ==============

protoc's stubs type message-typed constructor arguments as a bare ``Mapping`` and end with an
untyped ``**kwargs``; mypy-protobuf's are precise (literal field names for ``HasField`` and
``WhichOneof``, a distinct type per enum). Its only pyright findings are where it disagrees with
types-protobuf (a narrowed ``DESCRIPTOR``, its private ``_EnumTypeWrapper``), switched off by
the one-line header below. Neither declares fields named like Python keywords (``from``): read
and write them with ``getattr``/``setattr``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Sequence

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2

from .protoc import ProtoError

#: First line of every stub: rules where mypy-protobuf's output and types-protobuf disagree.
PYRIGHT_HEADER = "# pyright: reportIncompatibleVariableOverride=false, reportPrivateUsage=false\n"


def typed_stubs(
    files: Sequence[descriptor_pb2.FileDescriptorProto], to_generate: Sequence[str]
) -> list[tuple[str, str]]:
    """(file name, content) of the ``_pb2.pyi`` of every file in ``to_generate``.

    Runs mypy-protobuf's protoc plugin with the descriptors protoc already produced, so
    ``protobind generate`` and ``protoc-gen-protobind`` write the same stubs.
    """
    if importlib.util.find_spec("mypy_protobuf") is None:
        raise ImportError("typed stubs need mypy-protobuf: pip install 'protobind[codegen]'")
    request = plugin_pb2.CodeGeneratorRequest(
        file_to_generate=list(to_generate), proto_file=list(files), parameter="quiet"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy_protobuf.main"],
        input=request.SerializeToString(),
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise ProtoError("mypy-protobuf failed: " + result.stderr.decode(errors="replace").strip())
    response = plugin_pb2.CodeGeneratorResponse.FromString(result.stdout)
    if response.error:
        raise ProtoError(f"mypy-protobuf: {response.error}")
    return [(f.name, PYRIGHT_HEADER + f.content) for f in response.file]
