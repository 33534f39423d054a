"""Subject matching, the engine's one definition: ``*`` stands for one token, ``>`` (last) for
one or more.

A subject is split into its dot-separated tokens once (:func:`tokens`) and matched as tuples,
so a broker that matches one message against many subscriptions splits it once. Brokers without
wildcards of their own (memory, Kafka, RabbitMQ's stored streams) match with these.
"""

from __future__ import annotations

__all__ = ["matches", "overlap", "tokens"]


def tokens(subject: str) -> tuple[str, ...]:
    """The dot-separated tokens of ``subject`` (or of a pattern)."""
    return tuple(subject.split("."))


def matches(pattern: tuple[str, ...], subject: tuple[str, ...]) -> bool:
    """Whether ``subject`` (no wildcards) is one of ``pattern``'s subjects (both as tokens)."""
    for i, token in enumerate(pattern):
        if token == ">":
            return len(subject) > i
        if i >= len(subject) or (token != "*" and token != subject[i]):
            return False
    return len(pattern) == len(subject)


def overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether some subject matches both patterns (as tokens)."""
    for x, y in zip(a, b, strict=False):
        if x == ">" or y == ">":
            return True
        if x != "*" and y != "*" and x != y:
            return False
    return len(a) == len(b)
