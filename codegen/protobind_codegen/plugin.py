"""``protoc-gen-protobind``: the same generator as a protoc / buf plugin (``--protobind_out=DIR``).

It writes the ``_pb2.pyi`` stubs and the ``_protobind.py`` modules; run it beside ``--python_out``
(not ``--pyi_out``). The parameter ``no_pyi`` (``--protobind_opt=no_pyi``) leaves the stubs out.
"""

from __future__ import annotations

import sys

from google.protobuf.compiler import plugin_pb2

from .generate import generated_files
from .protoc import ProtoError


def run(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    """Answer one protoc plugin request."""
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    stubs = "no_pyi" not in request.parameter.split(",")
    try:
        for name, content in generated_files(request.proto_file, request.file_to_generate, stubs=stubs):
            response.file.add(name=name, content=content)
    except ProtoError as exc:  # already file:line:col: message
        response.error = str(exc)
    except Exception as exc:  # reported to protoc, which prints it and fails
        response.error = f"protoc-gen-protobind: {exc}"
    return response


def main() -> None:
    """Entry point of the ``protoc-gen-protobind`` console script."""
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(run(request).SerializeToString())


if __name__ == "__main__":
    main()
