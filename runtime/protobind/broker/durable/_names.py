"""The names durable calls use: subjects, streams, consumers and headers.

``{prefix}`` is the binding's subject prefix, ``{service}`` a service's full name:

- calls: ``{prefix}$PROTOBIND.DURABLE.{service}.{Method}`` (:func:`durable_call_subject`)
- dead letters: ``{prefix}$PROTOBIND.DEAD.{service}.{Method}`` (or the method's
  ``dead_letter_subject``; :func:`dead_letter_subject`)
- replies: ``{prefix}$PROTOBIND.REPLY.{group}.{call id}`` (:func:`reply_subject`)

Stream and consumer names come from the templates of
:class:`~protobind.broker.base.DurableSettings`.
"""

from __future__ import annotations

import re
from typing import Any

from ...method import DeliveryOptions, MethodInfo
from ..base import EngineSettings, StreamSpec

__all__ = [
    "ATTEMPTS",
    "METHOD",
    "REPLY_TO",
    "ROOT",
    "SUBJECT",
    "call_stream",
    "consumer_name",
    "dead_letter_stream",
    "dead_letter_subject",
    "durable_call_subject",
    "group_replies_subject",
    "is_token",
    "name_token",
    "reply_group_of",
    "reply_stream",
    "reply_subject",
]

#: Request header: where the reply of a durable request/response call is to be stored.
REPLY_TO = "Protobind-Reply-To"
#: Reply header: the method (``package.Service/Method``) a stored reply answers.
METHOD = "Protobind-Method"
#: Dead-letter headers: deliveries made, and the subject the call was stored on.
ATTEMPTS = "Protobind-Attempts"
SUBJECT = "Protobind-Subject"

#: First token (after the prefix) of every durable subject.
ROOT = "$PROTOBIND"

_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9_-]")


def name_token(text: str) -> str:
    """``text`` as one subject token and a valid stream/consumer name (``.`` and others -> ``_``)."""
    return _NOT_IN_NAMES.sub("_", text)


def is_token(text: str) -> bool:
    """Whether ``text`` is one non-empty token of letters, digits, ``-`` and ``_``."""
    return bool(text) and name_token(text) == text


def _name(template: str, settings: EngineSettings, **values: str) -> str:
    fields = {"prefix": name_token(settings.prefix.rstrip(".")), "service": "", "method": "", "group": ""}
    fields.update({key: name_token(value) for key, value in values.items()})
    try:
        return name_token(template.format(**fields)).strip("_")
    except (KeyError, IndexError, ValueError):
        raise ValueError(
            f"name template {template!r} may use {{prefix}}, {{service}}, {{method}} and {{group}} only"
        ) from None


def durable_call_subject(prefix: str, method: MethodInfo[Any, Any]) -> str:
    """Where the durable calls of ``method`` are stored."""
    return f"{prefix}{ROOT}.DURABLE.{method.service}.{method.name}"


def dead_letter_subject(prefix: str, method: MethodInfo[Any, Any], delivery: DeliveryOptions) -> str:
    """Where the calls of ``method`` that failed for good go."""
    return delivery.dead_letter_subject or f"{prefix}{ROOT}.DEAD.{method.service}.{method.name}"


def reply_subject(prefix: str, group: str, call_id: str) -> str:
    """Where the reply to call ``call_id`` of the caller group ``group`` is stored."""
    return f"{prefix}{ROOT}.REPLY.{name_token(group)}.{call_id}"


def group_replies_subject(prefix: str, group: str) -> str:
    """The wildcard subject of every reply stored for the caller group ``group``."""
    return f"{prefix}{ROOT}.REPLY.{name_token(group)}.>"


def reply_group_of(prefix: str, reply_to: str, call_id: str) -> str | None:
    """The caller group of the reply address ``reply_to`` when it is the reply subject of a group
    (one token of letters, digits, ``-`` and ``_``) for the call ``call_id``; else ``None``."""
    head, tail = f"{prefix}{ROOT}.REPLY.", f".{call_id}"
    if not is_token(call_id) or not reply_to.startswith(head) or not reply_to.endswith(tail):
        return None
    group = reply_to[len(head) : len(reply_to) - len(tail)]
    return group if is_token(group) else None


def consumer_name(settings: EngineSettings, group: str, method: str) -> str:
    """The durable consumer of the caller or server group ``group`` for ``method`` (a method's
    name, or ``replies``), from the ``consumer_name`` template."""
    return _name(settings.durable.consumer_name, settings, group=group, method=method)


def call_stream(settings: EngineSettings, service: str) -> StreamSpec:
    """The stream protobind creates for the durable calls of ``service`` when none stores them."""
    durable = settings.durable
    return StreamSpec(
        name=_name(durable.stream_name, settings, service=settings.prefix + service),
        subjects=(f"{settings.prefix}{ROOT}.DURABLE.{service}.*",),
        retention=durable.stream_retention,
        replicas=durable.stream_replicas,
        storage=durable.stream_storage,
        max_age=durable.stream_max_age,
        max_bytes=durable.stream_max_bytes,
    )


def dead_letter_stream(settings: EngineSettings, service: str) -> StreamSpec:
    """The stream for the dead letters of ``service``: kept until an operator removes them."""
    durable = settings.durable
    return StreamSpec(
        name=_name(durable.dead_letter_stream, settings, service=settings.prefix + service),
        subjects=(f"{settings.prefix}{ROOT}.DEAD.{service}.*",),
        replicas=durable.stream_replicas,
        storage=durable.stream_storage,
    )


def reply_stream(settings: EngineSettings) -> StreamSpec:
    """The stream of the replies to durable calls; each reply lives for its method's reply_ttl."""
    durable = settings.durable
    return StreamSpec(
        name=_name(durable.reply_stream, settings),
        subjects=(f"{settings.prefix}{ROOT}.REPLY.>",),
        replicas=durable.stream_replicas,
        storage=durable.stream_storage,
        allow_ttl=True,
    )
