"""The Greeter's contract suite: every test runs once per transport (protobind's pytest plugin).

pytest examples/greeter/tests                                   # inproc, grpc, http, nats, memory
pytest examples/greeter/tests --protobind-transports=grpc,nats  # a subset
"""

import pytest
from greeter.v1.greeter_pb2 import HelloRequest
from greeter.v1.greeter_protobind import GreeterClient
from service import Greeter

import protobind


@pytest.fixture
def protobind_services():
    return [Greeter()]


@pytest.fixture
def client(protobind_channel):
    return GreeterClient(protobind_channel)


async def test_say_hello(client, protobind_transport):
    call = protobind.CallInfo()
    reply = await client.say_hello(HelloRequest(name="Ada"), timeout=5, call=call)
    assert reply.message == f"Hello, Ada! (via {protobind_transport})"
    assert call.headers["x-greeter"] == "v1"


async def test_name_is_required(client):
    with pytest.raises(protobind.RpcError) as error:
        await client.say_hello(HelloRequest(name=""), timeout=5)
    assert error.value.code is protobind.Code.INVALID_ARGUMENT


async def test_reply_stream(client):
    replies = [r.message async for r in client.reply_stream(HelloRequest(name="Ada", count=2), timeout=5)]
    assert replies == ["Hello #1, Ada!", "Hello #2, Ada!"]


@pytest.mark.protobind(transports=["grpc", "nats"])
async def test_only_on_some_transports(client, protobind_transport):
    assert protobind_transport in ("grpc", "nats")
    reply = await client.say_hello(HelloRequest(name="Bo"), timeout=5)
    assert reply.message.endswith(f"(via {protobind_transport})")
