"""The engine's subjects as MQTT topics and back (docs/protocols.md, "MQTT 5"); no MQTT library
needed, so ``protobind asyncapi`` can name the topics of a contract without zmqtt installed."""

from __future__ import annotations

import functools

__all__ = ["subject_of", "topic_of"]

#: The topic levels of the engine's own subjects, whose ``$`` MQTT does not allow (see topic_of).
_RESERVED = frozenset({"_SRV", "_PROTOBIND"})


@functools.lru_cache(maxsize=4096)
def topic_of(subject: str) -> str:
    """The MQTT topic (or topic filter) of an engine subject (the rules: :mod:`.connection`)."""
    levels = subject.split(".")
    for i, level in enumerate(levels):
        if level == "*":
            levels[i] = "+"
        elif level == ">":
            levels[i] = "#"
        elif level.startswith("$"):
            levels[i] = "_" + level[1:]
    return "/".join(levels)


@functools.lru_cache(maxsize=4096)
def subject_of(topic: str) -> str:
    """The engine subject of an MQTT topic: the inverse of :func:`topic_of`."""
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if level in _RESERVED:
            levels[i] = "$" + level[1:]
    return ".".join(levels)
