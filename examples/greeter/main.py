"""Serve the Greeter and call it: on inproc by default, or on every transport with --all.

python examples/greeter/main.py                   # inproc://greeter
python examples/greeter/main.py --all             # gRPC, HTTP (Connect) and NATS at once
python examples/greeter/main.py --url grpc://127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _support import all_transport_urls, generate_stubs  # noqa: E402

generate_stubs(HERE)

from greeter.v1.greeter_pb2 import HelloRequest  # noqa: E402
from greeter.v1.greeter_protobind import GreeterClient  # noqa: E402
from service import Greeter  # noqa: E402

import protobind  # noqa: E402


async def call(url: str) -> None:
    async with protobind.connect(url) as channel:
        client = GreeterClient(channel)
        reply = await client.say_hello(HelloRequest(name="Ada"), timeout=5.0)
        print(f"  say_hello    -> {reply.message}")
        async for item in client.reply_stream(HelloRequest(name="Ada", count=2), timeout=5.0):
            print(f"  reply_stream -> {item.message}")
        try:
            await client.say_hello(HelloRequest(), timeout=5.0)
        except protobind.RpcError as exc:
            print(f"  say_hello('') -> RpcError {exc.code.name}: {exc.message}")


async def main(urls: list[str]) -> None:
    async with all_transport_urls(urls) as bind_urls:
        server = protobind.Server([Greeter()])
        bound = await server.start(*bind_urls)
        try:
            for url in bound:
                print(f"{url}")
                await call(url)
        finally:
            await server.stop(grace=1.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--url", action="append", default=[], help="URL to serve and call (repeatable)")
    parser.add_argument("--all", action="store_true", help="gRPC, HTTP and NATS (embedded nats-server)")
    args = parser.parse_args()
    asyncio.run(main(["all"] if args.all else args.url or ["inproc://greeter"]))
