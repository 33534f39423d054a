"""``protobind openapi`` and ``protobind asyncapi``: the documents that describe a contract's API.

    protobind openapi PATHS... [-I DIR]... [-o FILE]     OpenAPI 3.1 of the HTTP binding
    protobind asyncapi PATHS... [-I DIR]... [-o FILE]    AsyncAPI 3.0 of the NATS (or MQTT) binding
    protobind openapi|asyncapi URL [-H KEY:VALUE]...     the document a running server serves

A running server's document needs only the runtime; from ``.proto`` files the documents are
built by :mod:`protobind_codegen.documents` (``protobind[codegen]``), which compiles them with
source info, so proto comments become descriptions (the generated code carries the same comments
to a server, so its documents say the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._base import needs_codegen

if TYPE_CHECKING:
    from protobind.transport import Transport

__all__ = ["ASYNCAPI_SCHEMES", "add_parsers"]

#: The URL schemes of each broker binding ``protobind asyncapi`` builds from ``.proto`` files: what
#: protobind_codegen's document builder writes bindings for (a running server's document comes from
#: its transport, ``Transport.documents``).
ASYNCAPI_SCHEMES = {"nats": ("nats", "tls"), "mqtt": ("mqtt", "mqtts"), "kafka": ("kafka",)}


def add_parsers(commands: Any) -> None:
    """Register the ``openapi`` and ``asyncapi`` commands on the CLI's sub-parsers."""
    openapi = _common(
        commands.add_parser(
            "openapi", help="write the OpenAPI 3.1 document of the HTTP binding (Connect and REST routes)"
        ),
        "a base URL for the servers list",
    )
    openapi.set_defaults(run=_openapi)
    asyncapi = _common(
        commands.add_parser(
            "asyncapi",
            help="write the AsyncAPI 3.0 document of the NATS, MQTT 5 or Kafka binding (subjects, topics "
            "and messages)",
        ),
        "a nats://, mqtt:// or kafka:// URL for the servers list",
    )
    asyncapi.add_argument(
        "--protocol",
        choices=sorted(ASYNCAPI_SCHEMES),
        help="the binding described (default: the --server URLs', else nats)",
    )
    asyncapi.add_argument("--prefix", default="", help="the binding's subject prefix (option prefix)")
    asyncapi.add_argument(
        "--queue-group",
        default="",
        metavar="GROUP",
        help="the servers' queue group (default: each service's name)",
    )
    asyncapi.set_defaults(run=_asyncapi)


def _common(parser: argparse.ArgumentParser, server_help: str) -> argparse.ArgumentParser:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help=".proto files or directories, or a running server's URL"
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="KEY:VALUE",
        help="metadata sent when asking a server (a token, say)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S", help="when asking a server")
    parser.add_argument("-I", "--include", action="append", default=[], metavar="DIR", help="import path")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--title", help="info.title (default: the service name, or 'protobind API')")
    parser.add_argument("--api-version", default="1.0.0", metavar="VERSION", help="info.version")
    parser.add_argument("--server", action="append", default=[], metavar="URL", help=server_help)
    return parser


def _openapi(args: argparse.Namespace) -> int:
    document = _served(args, "openapi")
    if document is None:
        with needs_codegen("reading .proto files"):
            from protobind_codegen.documents import openapi_from_files

        document = openapi_from_files(args)
    return _write(args, document)


def _asyncapi(args: argparse.Namespace) -> int:
    document = _served(args, "asyncapi")
    if document is None:
        with needs_codegen("reading .proto files"):
            from protobind_codegen.documents import asyncapi_from_files

        document = asyncapi_from_files(args)
    return _write(args, document)


def _write(args: argparse.Namespace, document: dict[str, Any]) -> int:
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(args.output)
    else:
        sys.stdout.write(text)
    return 0


def _served(args: argparse.Namespace, kind: str) -> dict[str, Any] | None:
    """With a URL instead of paths, the ``kind`` document (``openapi``: ``http://``,
    ``asyncapi``: a broker URL) that server serves; ``None`` when ``args.paths`` are files."""
    if len(args.paths) != 1 or "://" not in args.paths[0]:
        return None
    args.url = url = args.paths[0]  # the CLI names it in an error line
    for flag, given in [
        ("-I", args.include),
        ("--title", args.title),
        ("--server", args.server),
        ("--prefix", getattr(args, "prefix", "")),
        ("--queue-group", getattr(args, "queue_group", "")),
        ("--protocol", getattr(args, "protocol", None)),
    ]:
        if given:
            raise ValueError(f"{flag} is for .proto files: a running server's document is as it serves it")

    import asyncio

    from protobind._metadata import Metadata
    from protobind.reflection import ServesAsyncAPI, ServesOpenAPI
    from protobind.transport import all_transports, transport_for_url

    from ._remote import _connect, _metadata

    metadata = Metadata(_metadata(args.header))
    scheme = url.partition(":")[0]
    refused = f"a {scheme}:// server serves no {kind} document: {_where(kind, all_transports())}"
    if kind not in transport_for_url(url).documents:
        raise ValueError(refused)

    async def fetch() -> dict[str, Any]:
        async with _connect(url) as channel:
            await channel.open()
            transport = channel.transport  # the optional interfaces of protobind.reflection
            if kind == "openapi" and isinstance(transport, ServesOpenAPI):
                return await transport.openapi(args.timeout, metadata)
            if kind == "asyncapi" and isinstance(transport, ServesAsyncAPI):
                return await transport.asyncapi(args.timeout, metadata)
            raise ValueError(refused)

    return asyncio.run(fetch())


def _where(kind: str, transports: list[Transport]) -> str:
    """Which URLs serve the ``kind`` document: those of the transports that declare it
    (``Transport.documents``), the in-process ones left out (they serve no other process)."""
    schemes = [f"{s}://" for t in transports if kind in t.documents and not t.in_process for s in t.schemes]
    if not schemes:
        return "no registered transport serves one"
    listed = ", ".join(schemes[:-1]) + " or " + schemes[-1] if len(schemes) > 1 else schemes[0]
    return f"give {'an' if listed[0] in 'aeiouh' else 'a'} {listed} URL"
