"""The options of durable calls: the names each side accepts, their parsing, and a method's
delivery options with the deployment's overrides (docs/messaging.md, "Durable delivery")."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ...method import DeliveryOptions, MethodInfo
from ...options import OptionReader
from ..base import DurableSettings

__all__ = [
    "DURABLE_CLIENT_OPTIONS",
    "DURABLE_SERVER_OPTIONS",
    "PULL_WAIT",
    "delivery_of",
    "durable_settings",
]

#: Seconds a durable consumer waits for messages per pull; a stopping server waits for none of it.
PULL_WAIT = 1.0

DURABLE_SERVER_OPTIONS = frozenset(
    {
        "max_deliver",
        "backoff",
        "ack_wait",
        "max_ack_pending",
        "reply_ttl",
        "stream_name",
        "dead_letter_stream",
        "reply_stream",
        "consumer_name",
        "stream_retention",
        "stream_replicas",
        "stream_storage",
        "stream_max_age",
        "stream_max_bytes",
        "store_timeout",
    }
)
DURABLE_CLIENT_OPTIONS = frozenset(
    {
        "ack_wait",
        "max_ack_pending",
        "stream_name",
        "reply_stream",
        "stream_retention",
        "stream_replicas",
        "stream_storage",
        "stream_max_age",
        "stream_max_bytes",
        "reply_group",
        "store_timeout",
    }
)


_CHOICES = {"stream_retention": ("limits", "interest", "workqueue"), "stream_storage": ("file", "memory")}


def durable_settings(transport: str, options: Mapping[str, Any]) -> DurableSettings:
    """The durable options of a binding (URL query or Python values); bad values are errors."""
    reader = OptionReader(transport, options)
    values: dict[str, Any] = {}
    for key in ("max_deliver", "max_ack_pending", "stream_replicas"):
        if reader.given(key):
            values[key] = reader.positive_int(key, 1)
    if reader.given("stream_max_bytes"):
        values["stream_max_bytes"] = reader.positive_int("stream_max_bytes", 1)
    for key in ("ack_wait", "reply_ttl", "store_timeout", "stream_max_age"):
        if reader.given(key):
            values[key] = reader.seconds(key, 1.0)
    if reader.given("backoff"):
        try:
            values["backoff"] = tuple(float(word) for word in reader.words("backoff"))
        except ValueError:
            raise reader.error(
                "backoff", f"must be seconds separated by commas, not {options['backoff']!r}"
            ) from None
        if any(not 0 <= delay < math.inf for delay in values["backoff"]):
            raise reader.error("backoff", f"must be seconds of 0 or more, not {options['backoff']!r}")
    for key in ("stream_name", "dead_letter_stream", "reply_stream", "consumer_name", "reply_group"):
        text = reader.text(key)
        if text is not None:
            values[key] = text
    for key, choices in _CHOICES.items():
        text = reader.text(key)
        if text is not None:
            if text.lower() not in choices:
                raise reader.error(key, f"must be one of {', '.join(choices)}, not {text!r}")
            values[key] = text.lower()
    return DurableSettings(**values)


def delivery_of(method: MethodInfo[Any, Any], settings: DurableSettings) -> DeliveryOptions:
    """The contract's delivery options of ``method`` with the deployment's overrides."""
    overrides = {
        key: value
        for key in ("max_deliver", "backoff", "ack_wait", "max_ack_pending", "reply_ttl")
        if (value := getattr(settings, key)) is not None
    }
    return dataclasses.replace(method.delivery, **overrides) if overrides else method.delivery
