"""Options of the RabbitMQ binding: the connection's and the broker engine's (docs/protocols.md)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .._version import __version__
from ..broker.base import EngineSettings
from ..broker.durable._settings import DURABLE_CLIENT_OPTIONS, DURABLE_SERVER_OPTIONS, durable_settings
from ..codec import codec_named
from ..options import DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_PENDING, OptionReader

__all__ = [
    "CLIENT_OPTIONS",
    "DEFAULT_EXCHANGE",
    "SERVER_OPTIONS",
    "Settings",
    "client_url",
    "settings_from",
]

#: The topic exchange every call subject is published to, unless the option ``exchange`` names another.
DEFAULT_EXCHANGE = "protobind"

_SERVER_OPTIONS = {"queue_group", "max_concurrency", "max_pending", "version", "reflection", "prefetch"}
_CLIENT_OPTIONS = {"codec"}
_CONNECTION_OPTIONS = {
    "prefix",
    "exchange",
    "window",
    "heartbeat",
    "name",
    "connect_timeout",
    "reconnect_wait",
    "user",
    "password",
    "vhost",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "max_message_size",
    "ssl_context",
}
SERVER_OPTIONS = frozenset(_SERVER_OPTIONS | _CONNECTION_OPTIONS | DURABLE_SERVER_OPTIONS)
CLIENT_OPTIONS = frozenset(_CLIENT_OPTIONS | _CONNECTION_OPTIONS | DURABLE_CLIENT_OPTIONS)


@dataclass(frozen=True, slots=True)
class Settings:
    """A RabbitMQ binding's options: where and how to connect, and the engine's settings."""

    host: str
    port: int
    user: str
    password: str
    vhost: str
    tls: ssl.SSLContext | None
    exchange: str
    name: str
    connect_timeout: float
    reconnect_wait: float
    prefetch: int
    engine: EngineSettings

    @property
    def shown(self) -> str:
        """Where it connects, without credentials (for errors and logs)."""
        scheme = "amqps" if self.tls is not None else "amqp"
        return f"{scheme}://{self.host}:{self.port}/{self.vhost if self.vhost != '/' else ''}"


def settings_from(url: str, options: Mapping[str, Any]) -> Settings:
    """Parse an ``amqp://`` or ``amqps://`` URL and its options."""
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(f"not an AMQP URL: {url!r}")
    reader = OptionReader("amqp", options)
    if not parts.hostname:
        raise ValueError("AMQP URL needs a host: amqp://user:password@host:port/vhost")
    try:
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    except ValueError:
        raise ValueError("AMQP URL has an invalid port") from None
    user = str(options["user"]) if "user" in options else unquote(parts.username or "guest")
    password = str(options["password"]) if "password" in options else unquote(parts.password or "guest")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    vhost = str(options["vhost"]) if "vhost" in options else (unquote(path) or "/")
    prefix = str(options.get("prefix", "") or "")
    if prefix and not prefix.endswith("."):
        prefix += "."
    if any(c in prefix for c in "#* "):
        raise ValueError("amqp option prefix may not contain '#', '*' or spaces")
    exchange = str(options.get("exchange", DEFAULT_EXCHANGE) or DEFAULT_EXCHANGE)
    codec_name = str(options.get("codec", "proto")).lower()
    codec_named(codec_name)  # unknown names fail here, with the list of known ones
    tls = reader.tls_context()
    if parts.scheme == "amqps" and tls is None:
        tls = ssl.create_default_context()
    max_concurrency = reader.positive_int("max_concurrency", DEFAULT_MAX_CONCURRENCY)
    max_pending = reader.count("max_pending", DEFAULT_MAX_PENDING)
    engine = EngineSettings(
        prefix=prefix,
        queue_group=str(options.get("queue_group", "")),
        max_concurrency=max_concurrency,
        max_pending=max_pending,
        max_message_size=reader.positive_int("max_message_size", DEFAULT_MAX_MESSAGE_SIZE),
        window=reader.positive_int("window", 64),
        heartbeat=max(0.01, reader.seconds("heartbeat", 5.0)),
        codec_name=codec_name,
        version=str(options.get("version", __version__)),
        reflection=reader.flag("reflection", True),
        durable=durable_settings("amqp", options),
    )
    return Settings(
        host=parts.hostname,
        port=port,
        user=user,
        password=password,
        vhost=vhost,
        tls=tls,
        exchange=exchange,
        name=str(options.get("name", "")),
        connect_timeout=reader.seconds("connect_timeout", 5.0),
        reconnect_wait=reader.seconds("reconnect_wait", 1.0),
        # unacknowledged call messages RabbitMQ pushes to one server binding: what its handlers and
        # its waiting line hold; the rest stays in the queue (for other replicas)
        prefetch=min(65535, reader.positive_int("prefetch", max_concurrency + max(max_pending, 1))),
        engine=engine,
    )


def client_url(url: str) -> str:
    """``url`` without the server-only options of its query string: what a client dials."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k in CLIENT_OPTIONS]
    return urlunsplit(parts._replace(query=urlencode(kept)))
