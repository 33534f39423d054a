"""A frozen model of what the templates render, built by pure functions from descriptor protos.

All branching (names, imports, method kinds, docstrings) happens here; the template only prints.
"""

from __future__ import annotations

import keyword
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from google.protobuf import descriptor_pb2

from protobind.method import MethodKind, python_name

# FileDescriptorProto field numbers, for locating comments in SourceCodeInfo paths.
_SERVICE_FIELD = 6
_METHOD_FIELD = 2


@dataclass(frozen=True)
class PyType:
    """A message class as seen from the generated module: ``alias.Outer.Inner``."""

    module_alias: str
    attribute: str

    @property
    def expr(self) -> str:
        return f"{self.module_alias}.{self.attribute}"


@dataclass(frozen=True)
class MethodModel:
    name: str
    python_name: str
    constant: str
    kind: MethodKind
    input: PyType
    output: PyType
    doc: str
    service_full_name: str

    @property
    def doc_literal(self) -> str:
        return docstring(self.doc or f"``{self.service_full_name}/{self.name}``.", " " * 8)


@dataclass(frozen=True)
class ServiceModel:
    name: str
    full_name: str
    constant: str
    descriptor_constant: str
    doc: str
    methods: tuple[MethodModel, ...]

    @property
    def doc_literal(self) -> str:
        text = self.doc or f"Base class of ``{self.full_name}``."
        note = "Subclass it and override the methods; the others answer UNIMPLEMENTED."
        return docstring(f"{text}\n\n{note}", " " * 4)

    @property
    def client_doc_literal(self) -> str:
        return docstring(f"Client of ``{self.full_name}``; takes any ``protobind.Channel``.", " " * 4)


@dataclass(frozen=True)
class Import:
    module: str  # greeter.v1.greeter_pb2
    alias: str

    @property
    def statement(self) -> str:
        package, _, name = self.module.rpartition(".")
        if package:
            return f"from {package} import {name} as {self.alias}"
        return f"import {name} as {self.alias}"


@dataclass(frozen=True)
class FileModel:
    proto_name: str
    output_name: str  # greeter/v1/greeter_protobind.py
    own_alias: str
    imports: tuple[Import, ...]
    services: tuple[ServiceModel, ...]
    generator_version: str


def pb2_module(proto_name: str) -> str:
    """``greeter/v1/greeter.proto`` -> ``greeter.v1.greeter_pb2`` (protoc's Python naming)."""
    base = proto_name[: -len(".proto")] if proto_name.endswith(".proto") else proto_name
    return base.replace("-", "_").replace("/", ".") + "_pb2"


def output_name(proto_name: str) -> str:
    base = proto_name[: -len(".proto")] if proto_name.endswith(".proto") else proto_name
    return base.replace("-", "_") + "_protobind.py"


def _aliases(modules: Sequence[str]) -> dict[str, Import]:
    """Short private aliases (``_greeter_pb2``); the full dotted path spelled out where two clash."""
    short = [m.rpartition(".")[2] for m in modules]
    out = {}
    for module, name in zip(modules, short, strict=False):
        alias = "_" + (name if short.count(name) == 1 else module.replace("_", "__").replace(".", "_"))
        out[module] = Import(module, alias)
    return out


def _constant(*parts: str) -> str:
    return "_".join(python_name(p).rstrip("_").upper() for p in parts)


class TypeIndex:
    """Full message name (``.pkg.Outer.Inner``) -> (defining file, attribute path in its pb2)."""

    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> None:
        self._types: dict[str, tuple[str, str]] = {}
        for file in files:
            prefix = f".{file.package}" if file.package else ""
            self._add(file.name, prefix, "", file.message_type)

    def _add(
        self,
        file_name: str,
        prefix: str,
        attr_prefix: str,
        messages: Iterable[descriptor_pb2.DescriptorProto],
    ) -> None:
        for message in messages:
            attribute = f"{attr_prefix}{message.name}"
            full = f"{prefix}.{message.name}"
            self._types[full] = (file_name, attribute)
            self._add(file_name, full, attribute + ".", message.nested_type)

    def lookup(self, full_name: str) -> tuple[str, str]:
        return self._types[full_name]


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    out: dict[tuple[int, ...], str] = {}
    for location in file.source_code_info.location:
        text = location.leading_comments or location.trailing_comments
        if text.strip():
            out[tuple(location.path)] = _clean_comment(text)
    return out


def _clean_comment(text: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in text.strip("\n").split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(line.rstrip() for line in lines).strip()


def docstring(text: str, indent: str) -> str:
    """A Python docstring literal for ``text`` (escaped), indented for its body."""
    safe = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if safe.endswith('"'):
        safe += " "
    lines = safe.split("\n")
    if len(lines) == 1:
        return f'"""{safe}"""'
    body = "\n".join((indent + line) if line else "" for line in lines[1:])
    return f'"""{lines[0]}\n{body}\n{indent}"""'


def _kind(method: descriptor_pb2.MethodDescriptorProto) -> MethodKind:
    return {
        (False, False): MethodKind.UNARY,
        (False, True): MethodKind.SERVER_STREAMING,
        (True, False): MethodKind.CLIENT_STREAMING,
        (True, True): MethodKind.BIDI_STREAMING,
    }[(method.client_streaming, method.server_streaming)]


def build_file(
    file: descriptor_pb2.FileDescriptorProto, index: TypeIndex, generator_version: str
) -> FileModel:
    """The model of one ``.proto`` file's ``_protobind.py``."""
    own_module = pb2_module(file.name)
    comments = _comments(file)
    referenced = [own_module]
    for service in file.service:
        for method in service.method:
            for type_name in (method.input_type, method.output_type):
                module = pb2_module(index.lookup(type_name)[0])
                if module not in referenced:
                    referenced.append(module)
    imports = _aliases(referenced)

    def py_type(full_name: str) -> PyType:
        defining_file, attribute = index.lookup(full_name)
        return PyType(imports[pb2_module(defining_file)].alias, attribute)

    services = []
    for s_index, service in enumerate(file.service):
        full_name = f"{file.package}.{service.name}" if file.package else service.name
        methods = []
        for m_index, method in enumerate(service.method):
            methods.append(
                MethodModel(
                    name=method.name,
                    python_name=python_name(method.name),
                    constant=_constant(service.name, method.name),
                    kind=_kind(method),
                    input=py_type(method.input_type),
                    output=py_type(method.output_type),
                    doc=comments.get((_SERVICE_FIELD, s_index, _METHOD_FIELD, m_index), ""),
                    service_full_name=full_name,
                )
            )
        services.append(
            ServiceModel(
                name=service.name,
                full_name=full_name,
                constant=_constant(service.name) + "_SERVICE_INFO",
                descriptor_constant="_" + _constant(service.name) + "_DESCRIPTOR",
                doc=comments.get((_SERVICE_FIELD, s_index), ""),
                methods=tuple(methods),
            )
        )
    return FileModel(
        proto_name=file.name,
        output_name=output_name(file.name),
        own_alias=imports[own_module].alias,
        imports=tuple(sorted(imports.values(), key=lambda i: i.module)),
        services=tuple(services),
        generator_version=generator_version,
    )


def build(
    files: Sequence[descriptor_pb2.FileDescriptorProto], to_generate: Iterable[str], generator_version: str
) -> list[FileModel]:
    """Models for the files named in ``to_generate`` that declare at least one service."""
    index = TypeIndex(files)
    by_name = {f.name: f for f in files}
    wanted = [by_name[name] for name in to_generate]
    return [build_file(f, index, generator_version) for f in wanted if f.service]


def is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)
