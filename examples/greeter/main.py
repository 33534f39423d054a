"""Serve the Greeter and call it: on inproc by default, or on every transport with --all.

python examples/greeter/main.py                   # inproc://greeter
python examples/greeter/main.py --all             # gRPC, HTTP (Connect) and NATS at once
python examples/greeter/main.py --url grpc://127.0.0.1:50051
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _support import generate_stubs, run_example  # noqa: E402

generate_stubs(HERE)

from greeter.v1.greeter_pb2 import HelloRequest  # noqa: E402
from greeter.v1.greeter_protobind import GreeterClient  # noqa: E402
from service import Greeter  # noqa: E402

import protobind  # noqa: E402


async def call(url: str, n: int) -> None:
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


if __name__ == "__main__":
    run_example(Greeter(), call, "inproc://greeter", __doc__)
