"""Options of the NATS binding: the connection's and the broker engine's (docs/protocols.md)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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

_SERVER_OPTIONS = {"queue_group", "max_concurrency", "max_pending", "version", "reflection"}
_CLIENT_OPTIONS = {"codec"}
_CONNECTION_OPTIONS = {
    "prefix",
    "window",
    "heartbeat",
    "name",
    "connect_timeout",
    "reconnect_wait",
    "max_reconnect_attempts",
    "user",
    "password",
    "token",
    "creds",
    "nkeys_seed",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "tls_server_name",
    "max_message_size",
    "ssl_context",
}
SERVER_OPTIONS = frozenset(_SERVER_OPTIONS | _CONNECTION_OPTIONS | DURABLE_SERVER_OPTIONS)
CLIENT_OPTIONS = frozenset(_CLIENT_OPTIONS | _CONNECTION_OPTIONS | DURABLE_CLIENT_OPTIONS)


# --- options and connections ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """A NATS binding's options: where and how to connect, and the engine's settings."""

    servers: list[str]
    connect: dict[str, Any]
    engine: EngineSettings
    #: a tls:// URL or any TLS option: TLS or an error, never plaintext
    require_tls: bool = False


def _number(options: Mapping[str, Any], key: str, default: float, kind: type[float] | type[int]) -> Any:
    value = options.get(key, default)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"NATS option {key}={value!r} must be a number") from None


def settings_from(url: str, options: Mapping[str, Any]) -> Settings:
    """Parse a NATS URL and its options into connection and engine settings."""
    parts = urlsplit(url)
    if parts.scheme not in ("nats", "tls"):
        raise ValueError(f"not a NATS URL: {url!r}")
    netloc = parts.netloc
    userinfo, _, hosts = netloc.rpartition("@")
    if not hosts:
        raise ValueError(f"NATS URL needs a host: nats://host:port, got {url!r}")
    auth = userinfo + "@" if userinfo else ""
    servers = [f"{parts.scheme}://{auth}{host.strip()}" for host in hosts.split(",") if host.strip()]
    prefix = str(options.get("prefix", "") or "")
    if prefix and not prefix.endswith("."):
        prefix += "."
    codec_name = str(options.get("codec", "proto")).lower()
    codec_named(codec_name)  # unknown names fail here, with the list of known ones
    connect: dict[str, Any] = {
        "connect_timeout": _number(options, "connect_timeout", 2.0, float),
        "reconnect_time_wait": _number(options, "reconnect_wait", 2.0, float),
        "max_reconnect_attempts": _number(options, "max_reconnect_attempts", -1, int),
    }
    if "name" in options:
        connect["name"] = str(options["name"])
    for key in ("user", "password", "token"):
        if key in options:
            connect[key] = str(options[key])
    if "creds" in options:
        connect["user_credentials"] = str(options["creds"])
    if "nkeys_seed" in options:
        connect["nkeys_seed"] = str(options["nkeys_seed"])
    tls = _ssl_context(options)
    if tls is not None:
        connect["tls"] = tls
    if "tls_server_name" in options:
        connect["tls_hostname"] = str(options["tls_server_name"])
    engine = EngineSettings(
        prefix=prefix,
        queue_group=str(options.get("queue_group", "")),
        max_concurrency=max(1, _number(options, "max_concurrency", DEFAULT_MAX_CONCURRENCY, int)),
        max_pending=max(0, _number(options, "max_pending", DEFAULT_MAX_PENDING, int)),
        max_message_size=OptionReader("nats", options).positive_int(
            "max_message_size", DEFAULT_MAX_MESSAGE_SIZE
        ),
        window=max(1, _number(options, "window", 64, int)),
        heartbeat=max(0.01, _number(options, "heartbeat", 5.0, float)),
        codec_name=codec_name,
        version=str(options.get("version", __version__)),
        reflection=OptionReader("nats", options).flag("reflection", True),
        durable=durable_settings("nats", options),
    )
    require_tls = parts.scheme == "tls" or tls is not None
    return Settings(servers=servers, connect=connect, engine=engine, require_tls=require_tls)


def _ssl_context(options: Mapping[str, Any]) -> ssl.SSLContext | None:
    context = options.get("ssl_context")
    if context is not None:
        if not isinstance(context, ssl.SSLContext):
            raise ValueError("NATS option ssl_context must be an ssl.SSLContext")
        return context
    if not any(key in options for key in ("tls_ca", "tls_cert", "tls_key")):
        return None
    context = ssl.create_default_context(cafile=options.get("tls_ca"))
    if "tls_cert" in options:
        context.load_cert_chain(str(options["tls_cert"]), options.get("tls_key"))
    return context


def client_url(url: str) -> str:
    """``url`` without the server-only options of its query string: what a client dials."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k in CLIENT_OPTIONS]
    return urlunsplit(parts._replace(query=urlencode(kept)))
