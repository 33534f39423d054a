"""An order saga, end to end: orders placed over HTTP, the rest over NATS JetStream.

python examples/order_saga/main.py          # starts a private nats-server with JetStream

Set PROTOBIND_NATS_URL to use a running nats-server (started with -js) instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _support import generate_stubs  # noqa: E402

generate_stubs(HERE)
sys.path.insert(0, str(HERE))

from services import Bank, OrderDesk, Warehouse  # noqa: E402

import protobind  # noqa: E402

SHOPPERS = [
    ("ada", [("book", 2)], 3500),  # in stock, paid: completed
    ("bob", [("lamp", 1)], 4900),  # paid on the second attempt: the first hits a flaky network
    ("cyd", [("book", 1)], 25000),  # over the card limit: declined, its book released
    ("dan", [("kite", 1)], 1200),  # out of stock: cancelled before any payment
]


def http(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A plain HTTP/JSON request, as any shop front end would send it."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


async def settled(base: str, order_id: str) -> dict[str, Any]:
    for _ in range(300):
        order = await asyncio.to_thread(http, "GET", f"{base}/v1/orders/{order_id}")
        if order["status"] != "PENDING":
            return order
        await asyncio.sleep(0.05)
    raise TimeoutError(f"order {order_id} did not settle")


async def main(nats_url: str) -> None:
    # three deployments: each service has its own server and its own NATS connection for calls
    channels = [await protobind.connect(nats_url).open() for _ in range(3)]
    desk = OrderDesk(channels[0])
    warehouse = Warehouse(channels[1], {"book": 5, "lamp": 1})
    bank = Bank(channels[2], limit=20000, flaky={"bob"})
    servers = [protobind.Server([desk]), protobind.Server([warehouse]), protobind.Server([bank])]
    http_url, _ = await servers[0].start("http://127.0.0.1:0", nats_url)
    await servers[1].start(nats_url)
    await servers[2].start(nats_url)
    try:
        print(f"orders on {http_url} and NATS; inventory and payments on NATS (durable calls)")
        for customer, items, amount in SHOPPERS:
            print(f"POST {http_url}/v1/orders  ({customer})")
            body = {
                "customer": customer,
                "items": [{"sku": s, "quantity": q} for s, q in items],
                "amount": amount,
            }
            placed = await asyncio.to_thread(http, "POST", f"{http_url}/v1/orders", body)
            order = await settled(http_url, placed["id"])
            reason = f" ({order['reason']})" if order.get("reason") else ""
            print(f"GET  {http_url}/v1/orders/{order['id']} -> {order['status']}{reason}")
        print("stock left: " + ", ".join(f"{sku} {count}" for sku, count in sorted(warehouse.stock.items())))
        print(f"charged: {', '.join(f'{o} {c / 100:.2f}' for o, c in sorted(bank.charged.items()))}")
    finally:
        for server in servers:
            await server.stop(grace=2.0)
        for channel in channels:
            await channel.close()


if __name__ == "__main__":
    url = os.environ.get("PROTOBIND_NATS_URL")
    if url:
        asyncio.run(main(url))
    else:
        from protobind.nats.embedded import start_nats_server

        url, stop = start_nats_server(args=["-js"])
        try:
            asyncio.run(main(url))
        finally:
            stop()
