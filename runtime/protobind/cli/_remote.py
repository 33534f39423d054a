"""``protobind call``, ``list`` and ``describe``: talk to a running server, like grpcurl.

The contract comes from the server's reflection (gRPC server reflection, the HTTP binding's
reflection route, the NATS micro INFO reply) unless ``--proto`` names the files, which are then
looked up in the ``-I`` directories first, as protoc and grpcurl do (compiling them needs the
code generator, ``protobind[codegen]``; reflection does not).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message_factory,
    text_format,
)
from google.protobuf.descriptor import Descriptor, EnumDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from ._base import needs_codegen

__all__ = ["add_parsers", "describe_symbol"]


def add_parsers(commands: Any) -> None:
    """Register ``call``, ``list`` and ``describe`` on the CLI's sub-parsers."""
    call = commands.add_parser("call", help="call a method with a JSON request, print JSON replies")
    call.add_argument("url", metavar="URL")
    call.add_argument("method", metavar="SERVICE/METHOD", help="e.g. greeter.v1.Greeter/SayHello")
    call.add_argument("json", nargs="?", metavar="JSON", help="request (a JSON array for client streaming)")
    call.add_argument("--timeout", type=float, default=30.0, metavar="S")
    _contract_arguments(call)
    call.set_defaults(run=_call)

    listing = commands.add_parser("list", help="list the services a server offers (or one service's methods)")
    listing.add_argument("url", metavar="URL")
    listing.add_argument("service", nargs="?", metavar="SERVICE", help="list this service's methods")
    _contract_arguments(listing)
    listing.set_defaults(run=_list)

    describe = commands.add_parser("describe", help="show a service, method, message or enum of a server")
    describe.add_argument("url", metavar="URL")
    describe.add_argument("symbol", nargs="?", metavar="SYMBOL", help="full name (default: every service)")
    _contract_arguments(describe)
    describe.set_defaults(run=_describe)


def _contract_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-H", "--header", action="append", default=[], metavar="KEY:VALUE", help="request metadata"
    )
    parser.add_argument("-I", "--include", action="append", default=[], metavar="DIR", help="import path")
    parser.add_argument(
        "--proto",
        action="append",
        default=[],
        metavar="FILE",
        help="the contract, relative to an -I directory (default: ask the server, by reflection)",
    )
    parser.add_argument("--reflect-timeout", type=float, default=10.0, metavar="S", help=argparse.SUPPRESS)


@dataclass(frozen=True)
class Contract:
    """The services a command works with and the pool their descriptors live in."""

    services: tuple[str, ...]
    pool: descriptor_pool.DescriptorPool

    def service(self, name: str) -> ServiceDescriptor:
        """The descriptor of service ``name``; ``ValueError`` naming the services when absent."""
        if name not in self.services:
            served = ", ".join(self.services) or "none"
            raise ValueError(f"service {name} is not there; services: {served}")
        return self.pool.FindServiceByName(name)


def _local_contract(args: argparse.Namespace) -> Contract:
    with needs_codegen("--proto"):
        from protobind_codegen.descriptors import build_pool
        from protobind_codegen.protoc import compile_protos, run_protoc

    includes = [str(Path(i).resolve()) for i in args.include]
    found: list[str] = []
    for proto in args.proto:
        # as protoc and grpcurl: a name relative to an import directory, else a path
        if not Path(proto).is_absolute() and any((Path(i) / proto).is_file() for i in includes):
            found.append(proto)
    if len(found) == len(args.proto):
        files = run_protoc(found, includes)
        names = found
    else:
        files, names = compile_protos(args.proto, args.include)
    pool = build_pool(files)
    services = [s.full_name for n in names for s in pool.FindFileByName(n).services_by_name.values()]
    return Contract(tuple(services), pool)


async def _contract(args: argparse.Namespace, channel: Any) -> Contract:
    if args.proto:
        return _local_contract(args)
    import protobind
    from protobind.reflection import reflect

    try:
        reflected = await reflect(channel, args.reflect_timeout, _metadata(args.header))
    except protobind.RpcError as exc:
        if exc.code is protobind.Code.UNIMPLEMENTED:
            raise ValueError(
                f"no reflection ({exc.message}): give the contract with --proto FILE [-I DIR]"
            ) from None
        raise
    return Contract(reflected.services, reflected.pool)


def _connect(url: str) -> Any:
    import protobind

    # One line per failure: the transports' connection warnings would repeat what the error says.
    logging.getLogger("protobind").setLevel(logging.ERROR)
    return protobind.connect(url)


# --- list and describe --------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    async def run() -> None:
        async with _connect(args.url) as channel:
            contract = await _contract(args, channel)
        if args.service:
            for method in contract.service(args.service).methods:
                print(method.full_name)
        else:
            for name in contract.services:
                print(name)

    asyncio.run(run())
    return 0


def _describe(args: argparse.Namespace) -> int:
    async def run() -> None:
        async with _connect(args.url) as channel:
            contract = await _contract(args, channel)
        symbols = [args.symbol] if args.symbol else list(contract.services)
        print("\n".join(describe_symbol(contract.pool, symbol) for symbol in symbols), end="")

    asyncio.run(run())
    return 0


def describe_symbol(pool: descriptor_pool.DescriptorPool, symbol: str) -> str:
    """``SYMBOL is a KIND:`` and its declaration in .proto syntax (grpcurl describe's form)."""
    symbol = symbol.lstrip(".")
    lookups: list[tuple[str, Any]] = [
        ("service", pool.FindServiceByName),
        ("message", pool.FindMessageTypeByName),
        ("enum", pool.FindEnumTypeByName),
        ("method", lambda name: pool.FindMethodByName(name.replace("/", "."))),
    ]
    for kind, find in lookups:
        try:
            found = find(symbol)
        except KeyError:
            continue
        return f"{found.full_name} is a {kind}:\n{_declaration(found)}"
    raise ValueError(f"symbol {symbol} is not known to the server")


def _declaration(descriptor: Any) -> str:
    if isinstance(descriptor, ServiceDescriptor):
        proto = descriptor_pb2.ServiceDescriptorProto()
        descriptor.CopyToProto(proto)
        lines = [f"service {proto.name} {{", *(f"  {line}" for m in proto.method for line in _rpc(m)), "}"]
    elif isinstance(descriptor, MethodDescriptor):
        proto_method = descriptor_pb2.MethodDescriptorProto()
        descriptor.CopyToProto(proto_method)
        lines = _rpc(proto_method)
    elif isinstance(descriptor, Descriptor):
        message = descriptor_pb2.DescriptorProto()
        descriptor.CopyToProto(message)
        lines = _message(message, getattr(descriptor.file, "syntax", "proto3"))
    else:
        assert isinstance(descriptor, EnumDescriptor)
        enum = descriptor_pb2.EnumDescriptorProto()
        descriptor.CopyToProto(enum)
        lines = _enum(enum)
    return "\n".join(lines) + "\n"


def _rpc(method: descriptor_pb2.MethodDescriptorProto) -> list[str]:
    request = ("stream " if method.client_streaming else "") + method.input_type
    response = ("stream " if method.server_streaming else "") + method.output_type
    head = f"rpc {method.name} ( {request} ) returns ( {response} )"
    options = _options(method.options)
    if not options:
        return [head + ";"]
    return [head + " {", *(f"  {line}" for line in options), "}"]


def _options(options: Message) -> list[str]:
    """``option NAME = VALUE;`` for each option set, extensions as ``(full.name)``: the
    ``google.api.http`` rules and protobind's ``oneway``, ``durable`` and ``delivery`` included
    (their modules register them when imported; an extension this process does not know stays
    unknown and is not shown)."""
    import google.api.annotations_pb2  # noqa: F401  - registers (google.api.http)

    import protobind.v1.options_pb2  # noqa: F401  - registers (protobind.v1.*)

    lines = []
    for field, value in options.ListFields():
        if field.name == "uninterpreted_option":
            continue
        name = f"({field.full_name})" if field.is_extension else field.name
        for item in value if field.is_repeated else [value]:
            lines.append(f"option {name} = {_option_value(field, item)};")
    return lines


def _option_value(field: Any, value: Any) -> str:
    if field.message_type is not None:
        return "{ " + text_format.MessageToString(value, as_one_line=True) + " }"
    if field.enum_type is not None:
        return str(field.enum_type.values_by_number[value].name)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, bytes)):
        return json.dumps(value if isinstance(value, str) else value.decode("latin-1"))
    return str(value)


def _type_name(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type_name:
        return field.type_name
    return descriptor_pb2.FieldDescriptorProto.Type.Name(field.type)[len("TYPE_") :].lower()


def _field(field: descriptor_pb2.FieldDescriptorProto, entries: dict[str, Any], syntax: str) -> str:
    entry = entries.get(field.type_name.rpartition(".")[2]) if field.type_name else None
    if entry is not None and field.label == field.LABEL_REPEATED:
        key, value = entry.field
        return f"map<{_type_name(key)}, {_type_name(value)}> {field.name} = {field.number};"
    label = ""
    if field.label == field.LABEL_REPEATED:
        label = "repeated "
    elif field.label == field.LABEL_REQUIRED:
        label = "required "
    elif field.proto3_optional or (syntax == "proto2" and not field.HasField("oneof_index")):
        label = "optional "
    return f"{label}{_type_name(field)} {field.name} = {field.number};"


def _message(message: descriptor_pb2.DescriptorProto, syntax: str) -> list[str]:
    entries = {n.name: n for n in message.nested_type if n.options.map_entry}
    lines: list[str | list[str]] = [f"message {message.name} {{"]
    oneofs: dict[int, list[str]] = {}
    for field in message.field:
        text = _field(field, entries, syntax)
        if not field.HasField("oneof_index") or field.proto3_optional:
            lines.append(f"  {text}")
            continue
        members = oneofs.get(field.oneof_index)
        if members is None:  # the oneof is declared where its first member is
            members = oneofs[field.oneof_index] = []
            lines.append(f"  oneof {message.oneof_decl[field.oneof_index].name} {{")
            lines.append(members)  # filled as further members come, flattened below
            lines.append("  }")
        members.append(f"    {text}")
    out = [item for line in lines for item in ([line] if isinstance(line, str) else line)]
    for nested in message.nested_type:
        if not nested.options.map_entry:
            out.extend(f"  {line}" for line in _message(nested, syntax))
    for enum in message.enum_type:
        out.extend(f"  {line}" for line in _enum(enum))
    out.extend(f'  reserved "{name}";' for name in message.reserved_name)
    out.append("}")
    return out


def _enum(enum: descriptor_pb2.EnumDescriptorProto) -> list[str]:
    return [f"enum {enum.name} {{", *(f"  {v.name} = {v.number};" for v in enum.value), "}"]


# --- call ---------------------------------------------------------------------------------------


def _call(args: argparse.Namespace) -> int:
    return asyncio.run(_call_async(args))


def _method(contract: Contract, name: str) -> Any:
    from protobind.reflection import services_in_pool

    service_name, _, method_name = name.rpartition("/")
    if not service_name or not method_name:
        raise ValueError(f"method {name!r} must be package.Service/Method")
    (service,) = services_in_pool(contract.pool, [contract.service(service_name).full_name])
    try:
        return service.method(method_name)
    except KeyError:
        names = ", ".join(m.name for m in service.methods)
        raise ValueError(f"{service_name} has no method {method_name}; it has: {names}") from None


def _requests(args: argparse.Namespace, method: Any, pool: descriptor_pool.DescriptorPool) -> list[Message]:
    try:
        body = json.loads(args.json) if args.json else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"request is not valid JSON: {exc}") from None
    bodies = body if method.kind.client_streams else [body]
    if not isinstance(bodies, list):
        raise ValueError(f"{method.name} is client streaming: give a JSON array of requests")
    try:
        return [json_format.ParseDict(b, method.input_type(), descriptor_pool=pool) for b in bodies]
    except json_format.ParseError as exc:
        raise ValueError(f"request does not match {method.input_type.DESCRIPTOR.full_name}: {exc}") from None


def _metadata(headers: Sequence[str]) -> list[tuple[str, str]]:
    metadata = []
    for header in headers:
        key, sep, value = header.partition(":")
        if not sep:
            raise ValueError(f"header {header!r} must be key:value")
        metadata.append((key.strip(), value.strip()))
    return metadata


async def _call_async(args: argparse.Namespace) -> int:
    import protobind

    if not args.proto and "/" not in args.method:
        raise ValueError(f"method {args.method!r} must be package.Service/Method")
    metadata = _metadata(args.header)
    kind = protobind.MethodKind
    indent = 2 if sys.stdout.isatty() else None
    async with _connect(args.url) as channel:
        contract = await _contract(args, channel)
        method = _method(contract, args.method)
        requests = _requests(args, method, contract.pool)

        def show(message: Message) -> None:
            reply = json_format.MessageToDict(message, descriptor_pool=contract.pool)
            print(json.dumps(reply, indent=indent))

        try:
            if method.kind is kind.UNARY:
                show(await channel.unary(method, requests[0], args.timeout, metadata))
            elif method.kind is kind.CLIENT_STREAMING:
                show(await channel.client_stream(method, requests, args.timeout, metadata))
            elif method.kind is kind.SERVER_STREAMING:
                async for reply in channel.server_stream(method, requests[0], args.timeout, metadata):
                    show(reply)
            else:
                async for reply in channel.bidi_stream(method, requests, args.timeout, metadata):
                    show(reply)
        except protobind.RpcError as exc:
            print(f"error: {exc.code.name}: {exc.message}", file=sys.stderr)
            for detail in exc.details:
                print(f"  detail {detail_text(detail, contract.pool)}", file=sys.stderr)
            return 1
    return 0


def detail_text(detail: Message, pool: descriptor_pool.DescriptorPool | None = None) -> str:
    """An error detail as ``TYPE: JSON``; a detail of a type neither this process nor ``pool``
    knows as ``TYPE_URL (unknown type): BASE64``. Never raises."""
    if isinstance(detail, any_pb2.Any):
        packed = detail
        name = packed.type_url.rpartition("/")[2]
        try:
            assert pool is not None
            message = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))()
            if not packed.Unpack(message):
                raise ValueError
            detail = message
        except (AssertionError, KeyError, ValueError, TypeError):
            value = base64.b64encode(packed.value).decode("ascii")
            return f"{packed.type_url} (unknown type): {value}"
    try:
        text = json.dumps(json_format.MessageToDict(detail, descriptor_pool=pool))
    except (TypeError, ValueError, KeyError):  # e.g. an Any inside the detail, of an unknown type
        text = base64.b64encode(detail.SerializeToString()).decode("ascii") + " (binary)"
    return f"{detail.DESCRIPTOR.full_name}: {text}"
