"""Options of the MQTT 5 binding: the connection's and the broker engine's (docs/protocols.md)."""

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
    "SERVER_OPTIONS",
    "Settings",
    "client_url",
    "settings_from",
]

_SERVER_OPTIONS = {
    "queue_group",
    "max_concurrency",
    "max_pending",
    "version",
    "reflection",
    "replica",
    "session_expiry",
    "max_waiting",
}
_CLIENT_OPTIONS = {"codec"}
_CONNECTION_OPTIONS = {
    "prefix",
    "window",
    "heartbeat",
    "client_id",
    "keepalive",
    "connect_timeout",
    "reconnect_wait",
    "max_reconnect_attempts",
    "user",
    "password",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "tls_server_name",
    "max_message_size",
    "ssl_context",
}
#: Durable options MQTT cannot honour, and why: refused when given, never accepted and ignored
#: (docs/brokers.md, "MQTT 5", durable delivery).
REFUSED = {
    "ack_wait": "MQTT has no acknowledgement timeout: an unacknowledged call comes back only when "
    "its server's session reconnects",
    "stream_name": "MQTT has no streams to name: calls are kept in the servers' persistent sessions",
    "dead_letter_stream": "MQTT has no streams to name: dead letters are retained messages",
    "reply_stream": "MQTT has no streams to name: replies are retained messages",
    "stream_retention": "how long MQTT keeps messages is the broker's configuration",
    "stream_replicas": "how MQTT stores messages is the broker's configuration",
    "stream_storage": "how MQTT stores messages is the broker's configuration (mosquitto: persistence)",
    "stream_max_age": "how long MQTT keeps messages is the broker's configuration",
    "stream_max_bytes": "how much MQTT keeps is the broker's configuration (mosquitto: max_queued_messages)",
}
SERVER_OPTIONS = frozenset(_SERVER_OPTIONS | _CONNECTION_OPTIONS | DURABLE_SERVER_OPTIONS)
CLIENT_OPTIONS = frozenset(_CLIENT_OPTIONS | _CONNECTION_OPTIONS | DURABLE_CLIENT_OPTIONS)
#: A session that never expires (MQTT 5's largest session expiry interval).
NEVER = 0xFFFFFFFF

#: Calls (and bytes of their bodies) a method subscription of a server holds while its handlers
#: are busy: what protobind keeps in memory for a slow server, whatever the callers send.
DEFAULT_MAX_WAITING = 65_536
MAX_WAITING_BYTES = 64 * 1024 * 1024

#: The ports MQTT brokers listen on by default, plaintext and TLS.
PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True, slots=True)
class Settings:
    """An MQTT binding's options: where and how to connect, and the engine's settings."""

    host: str
    port: int
    #: None: plaintext; an ``mqtts://`` URL or any TLS option means TLS or an error, never plaintext
    tls: ssl.SSLContext | None
    tls_server_name: str | None
    user: str | None
    password: str | None
    #: the MQTT client identifier; empty: a random one per connection
    client_id: str
    keepalive: int
    connect_timeout: float
    reconnect_wait: float
    #: -1: for ever
    max_reconnect_attempts: int
    #: a server replica's name, part of its persistent sessions' client ids (durable methods)
    replica: str
    #: seconds the broker keeps a durable server's session while it is disconnected
    session_expiry: int
    #: calls a server's method subscription holds for busy handlers; beyond it (or beyond
    #: MAX_WAITING_BYTES) a new call is dropped, as by a slow consumer (docs/brokers.md)
    max_waiting: int
    engine: EngineSettings
    #: the URL without credentials, for error texts and logs
    shown: str


def settings_from(url: str, options: Mapping[str, Any]) -> Settings:
    """Parse an MQTT URL and its options into connection and engine settings."""
    parts = urlsplit(url)
    if parts.scheme not in PORTS:
        raise ValueError(f"not an MQTT URL: {url!r}")
    if not parts.hostname:
        raise ValueError("an MQTT URL needs a host: mqtt://host:port")
    try:
        port = parts.port or PORTS[parts.scheme]
    except ValueError:
        raise ValueError("the port of an MQTT URL must be a number") from None
    reader = OptionReader("mqtt", options)
    for key, why in REFUSED.items():
        if key in options:
            raise reader.error(key, f"cannot be honoured on MQTT: {why} (docs/brokers.md)")
    # "/" (MQTT's level separator) and "." (the engine's) both separate levels of the prefix
    prefix = str(options.get("prefix", "") or "").replace("/", ".")
    if prefix and not prefix.endswith("."):
        prefix += "."
    codec_name = str(options.get("codec", "proto")).lower()
    codec_named(codec_name)  # unknown names fail here, with the list of known ones
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if "user" in options:
        user = str(options["user"])
    if "password" in options:
        password = str(options["password"])
    tls = reader.tls_context(("tls_ca", "tls_cert", "tls_key", "tls_server_name"))
    if tls is None and parts.scheme == "mqtts":
        tls = ssl.create_default_context()
    group = str(options.get("queue_group", ""))
    if any(c in group for c in "/+#"):
        raise reader.error("queue_group", f"must not contain '/', '+' or '#', not {group!r}")
    engine = EngineSettings(
        prefix=prefix,
        queue_group=group,
        max_concurrency=reader.positive_int("max_concurrency", DEFAULT_MAX_CONCURRENCY),
        max_pending=reader.count("max_pending", DEFAULT_MAX_PENDING),
        max_message_size=reader.positive_int("max_message_size", DEFAULT_MAX_MESSAGE_SIZE),
        window=reader.positive_int("window", 64),
        heartbeat=max(0.01, reader.seconds("heartbeat", 5.0)),
        codec_name=codec_name,
        version=str(options.get("version", __version__)),
        reflection=reader.flag("reflection", True),
        durable=durable_settings("mqtt", options),
    )
    replica = reader.text("replica") or ""
    if any(c in replica for c in "/+#"):
        raise reader.error("replica", f"must not contain '/', '+' or '#', not {replica!r}")
    netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    return Settings(
        host=parts.hostname,
        port=port,
        tls=tls,
        tls_server_name=reader.text("tls_server_name"),
        user=user,
        password=password,
        client_id=reader.text("client_id") or "",
        keepalive=reader.positive_int("keepalive", 30),
        connect_timeout=reader.seconds("connect_timeout", 2.0),
        reconnect_wait=reader.seconds("reconnect_wait", 0.5),
        max_reconnect_attempts=int(options.get("max_reconnect_attempts", -1)),
        replica=replica,
        session_expiry=min(NEVER, int(reader.seconds("session_expiry", NEVER))),
        max_waiting=reader.positive_int("max_waiting", DEFAULT_MAX_WAITING),
        engine=engine,
        shown=f"{parts.scheme}://{netloc}",
    )


def client_url(url: str) -> str:
    """``url`` without the server-only options of its query string: what a client dials."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k in CLIENT_OPTIONS]
    return urlunsplit(parts._replace(query=urlencode(kept)))
