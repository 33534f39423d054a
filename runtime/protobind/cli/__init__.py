"""protobind: one protobuf contract, served over gRPC, HTTP (Connect) and NATS."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``protobind`` command line: every command, the code generator's included (they import
    :mod:`protobind_codegen` only when they run)."""
    import protobind

    from . import _codegen as codegen
    from . import _dev as dev
    from . import _documents as documents
    from . import _remote as remote
    from . import _serve as serve

    parser = argparse.ArgumentParser(prog="protobind", description=__doc__)
    parser.add_argument("--version", action="version", version=f"protobind {protobind.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    codegen.add_generate_parser(commands)
    serve.add_serve_parser(commands)
    remote.add_parsers(commands)
    serve.add_gateway_parser(commands)
    codegen.add_breaking_parser(commands)
    documents.add_parsers(commands)
    dev.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``protobind`` command with ``argv`` (default: ``sys.argv``); exits with its code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from protobind._errors import RpcError
    from protobind.config import ConfigError
    from protobind.urls import redact

    from ._base import UsageError, codegen_errors

    try:
        code = args.run(args)
    except codegen_errors() as exc:  # protoc's own lines, as it wrote them
        print(str(exc), file=sys.stderr)
        code = 1
    except (UsageError, ConfigError, ImportError, OSError, ValueError) as exc:
        print(f"protobind {args.command}: {exc}", file=sys.stderr)
        code = 1
    except RpcError as exc:  # the server could not be reached or refused the question
        where = f"{redact(args.url)}: " if getattr(args, "url", None) else ""
        print(f"protobind {args.command}: {where}{exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
