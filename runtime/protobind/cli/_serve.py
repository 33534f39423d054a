"""``protobind serve`` and ``protobind gateway``: run servers from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from .._aio import LOOPS
from ._base import UsageError, needs_codegen

if TYPE_CHECKING:
    from protobind.config import Config

__all__ = ["add_gateway_parser", "add_serve_parser"]


def add_serve_parser(commands: Any) -> None:
    """Register ``serve`` on the CLI's sub-parsers."""
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
    serve.add_argument(
        "--workers", type=int, metavar="N", help="processes sharing the work (default: server.workers, 1)"
    )
    serve.add_argument("--loop", choices=LOOPS, help="event loop (default: server.loop, asyncio)")
    _add_logging_arguments(serve)
    serve.set_defaults(run=_serve)


def add_gateway_parser(commands: Any) -> None:
    """Register ``gateway`` on the CLI's sub-parsers."""
    gateway = commands.add_parser(
        "gateway", help="serve the services of an upstream URL on other URLs (no generated code)"
    )
    gateway.add_argument("--listen", action="append", default=[], metavar="URL", help="URL to serve on")
    gateway.add_argument("--upstream", required=True, metavar="URL", help="where the services run")
    gateway.add_argument("--proto", action="append", default=[], metavar="FILE", help="the contract")
    gateway.add_argument("-I", "--include", action="append", default=[], metavar="DIR", help="import path")
    gateway.add_argument(
        "--service", action="append", default=[], metavar="NAME", help="forward only this service"
    )
    gateway.add_argument(
        "--config", metavar="FILE", help="protobind.toml: server.options, grace and loop apply"
    )
    gateway.add_argument("--loop", choices=LOOPS, help="event loop (default: server.loop, asyncio)")
    gateway.set_defaults(run=_gateway)


def _serve(args: argparse.Namespace) -> int:
    import protobind
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
    workers = args.workers or config.workers
    loop = args.loop or config.loop
    access_log, log_level = _logging_choice(args, config)
    if workers < 1:
        raise UsageError("--workers must be at least 1")

    def stopping() -> None:
        print(f"stopping (grace {config.grace:g} s)", flush=True)

    if workers > 1:
        from protobind.workers import ServeSpec, serve_workers

        def started(bound: list[str], pids: list[int]) -> None:
            _print_serving(", ".join(specs), bound)
            print(f"{workers} workers, pids {' '.join(map(str, pids))}", flush=True)

        spec = ServeSpec(
            tuple(specs),
            tuple(urls),
            config.transport_options,
            config.grace,
            loop,
            (os.getcwd(),),
            config.telemetry,
            config.max_oneway,
            access_log=access_log,
            log_level=log_level,
        )
        try:
            return serve_workers(spec, workers, started, stopping)
        except RuntimeError as exc:  # a worker could not start: its one-line reason
            raise UsageError(str(exc)) from None
    server = protobind.Server(
        [load_service(s) for s in specs],
        transport_options=config.transport_options,
        telemetry=config.telemetry,
        max_oneway=config.max_oneway,
        access_log=access_log,
    )
    from protobind._access_log import setup_logging

    setup_logging(log_level)  # after the services' imports: logging they set up stays
    names = ", ".join(s.name for s in server.services)
    server.run(
        *urls, loop=loop, grace=config.grace, on_start=lambda b: _print_serving(names, b), on_stop=stopping
    )
    return 0


def _logging_choice(args: argparse.Namespace, config: Config) -> tuple[bool, str]:
    """``protobind serve``'s access log (on unless the command line or the file says off) and
    log level (``info`` unless either says otherwise)."""
    access_log = args.access_log if args.access_log is not None else config.access_log
    return access_log is not False, args.log_level or config.log_level or "info"


def _add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    from protobind.config import LOG_LEVELS

    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help="log to stderr from LEVEL up (default: server.log_level, info)",
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one line per call: transport, method, code, duration, peer (default: server.access_log, on)",
    )


def _print_serving(what: str, urls: list[str]) -> None:
    from protobind.urls import redact

    for url in urls:
        print(f"serving {what} on {redact(url)}", flush=True)


def _gateway(args: argparse.Namespace) -> int:
    import protobind
    from protobind.config import Config
    from protobind.urls import redact

    if not args.listen:
        raise UsageError("give at least one --listen URL to serve the upstream's services on")
    if not args.proto:
        raise UsageError("give the contract with --proto FILE (and -I DIR for its imports)")
    config = Config.load(args.config)
    with needs_codegen("--proto"):
        from protobind_codegen.descriptors import load_services

    services = load_services(args.proto, args.include)
    if args.service:
        unknown = sorted(set(args.service) - {s.name for s in services})
        if unknown:
            raise UsageError(f"service(s) {', '.join(unknown)} not declared in {', '.join(args.proto)}")
        services = [s for s in services if s.name in args.service]
    if not services:
        raise UsageError(f"no service is declared in {', '.join(args.proto)}")
    gateway = protobind.Gateway(
        services, args.upstream, transport_options=config.transport_options, telemetry=config.telemetry
    )
    names = ", ".join(s.name for s in services)

    def stopping() -> None:
        print(f"stopping (grace {config.grace:g} s)", flush=True)

    gateway.run(
        *args.listen,
        loop=args.loop or config.loop,
        grace=config.grace,
        on_start=lambda bound: _print_serving(f"{names} from {redact(args.upstream)}", bound),
        on_stop=stopping,
    )
    return 0
