"""Options of the in-memory broker: the broker engine's, plus the hub's payload limit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._version import __version__
from ..broker.base import EngineSettings
from ..broker.durable._settings import DURABLE_CLIENT_OPTIONS, DURABLE_SERVER_OPTIONS, durable_settings
from ..codec import codec_named
from ..options import DEFAULT_MAX_MESSAGE_SIZE, OptionReader

__all__ = ["CLIENT_OPTIONS", "SERVER_OPTIONS", "client_url", "settings_from"]

_ENGINE_OPTIONS = {"prefix", "window", "heartbeat"}
SERVER_OPTIONS = frozenset(
    _ENGINE_OPTIONS
    | DURABLE_SERVER_OPTIONS
    | {"queue_group", "max_concurrency", "max_pending", "version", "max_payload", "max_message_size"}
)
CLIENT_OPTIONS = frozenset(_ENGINE_OPTIONS | DURABLE_CLIENT_OPTIONS | {"codec"})


def settings_from(options: Mapping[str, Any]) -> EngineSettings:
    """The broker engine's settings from a ``memory://`` binding's options."""
    prefix = str(options.get("prefix", "") or "")
    if prefix and not prefix.endswith("."):
        prefix += "."
    codec_name = str(options.get("codec", "proto")).lower()
    codec_named(codec_name)
    return EngineSettings(
        prefix=prefix,
        queue_group=str(options.get("queue_group", "")),
        max_concurrency=max(1, int(options.get("max_concurrency", 1024))),
        max_pending=max(0, int(options.get("max_pending", 8192))),
        max_message_size=OptionReader("memory", options).positive_int(
            "max_message_size", DEFAULT_MAX_MESSAGE_SIZE
        ),
        window=max(1, int(options.get("window", 64))),
        heartbeat=max(0.01, float(options.get("heartbeat", 5.0))),
        codec_name=codec_name,
        version=str(options.get("version", __version__)),
        durable=durable_settings("memory", options),
    )


def client_url(url: str) -> str:
    """``url`` as clients of the server bound to it dial it: only the client options kept."""
    base, _, query = url.partition("?")
    kept = [piece for piece in query.split("&") if piece.partition("=")[0] in CLIENT_OPTIONS]
    return base + ("?" + "&".join(kept) if kept else "")
