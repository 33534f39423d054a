"""protobind's code generator.

``.proto`` -> ``_pb2.py`` + ``_pb2.pyi`` (protoc) + ``_protobind.py`` (ours)."""

__version__ = "0.1.0"
