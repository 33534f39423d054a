"""protobind.testing.serving: the helper users write contract tests with."""

from __future__ import annotations

import pytest

import protobind
import protobind.testing
from protobind.conformance.v1.conformance_pb2 import Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

from .conformance import Conformance


@pytest.mark.parametrize("transport", protobind.testing.TRANSPORTS)
async def test_serving_every_transport(transport: str) -> None:
    async with (
        protobind.testing.serving([Conformance()], transport) as url,
        protobind.connect(url) as channel,
    ):
        reply = await ConformanceServiceClient(channel).unary(Request(text="hi"), timeout=10)
    assert reply.text == "hi"
    assert reply.transport == transport


async def test_unknown_transport() -> None:
    with pytest.raises(ValueError, match="unknown transport"):
        async with protobind.testing.serving([Conformance()], "carrier-pigeon"):
            pass
