"""protobind: one protobuf contract, served over gRPC, HTTP (Connect) and NATS."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

from . import openapi_cmd
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

    sys.path.insert(0, os.getcwd())  # MODULE:ATTR is resolved like `python -m` would
    config = Config.load(args.config)
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


def _call(args: argparse.Namespace) -> int:
    return asyncio.run(_call_async(args))


def _find_method(args: argparse.Namespace) -> Any:
    service_name, _, method_name = args.method.rpartition("/")
    if not service_name or not method_name:
        raise UsageError(f"method {args.method!r} must be package.Service/Method")
    if not args.proto:
        raise UsageError("give the contract with --proto FILE (and -I DIR for its imports)")
    from .descriptors import load_services

    for service in load_services(args.proto, args.include):
        if service.name == service_name:
            try:
                return service.method(method_name)
            except KeyError:
                names = ", ".join(m.name for m in service.methods)
                raise UsageError(f"{service_name} has no method {method_name}; it has: {names}") from None
    raise UsageError(f"service {service_name} is not declared in {', '.join(args.proto)}")


async def _call_async(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    import protobind

    method = _find_method(args)
    try:
        body = json.loads(args.json) if args.json else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f"request is not valid JSON: {exc}") from None
    bodies = body if method.kind.client_streams else [body]
    if not isinstance(bodies, list):
        raise UsageError(f"{method.name} is client streaming: give a JSON array of requests")
    try:
        requests = [json_format.ParseDict(b, method.input_type()) for b in bodies]
    except json_format.ParseError as exc:
        raise UsageError(f"request does not match {method.input_type.DESCRIPTOR.full_name}: {exc}") from None
    metadata = []
    for header in args.header:
        key, sep, value = header.partition(":")
        if not sep:
            raise UsageError(f"header {header!r} must be key:value")
        metadata.append((key.strip(), value.strip()))

    def show(message: Any) -> None:
        print(json.dumps(json_format.MessageToDict(message), indent=2 if sys.stdout.isatty() else None))

    kind = protobind.MethodKind
    try:
        async with protobind.connect(args.url) as channel:
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
            print(
                f"  detail {detail.DESCRIPTOR.full_name}: {json_format.MessageToJson(detail)}",
                file=sys.stderr,
            )
        return 1
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
        "--config", metavar="FILE", help="protobind.toml (default: ./protobind.toml if present)"
    )
    serve.set_defaults(run=_serve)

    call = commands.add_parser("call", help="call a method with a JSON request, print JSON replies")
    call.add_argument("url", metavar="URL")
    call.add_argument("method", metavar="SERVICE/METHOD", help="e.g. greeter.v1.Greeter/SayHello")
    call.add_argument("json", nargs="?", metavar="JSON", help="request (a JSON array for client streaming)")
    call.add_argument("-H", "--header", action="append", default=[], metavar="KEY:VALUE")
    call.add_argument("--timeout", type=float, default=30.0, metavar="S")
    call.add_argument("-I", "--include", action="append", default=[], metavar="DIR", help="import path")
    call.add_argument("--proto", action="append", default=[], metavar="FILE", help="the contract")
    call.set_defaults(run=_call)

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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    from protobind.config import ConfigError

    from .protoc import ProtoError

    try:
        code = args.run(args)
    except ProtoError as exc:
        print(str(exc), file=sys.stderr)
        code = 1
    except (UsageError, ConfigError, ImportError, OSError, ValueError) as exc:
        print(f"protobind {args.command}: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
