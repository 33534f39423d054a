"""``protobind openapi PATHS... [-I DIR]... [-o FILE]``: the OpenAPI 3.1 document of a contract."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(commands: Any) -> None:
    """Register the ``openapi`` command on the CLI's sub-parsers."""
    parser = commands.add_parser(
        "openapi", help="write the OpenAPI 3.1 document of the HTTP binding (Connect and REST routes)"
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help=".proto files or directories")
    parser.add_argument("-I", "--include", action="append", default=[], metavar="DIR", help="import path")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--title", help="info.title (default: the service name, or 'protobind API')")
    parser.add_argument("--api-version", default="1.0.0", metavar="VERSION", help="info.version")
    parser.add_argument(
        "--server", action="append", default=[], metavar="URL", help="a base URL for the servers list"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from protobind.http.openapi import openapi_document

    from .descriptors import build_pool, services_in
    from .protoc import compile_protos

    files, names = compile_protos(args.paths, args.include)
    services = services_in(build_pool(files), names)
    if not services:
        raise ValueError(f"no services declared in {', '.join(args.paths)}")
    title = args.title or (services[0].name if len(services) == 1 else "protobind API")
    document = openapi_document(
        services,
        title=title,
        version=args.api_version,
        servers=args.server,
        source_files=[f for f in files if f.name in names],
    )
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(args.output)
    else:
        sys.stdout.write(text)
    return 0
