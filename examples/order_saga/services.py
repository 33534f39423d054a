"""The saga's three services. Durable calls are delivered at least once, so every handler is
idempotent: it checks, by order id, whether its work is already done before doing it."""

from __future__ import annotations

import itertools

from google.protobuf.empty_pb2 import Empty
from shop.v1.saga_pb2 import (
    ChargePayment,
    GetOrderRequest,
    Order,
    OrderOutcome,
    OrderPlaced,
    PlaceOrderRequest,
    ReleaseStock,
)
from shop.v1.saga_protobind import (
    InventoryClient,
    InventoryService,
    OrdersClient,
    OrdersService,
    PaymentsClient,
    PaymentsService,
)

import protobind
from protobind import Code, RpcError


def log(text: str) -> None:
    print(f"  {text}", flush=True)


def describe(order: Order) -> str:
    return ", ".join(f"{item.quantity} x {item.sku}" for item in order.items)


class OrderDesk(OrdersService):
    """Takes orders (over HTTP) and records how their sagas end (over NATS)."""

    def __init__(self, nats: protobind.Channel) -> None:
        self.orders: dict[str, Order] = {}
        self.inventory = InventoryClient(nats)
        self._ids = itertools.count(1)

    async def place_order(self, request: PlaceOrderRequest, context: protobind.Context) -> Order:
        if not request.items or request.amount <= 0:
            raise RpcError(Code.INVALID_ARGUMENT, "an order needs items and an amount")
        order = Order(
            id=f"o-{next(self._ids)}",
            customer=request.customer,
            items=request.items,
            amount=request.amount,
            status="PENDING",
        )
        self.orders[order.id] = order
        # durable: once this returns, JetStream holds the event, whatever happens to this process
        await self.inventory.reserve(OrderPlaced(order=order))
        log(f"orders     {order.id} placed by {order.customer}: {describe(order)}, {order.amount / 100:.2f}")
        return order

    async def get_order(self, request: GetOrderRequest, context: protobind.Context) -> Order:
        order = self.orders.get(request.id)
        if order is None:
            raise RpcError(Code.NOT_FOUND, f"no order {request.id}")
        return order

    async def settle(self, request: OrderOutcome, context: protobind.Context) -> Empty:
        order = self.orders[request.order_id]
        if order.status == "PENDING":  # a second delivery of the outcome changes nothing
            order.status = "COMPLETED" if request.completed else "CANCELLED"
            order.reason = request.reason
            log(f"orders     {order.id} {order.status.lower()}{': ' + order.reason if order.reason else ''}")
        return Empty()


class Warehouse(InventoryService):
    """Reserves stock for placed orders, and gives it back when a later step fails."""

    def __init__(self, nats: protobind.Channel, stock: dict[str, int]) -> None:
        self.stock = dict(stock)
        self.reserved: dict[str, list[tuple[str, int]]] = {}
        self.orders = OrdersClient(nats)
        self.payments = PaymentsClient(nats)

    async def reserve(self, request: OrderPlaced, context: protobind.Context) -> Empty:
        order = request.order
        if order.id in self.reserved:
            return Empty()  # delivered again: already reserved
        missing = [item.sku for item in order.items if self.stock.get(item.sku, 0) < item.quantity]
        if missing:
            log(f"inventory  {order.id}: out of stock: {', '.join(missing)}")
            await self.orders.settle(
                OrderOutcome(order_id=order.id, reason=f"out of stock: {', '.join(missing)}")
            )
            return Empty()
        for item in order.items:
            self.stock[item.sku] -= item.quantity
        self.reserved[order.id] = [(item.sku, item.quantity) for item in order.items]
        log(f"inventory  {order.id}: reserved {describe(order)}")
        await self.payments.charge(ChargePayment(order=order))
        return Empty()

    async def release(self, request: ReleaseStock, context: protobind.Context) -> Empty:
        items = self.reserved.pop(request.order_id, None)
        if items is not None:  # None: released already
            for sku, quantity in items:
                self.stock[sku] += quantity
            released = ", ".join(f"{quantity} x {sku}" for sku, quantity in items)
            log(f"inventory  {request.order_id}: released {released} (compensation)")
        return Empty()


class Bank(PaymentsService):
    """Charges cards up to a limit. Its line to the card network drops on a customer's first
    attempt (``flaky``): UNAVAILABLE, which JetStream redelivers after the backoff."""

    def __init__(self, nats: protobind.Channel, limit: int, flaky: set[str]) -> None:
        self.limit = limit
        self.flaky = flaky
        self.charged: dict[str, int] = {}
        self.orders = OrdersClient(nats)
        self.inventory = InventoryClient(nats)

    async def charge(self, request: ChargePayment, context: protobind.Context) -> Empty:
        order = request.order
        assert context.delivery is not None
        attempt = context.delivery.attempt
        if order.customer in self.flaky and attempt == 1:
            log(f"payments   {order.id}: card network unavailable (attempt {attempt}); JetStream will retry")
            raise RpcError(Code.UNAVAILABLE, "card network unavailable")
        if order.amount > self.limit:
            log(f"payments   {order.id}: card of {order.customer} declined")
            # compensate the steps that succeeded, then end the saga
            await self.inventory.release(ReleaseStock(order_id=order.id, items=order.items))
            await self.orders.settle(OrderOutcome(order_id=order.id, reason="payment declined"))
            return Empty()
        if order.id not in self.charged:
            self.charged[order.id] = order.amount
            amount = f"{order.amount / 100:.2f}"
            log(f"payments   {order.id}: charged {amount} to {order.customer} (attempt {attempt})")
        await self.orders.settle(OrderOutcome(order_id=order.id, completed=True))
        return Empty()
