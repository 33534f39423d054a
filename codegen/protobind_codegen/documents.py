"""``protobind openapi`` and ``protobind asyncapi``: the documents that describe a contract's API.

    protobind openapi PATHS... [-I DIR]... [-o FILE]     OpenAPI 3.1 of the HTTP binding
    protobind asyncapi PATHS... [-I DIR]... [-o FILE]    AsyncAPI 3.0 of the NATS binding

Both compile the ``.proto`` files with source info, so proto comments become descriptions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from protobind.method import ServiceInfo


def add_parsers(commands: Any) -> None:
    """Register the ``openapi`` and ``asyncapi`` commands on the CLI's sub-parsers."""
    openapi = _common(
        commands.add_parser(
            "openapi", help="write the OpenAPI 3.1 document of the HTTP binding (Connect and REST routes)"
        ),
        "a base URL for the servers list",
    )
    openapi.set_defaults(run=run_openapi)
    asyncapi = _common(
        commands.add_parser(
            "asyncapi",
            help="write the AsyncAPI 3.0 document of the NATS binding (subjects and messages), or of "
            "the Kafka binding (topics) with --server kafka://...",
        ),
        "a nats:// (or kafka://) URL for the servers list",
    )
    asyncapi.add_argument("--prefix", default="", help="the binding's subject prefix (option prefix)")
    asyncapi.add_argument(
        "--queue-group",
        default="",
        metavar="GROUP",
        help="the servers' queue group (default: each service's name)",
    )
    asyncapi.set_defaults(run=run_asyncapi)


def _common(parser: argparse.ArgumentParser, server_help: str) -> argparse.ArgumentParser:
    parser.add_argument("paths", nargs="+", metavar="PATH", help=".proto files or directories")
    parser.add_argument("-I", "--include", action="append", default=[], metavar="DIR", help="import path")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--title", help="info.title (default: the service name, or 'protobind API')")
    parser.add_argument("--api-version", default="1.0.0", metavar="VERSION", help="info.version")
    parser.add_argument("--server", action="append", default=[], metavar="URL", help=server_help)
    return parser


def _contract(args: argparse.Namespace) -> tuple[list[ServiceInfo], list[Any], str]:
    """The services of ``args.paths``, their source files and the document title."""
    from .descriptors import build_pool, services_in
    from .protoc import compile_protos

    files, names = compile_protos(args.paths, args.include)
    services = services_in(build_pool(files), names)
    if not services:
        raise ValueError(f"no services declared in {', '.join(args.paths)}")
    title = args.title or (services[0].name if len(services) == 1 else "protobind API")
    return services, [f for f in files if f.name in names], title


def _write(args: argparse.Namespace, document: dict[str, Any]) -> int:
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(args.output)
    else:
        sys.stdout.write(text)
    return 0


def run_openapi(args: argparse.Namespace) -> int:
    from protobind.http.openapi import openapi_document

    services, sources, title = _contract(args)
    return _write(
        args,
        openapi_document(
            services, title=title, version=args.api_version, servers=args.server, source_files=sources
        ),
    )


def run_asyncapi(args: argparse.Namespace) -> int:
    from protobind.broker.asyncapi import asyncapi_document

    services, sources, title = _contract(args)
    bindings = None
    kafka = [url for url in args.server if url.startswith("kafka://")]
    if kafka:
        if len(kafka) != len(args.server):
            raise ValueError("--server: give kafka:// URLs only, or nats:// and tls:// URLs only")
        # topics and Kafka bindings (the connection module needs aiokafka, but connects nowhere)
        from protobind.kafka.connection import KafkaBroker
        from protobind.kafka.options import settings_from

        bindings = KafkaBroker(settings_from(kafka[0], {"prefix": args.prefix})).asyncapi_bindings()
    for url in args.server:
        if not url.startswith(("nats://", "tls://", "kafka://")):
            raise ValueError(f"--server {url!r}: give a nats://, tls:// or kafka:// URL")
    return _write(
        args,
        asyncapi_document(
            services,
            title=title,
            version=args.api_version,
            servers=args.server,
            prefix=args.prefix,
            queue_group=args.queue_group,
            source_files=sources,
            bindings=bindings,
        ),
    )
