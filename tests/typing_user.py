"""A user's module over the edge corpus: checked by mypy --strict and pyright in test_typing.py.

It is not collected by pytest (no test_ prefix) and is type-checked as text against freshly
generated code; every construct of the corpus is built, read and passed through a service.
"""

from collections.abc import AsyncIterator, Iterator

from common.v1.money_pb2 import STATUS_ACTIVE, Money, Status
from google.protobuf.duration_pb2 import Duration
from google.protobuf.empty_pb2 import Empty
from google.protobuf.timestamp_pb2 import Timestamp
from shop.v1.shop_protobind import ShopClient, ShopService, ShopSyncClient
from shop.v1.types_pb2 import Item
from todo.v1 import todo_pb2
from todo.v1.todo_protobind import TodoService, TodoServiceClient, TodoServiceSyncClient

import protobind


def build() -> Item:
    item = Item(
        id="a",
        price=Money(currency_code="EUR", units=3),
        variants=[Item.Variant(sku="s", size=Item.Variant.SIZE_S)],
        stock={"x": 1},
        amount=Money(units=1),
        created=Timestamp(seconds=1),
        status=Status.STATUS_ACTIVE,
        label="l",
        tags=["t"],
        blob=b"\x00",
        prices={"eur": Money(units=2)},
        states={1: STATUS_ACTIVE},
        ttl=Duration(seconds=5),
        size_hint=Item.Variant.SIZE_S,
        history=[Status.STATUS_ACTIVE],
    )
    item.prices["usd"].units = 4
    item.states[2] = Status.STATUS_UNSPECIFIED
    item.variants.add(sku="t")
    item.tags.append("u")
    item.extra.Pack(Money(units=9))
    item.note.value = "n"
    item.attributes.update({"k": "v"})
    setattr(item, "from", "there")  # keyword-named fields have no attribute in any stub
    return item


def read(item: Item) -> tuple[str, int, bytes, list[str], float]:
    which = item.WhichOneof("discount")
    amount = item.amount.units if which == "amount" else item.percent
    if item.HasField("label"):
        amount += len(item.label)
    size: Item.Variant.Size.ValueType = item.variants[0].size
    name: str = Item.Variant.Size.Name(size)
    status: int = item.status
    stock: int = item.stock["x"]
    price: Money = item.prices["eur"]
    units: int = price.units + stock + status + amount
    tags: list[str] = list(item.tags)
    blob: bytes = item.blob
    seconds: float = item.ttl.ToTimedelta().total_seconds()
    return name, units, blob, tags, seconds


class Shop(ShopService):
    async def get_item(self, request: Item, context: protobind.Context) -> Item:
        reply = Item()
        reply.CopyFrom(request)
        reply.stock[context.method] = len(request.variants)
        return reply

    def shop(self, requests: AsyncIterator[Item], context: protobind.Context) -> AsyncIterator[Item.Variant]:
        async def variants() -> AsyncIterator[Item.Variant]:
            async for item in requests:
                yield Item.Variant(sku=item.id)

        return variants()

    async def http_status(self, request: Empty, context: protobind.Context) -> AsyncIterator[Money]:
        yield Money(units=1)

    async def tally(self, requests: AsyncIterator[Money], context: protobind.Context) -> Money:
        total = Money()
        async for money in requests:
            total.units += money.units
        return total

    async def notify(self, request: Item, context: protobind.Context) -> Empty:
        return Empty()


class Todos(TodoService):
    async def create_todo(self, request: todo_pb2.Todo, context: protobind.Context) -> todo_pb2.Todo:
        return request


async def use(channel: protobind.Channel) -> list[str]:
    client = ShopClient(channel)
    call = protobind.CallInfo()
    item: Item = await client.get_item(build(), timeout=1.0, metadata={"x-user": "ada"}, call=call)
    skus = [v.sku async for v in client.shop([item])]
    async for money in client.http_status(Empty()):
        skus.append(str(money.units))
    total: Money = await client.tally([Money(units=2)])
    await client.notify(item)  # one-way: returns None
    reserved: Money = await client.reserve(item)
    await client.record(item)
    created = await TodoServiceClient(channel).create_todo(todo_pb2.Todo(title="t"))
    message = todo_pb2.TodoServiceClient(name="a message, not the generated client")
    return [*skus, str(total.units), str(reserved.units), created.title, message.name]


def use_blocking(channel: protobind.SyncChannel) -> list[str]:
    client = ShopSyncClient(channel)
    call = protobind.CallInfo()
    item: Item = client.get_item(build(), timeout=1.0, metadata={"x-user": "ada"}, call=call)
    variants: Iterator[Item.Variant] = client.shop(Item(id=str(i)) for i in range(2))
    skus = [v.sku for v in variants]
    skus += [str(money.units) for money in client.http_status(Empty())]
    total: Money = client.tally([Money(units=2)])
    client.notify(item)  # one-way: returns None
    reserved: Money = client.reserve(item)
    created = TodoServiceSyncClient(channel).create_todo(todo_pb2.Todo(title="t"))
    return [*skus, str(total.units), str(reserved.units), created.title]


async def configured() -> tuple[Item, Item]:
    async with protobind.client(ShopClient) as shop:
        item = await shop.get_item(Item())
    with protobind.client_sync(ShopSyncClient, name="shop") as blocking:
        return item, blocking.get_item(Item())
