"""Quick check (temporary, until the lead's benchmarks/ suite exists): protobind's HTTP binding,
client and server, against the `connectrpc` package, client and server, on the same Connect unary
call of the conformance service, 64 concurrent calls, JSON and proto, rounds interleaved.

    .venv/bin/python benchmarks/http_quick.py [--seconds 3] [--rounds 3]

Each server runs in its own process under uvicorn with the same settings (no access log, lifespan
off, the default HTTP parser and event loop); the clients run in this process, one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 64
TEXT = "x" * 100


def connect_stubs(out: Path) -> ModuleType:
    """Generate connectrpc's stubs for the conformance proto with its protoc plugin and load them
    as a sibling of protobind's own conformance_pb2 (so both share one message class)."""
    import grpc_tools

    plugin = shutil.which("protoc-gen-connectrpc", path=str(Path(sys.executable).parent))
    if plugin is None:
        raise SystemExit("protoc-gen-connectrpc is not installed (pip install protoc-gen-connectrpc)")
    include = Path(grpc_tools.__file__).parent / "_proto"
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'idl'}", f"-I{include}",
            f"--plugin=protoc-gen-connectrpc={plugin}", f"--connectrpc_out={out}",
            "--connectrpc_opt=protobuf=google", "protobind/conformance/v1/conformance.proto",
        ],
        check=True,
        cwd=ROOT / "idl",
    )  # fmt: skip
    path = out / "protobind" / "conformance" / "v1" / "conformance_connect.py"
    name = "protobind.conformance.v1.conformance_connect"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- servers (run in child processes) --------------------------------------------------------------


def serve_connectrpc(port: int) -> None:
    import uvicorn

    from protobind.conformance.v1.conformance_pb2 import Request, Response

    with tempfile.TemporaryDirectory() as tmp:
        stubs = connect_stubs(Path(tmp))

    class Service(stubs.ConformanceService):  # type: ignore[misc,name-defined]
        async def unary(self, request: Request, ctx: Any) -> Response:
            return Response(text=request.text)

    app = stubs.ConformanceServiceASGIApplication(Service())
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_config=None, access_log=False,
        server_header=False, timeout_keep_alive=75,
    )  # fmt: skip
    uvicorn.Server(config).run()


def serve_protobind(port: int) -> None:
    import protobind
    from protobind.conformance.v1.conformance_pb2 import Request, Response
    from protobind.conformance.v1.conformance_protobind import ConformanceServiceService

    class Service(ConformanceServiceService):
        async def unary(self, request: Request, context: protobind.Context) -> Response:
            return Response(text=request.text)

    async def main() -> None:
        server = protobind.Server([Service()])
        await server.start(f"http://127.0.0.1:{port}")
        await asyncio.Event().wait()

    # the same event loop uvicorn's "auto" picks for the connectrpc server (uvloop when installed)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


# --- clients ---------------------------------------------------------------------------------------


async def drive(call: Any, seconds: float) -> float:
    for _ in range(CONCURRENCY):
        await call()  # warm the pool
    count = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < stop:
            await call()
            count += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return count / (time.perf_counter() - start)


async def run_connectrpc(stubs: ModuleType, port: int, codec: str, seconds: float) -> float:
    from connectrpc.compat import google_protobuf_json_codec

    from protobind.conformance.v1.conformance_pb2 import Request

    kwargs: dict[str, Any] = {"codec": google_protobuf_json_codec()} if codec == "json" else {}
    request = Request(text=TEXT)
    async with stubs.ConformanceServiceClient(f"http://127.0.0.1:{port}", **kwargs) as client:

        async def call() -> None:
            reply = await client.unary(request)
            assert reply.text == TEXT

        return await drive(call, seconds)


async def run_protobind(port: int, codec: str, seconds: float) -> float:
    import protobind
    from protobind.conformance.v1.conformance_pb2 import Request
    from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

    request = Request(text=TEXT)
    async with protobind.connect(f"http://127.0.0.1:{port}", options={"codec": codec}) as channel:
        client = ConformanceServiceClient(channel)

        async def call() -> None:
            reply = await client.unary(request)
            assert reply.text == TEXT

        return await drive(call, seconds)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", choices=["connectrpc", "protobind"])
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.serve == "connectrpc":
        serve_connectrpc(args.port)
        return
    if args.serve == "protobind":
        serve_protobind(args.port)
        return

    ports = {"connectrpc": free_port(), "protobind": free_port()}
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "runtime"), os.environ.get("PYTHONPATH", "")])
    )
    children = [
        subprocess.Popen([sys.executable, __file__, "--serve", name, "--port", str(port)], env=env)
        for name, port in ports.items()
    ]
    try:
        for port in ports.values():
            wait_port(port)
        with tempfile.TemporaryDirectory() as tmp:
            stubs = connect_stubs(Path(tmp))
        results: dict[tuple[str, str], list[float]] = {}
        pids = dict(zip(ports, (child.pid for child in children), strict=True))
        for round_ in range(args.rounds):
            for codec in ("json", "proto"):
                for name in ("connectrpc", "protobind"):
                    server_cpu, client_cpu = cpu_seconds(pids[name]), time.process_time()
                    if name == "connectrpc":
                        rate = asyncio.run(run_connectrpc(stubs, ports[name], codec, args.seconds))
                    else:
                        rate = asyncio.run(run_protobind(ports[name], codec, args.seconds))
                    calls = rate * args.seconds + CONCURRENCY
                    server_us = (cpu_seconds(pids[name]) - server_cpu) / calls * 1e6
                    client_us = (time.process_time() - client_cpu) / calls * 1e6
                    results.setdefault((name, codec), []).append(rate)
                    print(
                        f"round {round_ + 1} {codec:5} {name:10} {rate:8.0f} calls/s"
                        f"  CPU per call: server {server_us:4.0f} us, client {client_us:4.0f} us",
                        flush=True,
                    )
        print()
        for codec in ("json", "proto"):
            ours = statistics.median(results[("protobind", codec)])
            theirs = statistics.median(results[("connectrpc", codec)])
            print(f"{codec:5} protobind {ours:7.0f}  connectrpc {theirs:7.0f}  ratio {ours / theirs:.2f}x")
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(10)


if __name__ == "__main__":
    main()
