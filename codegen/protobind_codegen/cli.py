"""protobind: one protobuf contract, served over gRPC, HTTP (Connect) and NATS."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import Any

from . import dev_cmd, openapi_cmd, remote_cmd
from .breaking import FORMATS, LEVELS


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 1, no traceback."""


def _generate(args: argparse.Namespace) -> int:
    from .generate import generate

    for path in generate(args.paths, args.out, args.include):
        print(path)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    from protobind.config import Config, load_service

    config = Config.load(args.config)
    # MODULE:ATTR is resolved as `PYTHONPATH=DIR... python -m` would: the working directory, then
    # the --path directories (generated code in gen/, say) or server.path
    paths = [os.getcwd(), *(os.path.abspath(p) for p in args.path), *config.path]
    missing = [p for p in paths if not os.path.isdir(p)]
    if missing:
        raise UsageError(f"cannot import from {missing[0]}: no such directory")
    sys.path[:0] = [p for p in dict.fromkeys(paths) if p not in sys.path]
    specs = args.services or list(config.services)
    urls = args.bind or list(config.bind)
    if not specs:
        raise UsageError("no services: name MODULE:ATTR arguments or server.services in the config")
    if not urls:
        raise UsageError("nowhere to serve: give --bind URL or server.bind in the config")
    services = [load_service(spec) for spec in specs]
    return asyncio.run(_serve_until_signal(services, urls, config))


async def _serve_until_signal(services: list[object], urls: list[str], config: Any) -> int:
    import protobind

    server = protobind.Server(
        services, transport_options=config.transport_options, telemetry=config.telemetry
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    for url in await server.start(*urls):
        print(f"serving {', '.join(s.name for s in server.services)} on {url}", flush=True)
    await stop.wait()
    print(f"stopping (grace {config.grace:g} s)", flush=True)
    await server.stop(grace=config.grace)
    return 0


def _breaking(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from .breaking import breaking_changes, render
    from .breaking_sides import Side, git_side

    if len(args.paths) != (1 if args.against else 2):
        raise UsageError("give OLD_PATH NEW_PATH, or NEW_PATH --against OLD_PATH|git:REF")
    new = Side("NEW", (args.paths[-1],), tuple(args.include))
    with ExitStack() as stack:
        if args.against and args.against.startswith("git:"):
            old = stack.enter_context(git_side(args.against[4:], new))
        else:
            old = Side("OLD", (args.against or args.paths[0],), tuple(args.include))
        findings = breaking_changes(old, new, args.level)
    print(render(findings, args.format, args.level))
    if findings and args.format != "json":
        print(f"{len(findings)} breaking change(s) at level {args.level}", file=sys.stderr)
    return 1 if findings else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protobind", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="generate typed Python stubs from .proto files")
    gen.add_argument("paths", nargs="+", metavar="PATH", help=".proto files or directories")
    gen.add_argument("-I", "--include", action="append", default=[], metavar="DIR", help="import path")
    gen.add_argument("--out", required=True, metavar="DIR", help="output directory")
    gen.set_defaults(run=_generate)

    serve = commands.add_parser("serve", help="serve service implementations on one or more URLs")
    serve.add_argument("services", nargs="*", metavar="MODULE:ATTR", help="service class or instance")
    serve.add_argument("--bind", action="append", default=[], metavar="URL", help="URL to serve on")
    serve.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="DIR",
        help="also import from DIR, e.g. the generated code's --out directory (repeatable)",
    )
    serve.add_argument(
        "--config", metavar="FILE", help="protobind.toml (default: ./protobind.toml if present)"
    )
    serve.set_defaults(run=_serve)

    remote_cmd.add_parsers(commands)

    breaking = commands.add_parser(
        "breaking",
        help="list changes in NEW that break clients of OLD",
        usage="protobind breaking [OLD_PATH] NEW_PATH [--against OLD_PATH|git:REF] [-I DIR]... "
        "[--level LEVEL] [--format FORMAT]",
    )
    breaking.add_argument(
        "paths", nargs="+", metavar="PATH", help="OLD_PATH NEW_PATH, or NEW_PATH with --against"
    )
    breaking.add_argument(
        "--against", metavar="OLD", help="the old version: a path, or git:REF (NEW_PATH as it was at REF)"
    )
    breaking.add_argument("-I", "--include", action="append", default=[], metavar="DIR", help="import path")
    breaking.add_argument(
        "--level",
        choices=LEVELS,
        default="WIRE_JSON",
        help="what must keep working: WIRE binary clients, WIRE_JSON (default) binary and JSON clients, "
        "FILE also code generated from OLD",
    )
    breaking.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    breaking.set_defaults(run=_breaking)
    openapi_cmd.add_parser(commands)
    dev_cmd.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    from protobind.config import ConfigError
    from protobind.errors import RpcError
    from protobind.urls import redact

    from .protoc import ProtoError

    try:
        code = args.run(args)
    except ProtoError as exc:
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


if __name__ == "__main__":
    main()
