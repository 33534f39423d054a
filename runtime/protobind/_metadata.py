"""Case-insensitive, multi-valued metadata (gRPC metadata, HTTP headers, NATS headers)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Union

__all__ = [
    "Metadata",
    "MetadataLike",
    "MetadataValue",
]

#: Value of one metadata entry. Keys ending in ``-bin`` carry bytes, the others text.
MetadataValue = str | bytes
#: What the API accepts wherever metadata goes in.
MetadataLike = Union["Metadata", Mapping[str, MetadataValue], Iterable[tuple[str, MetadataValue]]]


class Metadata(Mapping[str, MetadataValue]):
    """An ordered multi-map with lower-case keys.

    ``md["x-user"]`` gives the first value, ``md.get_all("x-user")`` every value, ``md.add(k, v)``
    appends and ``md[k] = v`` replaces. Iteration yields each key once; ``items()`` yields every
    ``(key, value)`` pair, repeated keys included, which is what transports put on the wire.
    """

    __slots__ = ("_data",)

    def __init__(self, init: MetadataLike | None = None) -> None:
        self._data: dict[str, list[MetadataValue]] = {}
        if init is not None:
            self.extend(init)

    def extend(self, other: MetadataLike) -> None:
        """Add every pair of ``other`` (a mapping, a ``Metadata`` or an iterable of pairs)."""
        if isinstance(other, Metadata):
            for key, values in other._data.items():
                self._data.setdefault(key, []).extend(values)
            return
        pairs = other.items() if isinstance(other, Mapping) else other
        for key, value in pairs:
            self.add(key, value)

    def add(self, key: str, value: MetadataValue) -> None:
        """Append ``value`` under ``key``."""
        self._data.setdefault(key.lower(), []).append(value)

    def __setitem__(self, key: str, value: MetadataValue) -> None:
        self._data[key.lower()] = [value]

    def __delitem__(self, key: str) -> None:
        del self._data[key.lower()]

    def __getitem__(self, key: str) -> MetadataValue:
        return self._data[key.lower()][0]

    def get_all(self, key: str) -> list[MetadataValue]:
        """Every value under ``key``, in order; empty when absent."""
        return list(self._data.get(key.lower(), ()))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return bool(self._data)

    def items(self) -> Iterator[tuple[str, MetadataValue]]:  # type: ignore[override]
        """Every ``(key, value)`` pair, repeated keys included."""
        for key, values in self._data.items():
            for value in values:
                yield key, value

    def copy(self) -> Metadata:
        """An independent copy."""
        return Metadata(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Metadata):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self == Metadata(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Metadata({list(self.items())!r})"
