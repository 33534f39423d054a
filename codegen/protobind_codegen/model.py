"""A frozen model of what the templates render, built by pure functions from descriptor protos.

All branching (names, imports, method kinds, options, docstrings) happens here; the template only
prints. Each generated class reads one :class:`Signature` per method, so a new class (another
client flavour) is a new field on :class:`MethodModel` and a new entry in
:attr:`ServiceModel.clients` (the async and the blocking client share one template loop).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from google.protobuf import descriptor_pb2, duration_pb2

from protobind._schemas import WELL_KNOWN, Comments, encode_comments
from protobind.method import GENERATED_CODE_API, MethodKind, python_name
from protobind.v1 import options_pb2

from .protoc import ProtoError

# FileDescriptorProto / ServiceDescriptorProto / MethodDescriptorProto field numbers, for
# SourceCodeInfo paths (comments and error locations).
_SERVICE_FIELD = 6
_METHOD_FIELD = 2
_OPTIONS_FIELD = 4

#: Line length of generated code (the project's ruff setting).
LINE_LENGTH = 110

#: The ``protobind.Channel`` method that makes a call of each kind.
CHANNEL_CALL = {
    MethodKind.UNARY: "unary",
    MethodKind.SERVER_STREAMING: "server_stream",
    MethodKind.CLIENT_STREAMING: "client_stream",
    MethodKind.BIDI_STREAMING: "bidi_stream",
}

_EMPTY = ".google.protobuf.Empty"


@dataclass(frozen=True)
class PyType:
    """A message class as seen from the generated module: ``alias.Outer.Inner``."""

    module_alias: str
    attribute: str

    @property
    def expr(self) -> str:
        return f"{self.module_alias}.{self.attribute}"


@dataclass(frozen=True)
class Signature:
    """How one RPC is spelled in one generated class.

    ``call_prefix`` and ``channel_call`` form a client's body (async and blocking alike):
    ``{call_prefix}self._channel.{channel_call}(CONSTANT, {param}, timeout, metadata, call)``.
    """

    define: str  # "async def" or "def"
    param: str  # "request" or "requests"
    param_type: str
    return_type: str
    call_prefix: str = ""
    channel_call: str = ""


@dataclass(frozen=True)
class MethodModel:
    name: str
    python_name: str
    constant: str
    kind: MethodKind
    input: PyType
    output: PyType
    oneway: bool
    durable: bool
    doc: str
    service_full_name: str
    handler: Signature  # in the base class users implement
    client: Signature  # in the async client
    sync_client: Signature  # in the blocking client

    @property
    def doc_literal(self) -> str:
        return docstring(self.doc or f"``{self.service_full_name}/{self.name}``.", " " * 8)


@dataclass(frozen=True)
class ClientModel:
    """One generated client class: its name, the channel it takes, and each method's signature."""

    class_name: str
    channel_type: str
    doc_literal: str
    methods: tuple[tuple[MethodModel, Signature], ...]


@dataclass(frozen=True)
class ServiceModel:
    name: str
    full_name: str
    base_class: str  # GreeterService; a buf-style TodoService stays TodoService
    client_class: str  # GreeterClient, TodoServiceClient
    sync_client_class: str  # GreeterSyncClient, TodoServiceSyncClient
    constant: str  # GREETER_SERVICE_INFO, TODO_SERVICE_INFO
    descriptor_constant: str
    doc: str
    methods: tuple[MethodModel, ...]
    #: the proto comments the served documents use (``protobind._schemas.encode_comments``), or ""
    comments: str = ""

    @property
    def comments_constant(self) -> str:
        return self.descriptor_constant.removesuffix("_DESCRIPTOR") + "_COMMENTS"

    @property
    def comments_literal(self) -> str:
        """The assignment of :attr:`comments`, laid out as ruff format leaves it: one line when it
        fits, else parenthesized, in pieces too long to be joined."""
        one = f'{self.comments_constant} = "{self.comments}"'
        if len(one) <= LINE_LENGTH:
            return one
        room = LINE_LENGTH - 10  # indent and quotes; two pieces never fit on one line
        text = self.comments
        pieces = [text] if len(text) <= room + 4 else [text[i : i + room] for i in range(0, len(text), room)]
        return f"{self.comments_constant} = (\n" + "".join(f'    "{p}"\n' for p in pieces) + ")"

    @property
    def doc_literal(self) -> str:
        text = self.doc or f"Base class of ``{self.full_name}``."
        note = "Subclass it and override the methods; the others answer UNIMPLEMENTED."
        return docstring(f"{text}\n\n{note}", " " * 4)

    @property
    def generated_names(self) -> tuple[str, ...]:
        """The module-level names this service generates besides its method constants (checked
        for collisions; a new generated class belongs here)."""
        return (
            self.base_class,
            self.client_class,
            self.sync_client_class,
            self.constant,
            self.descriptor_constant,
            *([self.comments_constant] if self.comments else []),
        )

    @property
    def methods_literal(self) -> str:
        """The tuple of method constants, laid out as ruff format would (an argument, indented 4)."""
        constants = [m.constant for m in self.methods]
        if len(constants) < 2:
            return "(" + "".join(f"{c}," for c in constants) + ")"
        return "(\n" + "".join(f"        {c},\n" for c in constants) + "    )"

    @property
    def client_doc_literal(self) -> str:
        return docstring(f"Client of ``{self.full_name}``; takes any ``protobind.Channel``.", " " * 4)

    @property
    def clients(self) -> tuple[ClientModel, ...]:
        """The async client and the blocking one: one class each, the same methods."""
        sync_doc = (
            f"Blocking client of ``{self.full_name}``; takes a ``protobind.SyncChannel``.\n\n"
            "Streams are iterators; request streams may be any iterable."
        )
        return (
            ClientModel(
                self.client_class,
                "protobind.Channel",
                self.client_doc_literal,
                tuple((m, m.client) for m in self.methods),
            ),
            ClientModel(
                self.sync_client_class,
                "protobind.SyncChannel",
                docstring(sync_doc, " " * 4),
                tuple((m, m.sync_client) for m in self.methods),
            ),
        )


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
    # Import blocks in isort's order (after __future__): standard library, other packages, protobind.
    stdlib_imports: tuple[str, ...]
    imports: tuple[str, ...]
    protobind_imports: tuple[str, ...]
    services: tuple[ServiceModel, ...]
    generator_version: str
    api_version: int = GENERATED_CODE_API

    @property
    def doc_literal(self) -> str:
        return docstring(f"protobind service stubs for ``{self.proto_name}``.", "")


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


def _stem(service: str, siblings: Iterable[str]) -> str:
    """The name generated names are built from: a buf-style ``TodoService`` drops its suffix
    (``TodoService``, ``TODO_SERVICE_INFO``), unless a service ``Todo`` in the same file claims
    those names; then it keeps it (``TodoServiceService``)."""
    suffix = "Service"
    if service.endswith(suffix) and len(service) > len(suffix):
        stem = service[: -len(suffix)]
        if stem not in siblings:
            return stem
    return service


class TypeIndex:
    """Full message name (``.pkg.Outer.Inner``) -> (defining file, attribute path in its pb2)."""

    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> None:
        self._types: dict[str, tuple[str, str]] = {}
        self._messages: dict[str, descriptor_pb2.DescriptorProto] = {}
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
            self._messages[full] = message
            self._add(file_name, full, attribute + ".", message.nested_type)

    def lookup(self, full_name: str) -> tuple[str, str]:
        return self._types[full_name]

    def reachable(self, type_names: Iterable[str]) -> set[str]:
        """The messages and enums (full names, no leading dot) that ``type_names`` are or contain."""
        found: set[str] = set()
        todo = list(type_names)
        while todo:
            name = todo.pop()
            if name.lstrip(".") in found:
                continue
            found.add(name.lstrip("."))
            message = self._messages.get(name)
            if message is not None:  # an enum has nothing inside
                todo += [f.type_name for f in message.field if f.type_name]
        return found


def _service_comments(
    comments: Comments, full_name: str, service: descriptor_pb2.ServiceDescriptorProto, index: TypeIndex
) -> str:
    """The comments of ``service``, its methods and every message and enum they use, with their
    fields (what the OpenAPI and AsyncAPI documents of the service describe)."""
    types = index.reachable(t for m in service.method for t in (m.input_type, m.output_type))
    types -= WELL_KNOWN.keys()  # described by fixed schemas: their comments are never read
    types.discard("google.protobuf.NullValue")
    kept = {
        key: text
        for key, text in comments.text.items()
        if key == full_name
        or key.startswith(full_name + "/")
        or key in types
        or key.rpartition(".")[0] in types
    }
    return encode_comments(kept) if kept else ""


class _Source:
    """Comments and positions of one file's declarations (its SourceCodeInfo)."""

    def __init__(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        self.name = file.name
        self.comments: dict[tuple[int, ...], str] = {}
        self.spans: dict[tuple[int, ...], tuple[int, int]] = {}
        for location in file.source_code_info.location:
            path = tuple(location.path)
            self.spans.setdefault(path, (location.span[0], location.span[1]))
            text = location.leading_comments or location.trailing_comments
            if text.strip():
                self.comments[path] = _clean_comment(text)

    def error(self, path: tuple[int, ...], message: str) -> ProtoError:
        """``file:line:col: message`` at the longest known prefix of ``path``."""
        while path and path not in self.spans:
            path = path[:-1]
        line, col = self.spans.get(path, (0, 0))
        return ProtoError(f"{self.name}:{line + 1}:{col + 1}: {message}")


def _clean_comment(text: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in text.strip("\n").split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(line.rstrip() for line in lines).strip()


def docstring(text: str, indent: str) -> str:
    """A Python docstring literal for ``text`` (escaped), indented for its body, with lines that
    would pass :data:`LINE_LENGTH` wrapped."""
    width = LINE_LENGTH - len(indent) - 6  # room for the quotes on a one-line docstring
    lines = []
    for line in text.split("\n"):
        if len(line) <= width:
            lines.append(line)
        else:
            lead = line[: len(line) - len(line.lstrip())]
            lines += textwrap.wrap(
                line, width, subsequent_indent=lead, break_long_words=False, break_on_hyphens=False
            )
    safe = "\n".join(lines).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if safe.endswith('"'):
        safe += " "
    first, *rest = safe.split("\n")
    if not rest:
        return f'"""{first}"""'
    body = "\n".join((indent + line) if line else "" for line in rest)
    return f'"""{first}\n{body}\n{indent}"""'


def _handler(kind: MethodKind, request: str, response: str) -> Signature:
    return Signature(
        define="def" if kind.server_streams else "async def",
        param="requests" if kind.client_streams else "request",
        param_type=f"AsyncIterator[{request}]" if kind.client_streams else request,
        return_type=f"AsyncIterator[{response}]" if kind.server_streams else response,
    )


def _client(kind: MethodKind, request: str, response: str, oneway: bool) -> Signature:
    if kind.server_streams:
        define, returns, prefix = "def", f"AsyncIterator[{response}]", "return "
    elif oneway:  # the Empty reply is dropped: the caller has nothing to wait for
        define, returns, prefix = "async def", "None", "await "
    else:
        define, returns, prefix = "async def", response, "return await "
    return Signature(
        define=define,
        param="requests" if kind.client_streams else "request",
        param_type=f"protobind.RequestStream[{request}]" if kind.client_streams else request,
        return_type=returns,
        call_prefix=prefix,
        channel_call=CHANNEL_CALL[kind],
    )


def _sync_client(kind: MethodKind, request: str, response: str, oneway: bool) -> Signature:
    if kind.server_streams:
        returns, prefix = f"Iterator[{response}]", "return "
    elif oneway:
        returns, prefix = "None", ""
    else:
        returns, prefix = response, "return "
    return Signature(
        define="def",
        param="requests" if kind.client_streams else "request",
        param_type=f"Iterable[{request}]" if kind.client_streams else request,
        return_type=returns,
        call_prefix=prefix,
        channel_call=CHANNEL_CALL[kind],
    )


def _check_options(
    method: descriptor_pb2.MethodDescriptorProto, kind: MethodKind, source: _Source, path: tuple[int, ...]
) -> None:
    """Reject messaging options the runtime cannot honour, at the option that asks for it."""
    options = method.options
    oneway = options.Extensions[options_pb2.oneway]
    durable = options.Extensions[options_pb2.durable]
    at = (*path, _OPTIONS_FIELD)
    if oneway and kind is not MethodKind.UNARY:
        raise source.error((*at, options_pb2.oneway.number), f"oneway RPC {method.name} cannot stream")
    if oneway and method.output_type != _EMPTY:
        raise source.error(
            (*at, options_pb2.oneway.number),
            f"oneway RPC {method.name} must return google.protobuf.Empty, not {method.output_type[1:]}",
        )
    if durable and kind is not MethodKind.UNARY:
        raise source.error((*at, options_pb2.durable.number), f"durable RPC {method.name} cannot stream")
    if not options.HasExtension(options_pb2.delivery):
        return
    delivery = options.Extensions[options_pb2.delivery]
    at = (*at, options_pb2.delivery.number)
    if not durable:
        raise source.error(at, f"delivery options of {method.name} need (protobind.v1.durable) = true")

    def bad(name: str, rule: str) -> ProtoError:
        return source.error(at, f"delivery.{name} of {method.name} {rule}")

    if delivery.HasField("max_deliver") and delivery.max_deliver < 1:
        raise bad("max_deliver", "must be at least 1")
    if delivery.HasField("max_ack_pending") and delivery.max_ack_pending < 1:
        raise bad("max_ack_pending", "must be at least 1")
    if delivery.HasField("ack_wait") and not _positive(delivery.ack_wait):
        raise bad("ack_wait", "must be positive")
    if delivery.HasField("reply_ttl") and not _positive(delivery.reply_ttl):
        raise bad("reply_ttl", "must be positive")
    if any((d.seconds, d.nanos) < (0, 0) for d in delivery.backoff):
        raise bad("backoff", "cannot be negative")


def _positive(duration: duration_pb2.Duration) -> bool:
    return (duration.seconds, duration.nanos) > (0, 0)


def _check_unique(source: _Source, names: list[tuple[str, tuple[int, ...], str]]) -> None:
    """Two declarations that would generate the same Python name are an error at the second."""
    seen: dict[str, str] = {}
    for name, path, what in names:
        if name in seen:
            raise source.error(path, f"{what} and {seen[name]} both generate the Python name {name}")
        seen[name] = what


def build_file(
    file: descriptor_pb2.FileDescriptorProto,
    index: TypeIndex,
    generator_version: str,
    comments: Comments | None = None,
) -> FileModel:
    """The model of one ``.proto`` file's ``_protobind.py``; ``ProtoError`` on a bad contract."""
    own_module = pb2_module(file.name)
    source = _Source(file)
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

    service_names = [s.name for s in file.service]
    module_names: list[tuple[str, tuple[int, ...], str]] = []
    services = []
    for s_index, service in enumerate(file.service):
        s_path = (_SERVICE_FIELD, s_index)
        full_name = f"{file.package}.{service.name}" if file.package else service.name
        stem = _stem(service.name, service_names)
        model = ServiceModel(
            name=service.name,
            full_name=full_name,
            base_class=f"{stem}Service",
            client_class=f"{service.name}Client",
            sync_client_class=f"{service.name}SyncClient",
            constant=_constant(stem) + "_SERVICE_INFO",
            descriptor_constant="_" + _constant(service.name) + "_DESCRIPTOR",
            doc=source.comments.get(s_path, ""),
            methods=tuple(
                _method(method, full_name, service.name, source, (*s_path, _METHOD_FIELD, m_index), py_type)
                for m_index, method in enumerate(service.method)
            ),
            comments=_service_comments(comments, full_name, service, index) if comments else "",
        )
        module_names += [(n, s_path, f"service {service.name}") for n in model.generated_names]
        methods = [
            ((*s_path, _METHOD_FIELD, i), f"method {service.name}.{m.name}", m)
            for i, m in enumerate(model.methods)
        ]
        module_names += [(m.constant, path, what) for path, what, m in methods]
        _check_unique(source, [(m.python_name, path, what) for path, what, m in methods])
        services.append(model)
    _check_unique(source, module_names)
    kinds = {m.kind for s in services for m in s.methods}
    abc = [
        name
        for name, used in [
            ("AsyncIterator", kinds - {MethodKind.UNARY}),  # handlers of every streaming kind
            ("Iterable", any(k.client_streams for k in kinds)),  # the blocking client's request streams
            ("Iterator", any(k.server_streams for k in kinds)),  # and its response streams
        ]
        if used
    ]
    stdlib = [f"from collections.abc import {', '.join(abc)}"] if abc else []
    stdlib.append("from typing import ClassVar")
    ordered = sorted(imports.values(), key=_isort_key)
    return FileModel(
        proto_name=file.name,
        output_name=output_name(file.name),
        own_alias=imports[own_module].alias,
        stdlib_imports=tuple(stdlib),
        imports=tuple(i.statement for i in ordered if not _is_protobind(i.module)),
        protobind_imports=("import protobind", *(i.statement for i in ordered if _is_protobind(i.module))),
        services=tuple(services),
        generator_version=generator_version,
    )


def _is_protobind(module: str) -> bool:
    return module.split(".")[0] == "protobind"


def _isort_key(imp: Import) -> tuple[bool, str, str]:
    # isort puts ``import x`` before ``from x import y`` within a block, then sorts by module.
    package, _, name = imp.module.rpartition(".")
    return (bool(package), package.lower(), name.lower())


def _method(
    method: descriptor_pb2.MethodDescriptorProto,
    service_full_name: str,
    service_name: str,
    source: _Source,
    path: tuple[int, ...],
    py_type: Callable[[str], PyType],
) -> MethodModel:
    kind = MethodKind.of(method.client_streaming, method.server_streaming)
    _check_options(method, kind, source, path)
    oneway = method.options.Extensions[options_pb2.oneway]
    request, response = py_type(method.input_type), py_type(method.output_type)
    return MethodModel(
        name=method.name,
        python_name=python_name(method.name),
        constant=_constant(service_name, method.name),
        kind=kind,
        input=request,
        output=response,
        oneway=oneway,
        durable=method.options.Extensions[options_pb2.durable],
        doc=source.comments.get(path, ""),
        service_full_name=service_full_name,
        handler=_handler(kind, request.expr, response.expr),
        client=_client(kind, request.expr, response.expr, oneway),
        sync_client=_sync_client(kind, request.expr, response.expr, oneway),
    )


def build(
    files: Sequence[descriptor_pb2.FileDescriptorProto], to_generate: Iterable[str], generator_version: str
) -> list[FileModel]:
    """Models for the files named in ``to_generate`` that declare at least one service."""
    index = TypeIndex(files)
    by_name = {f.name: f for f in files}
    wanted = [by_name[name] for name in to_generate]
    # every file's comments (imports too), as `protobind openapi/asyncapi` take them
    comments = Comments(files)
    return [build_file(f, index, generator_version, comments) for f in wanted if f.service]
