"""Options of the Kafka binding: the connection's, the topics' and the broker engine's
(docs/brokers.md, "Kafka", has the table)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._version import __version__
from ..broker.base import EngineSettings
from ..broker.durable.settings import DURABLE_CLIENT_OPTIONS, DURABLE_SERVER_OPTIONS, durable_settings
from ..codec import codec_named
from ..options import DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_PENDING, OptionReader

__all__ = [
    "CLIENT_OPTIONS",
    "DEFAULT_TOPIC",
    "SERVER_OPTIONS",
    "Settings",
    "client_url",
    "settings_from",
]

#: The topic of a method's calls: ``{prefix}`` (the binding's prefix, with its trailing dot),
#: ``{service}`` (the service's full name) and ``{method}``.
DEFAULT_TOPIC = "{prefix}{service}.{method}"
#: Kafka's own default limit on a record batch (``message.max.bytes``), rounded down.
DEFAULT_MAX_PAYLOAD = 1024 * 1024

_SERVER_OPTIONS = {
    "queue_group",
    "max_concurrency",
    "max_pending",
    "version",
    "reflection",
    "rebalance_grace",
}
_CLIENT_OPTIONS = {"codec"}
_CONNECTION_OPTIONS = {
    "prefix",
    "window",
    "heartbeat",
    "max_message_size",
    "topic",
    "partitions",
    "replication_factor",
    "control_topic",
    "idempotence",
    "max_payload",
    "fetch_wait",
    "linger",
    "client_id",
    "connect_timeout",
    "session_timeout",
}
SERVER_OPTIONS = frozenset(_SERVER_OPTIONS | _CONNECTION_OPTIONS | DURABLE_SERVER_OPTIONS)
CLIENT_OPTIONS = frozenset(_CLIENT_OPTIONS | _CONNECTION_OPTIONS | DURABLE_CLIENT_OPTIONS)

_TEMPLATE_FIELDS = re.compile(r"\{(\w*)\}")


@dataclass(frozen=True, slots=True)
class Settings:
    """A Kafka binding's options."""

    bootstrap: list[str]
    engine: EngineSettings
    topic: str = DEFAULT_TOPIC
    partitions: int = 4
    replication_factor: int = 1
    control_topic: str = "protobind.control"
    idempotence: bool = True
    max_payload: int = DEFAULT_MAX_PAYLOAD
    fetch_wait: float = 0.05
    linger: float = 0.0
    client_id: str = "protobind"
    connect_timeout: float = 10.0
    rebalance_grace: float = 10.0
    session_timeout: float = 10.0


def settings_from(url: str, options: Mapping[str, Any]) -> Settings:
    """Parse a ``kafka://host:port[,host:port]`` URL and its options."""
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise ValueError(f"not a Kafka URL: {url!r}")
    hosts = [host.strip() for host in parts.netloc.split(",") if host.strip()]
    if not hosts or "@" in parts.netloc:
        raise ValueError("a Kafka URL is kafka://host:port[,host:port...]")
    reader = OptionReader("kafka", options)
    prefix = str(options.get("prefix", "") or "")
    if prefix and not prefix.endswith("."):
        prefix += "."
    codec_name = str(options.get("codec", "proto")).lower()
    codec_named(codec_name)
    topic = reader.text("topic") or DEFAULT_TOPIC
    fields = set(_TEMPLATE_FIELDS.findall(topic))
    if not fields <= {"prefix", "service", "method"} or not {"service", "method"} <= fields:
        raise reader.error(
            "topic", f"must use {{service}} and {{method}} (and may use {{prefix}}), not {topic!r}"
        )
    engine = EngineSettings(
        prefix=prefix,
        queue_group=str(options.get("queue_group", "")),
        max_concurrency=reader.positive_int("max_concurrency", DEFAULT_MAX_CONCURRENCY),
        max_pending=reader.count("max_pending", DEFAULT_MAX_PENDING),
        max_message_size=reader.positive_int("max_message_size", DEFAULT_MAX_MESSAGE_SIZE),
        window=reader.positive_int("window", 64),
        heartbeat=max(0.01, reader.seconds("heartbeat", 5.0)),
        codec_name=codec_name,
        version=str(options.get("version", __version__)),
        reflection=reader.flag("reflection", True),
        durable=durable_settings("kafka", options),
    )
    return Settings(
        bootstrap=hosts,
        engine=engine,
        topic=topic,
        partitions=reader.positive_int("partitions", 4),
        replication_factor=reader.positive_int("replication_factor", 1),
        control_topic=reader.text("control_topic") or "protobind.control",
        idempotence=reader.flag("idempotence", True),
        max_payload=reader.positive_int("max_payload", DEFAULT_MAX_PAYLOAD),
        fetch_wait=reader.seconds("fetch_wait", 0.05),
        linger=_non_negative(reader, "linger"),
        client_id=reader.text("client_id") or "protobind",
        connect_timeout=reader.seconds("connect_timeout", 10.0),
        rebalance_grace=reader.seconds("rebalance_grace", 10.0),
        session_timeout=reader.seconds("session_timeout", 10.0),
    )


def _non_negative(reader: OptionReader, name: str) -> float:
    value = reader.options.get(name, 0.0)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise reader.error(name, f"must be a number of seconds, not {value!r}") from None
    if not 0 <= number < 60:
        raise reader.error(name, f"must be 0 or more seconds (under a minute), not {value!r}")
    return number


def client_url(url: str) -> str:
    """``url`` without the server-only options of its query string: what a client dials."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k in CLIENT_OPTIONS]
    return urlunsplit(parts._replace(query=urlencode(kept)))
