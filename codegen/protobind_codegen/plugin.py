"""``protoc-gen-protobind``: the same generator as a protoc / buf plugin (``--protobind_out=DIR``).

It writes only the ``_protobind.py`` modules; run it beside ``--python_out`` (and ``--pyi_out``).
"""

from __future__ import annotations

import sys

from google.protobuf.compiler import plugin_pb2

from .model import build
from .render import GENERATOR_VERSION, render


def run(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    try:
        for model in build(list(request.proto_file), list(request.file_to_generate), GENERATOR_VERSION):
            response.file.add(name=model.output_name, content=render(model))
    except Exception as exc:  # reported to protoc, which prints it and fails
        response.error = f"protoc-gen-protobind: {exc}"
    return response


def main() -> None:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(run(request).SerializeToString())


if __name__ == "__main__":
    main()
