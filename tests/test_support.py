"""tests/support.py: the helpers other tests rely on to be free of races."""

from __future__ import annotations

from pathlib import Path

from .support import free_port


def test_free_port_is_outside_the_ephemeral_range_and_never_handed_out_twice() -> None:
    # A port in the ephemeral range can be taken, as the local port of any connection made, between
    # the pick and a booting broker's bind; two ports picked in a row must differ (RabbitMQ's AMQP
    # and distribution ports, a cluster's routes).
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    if low - max(1024, low // 2) >= 1000 or 65535 - high >= 1000:
        assert not any(low <= port <= high for port in ports)
