"""Transport options every binding shares: one name per concept, one parser per kind of value and
one default per limit, so ``max_message_size`` or ``tls_ca`` means the same on every transport.

A binding reads its options through an :class:`OptionReader`, whose errors name the transport and
the option (``grpc option max_concurrency must be a positive integer, not 'lots'``). The names a
transport accepts are checked before that, by :func:`protobind.transport.check_options`; names that
were renamed are declared by their transport (``Transport.renamed_options``) so the error says what to
write instead.
"""

from __future__ import annotations

import difflib
import math
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_PENDING",
    "LIMIT_OPTIONS",
    "TLS_CLIENT_OPTIONS",
    "OptionReader",
    "closest",
]

#: Largest message a side sends or accepts, in bytes (gRPC's usual limit).
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
#: Largest header block a server accepts, in bytes: every field's name and value plus 32 bytes each,
#: as HTTP/2 counts a header list (RFC 9113, SETTINGS_MAX_HEADER_LIST_SIZE) and gRPC core its metadata.
DEFAULT_MAX_HEADER_SIZE = 16 * 1024
#: Calls whose handlers run at once on one server binding.
DEFAULT_MAX_CONCURRENCY = 1024
#: Calls allowed to wait for a handler slot; beyond that a call is refused with RESOURCE_EXHAUSTED.
DEFAULT_MAX_PENDING = 8192
#: Seconds a server waits for the complete request of a unary or server-streaming call.
DEFAULT_BODY_TIMEOUT = 30.0

#: The limits every server binding takes (docs/security.md has the table).
LIMIT_OPTIONS = frozenset({"max_message_size", "max_header_size", "max_concurrency", "max_pending"})
#: TLS on the client side of every transport: CA bundle, client certificate and key, the name
#: to verify in the server's certificate.
TLS_CLIENT_OPTIONS = frozenset({"tls_ca", "tls_cert", "tls_key", "tls_server_name"})


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice a mistyped ``name`` most likely meant (for a "did you mean" hint), if any."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class OptionReader:
    """Typed access to one transport's options (URL query strings give text, Python gives values)."""

    __slots__ = ("options", "transport")

    def __init__(self, transport: str, options: Mapping[str, Any]) -> None:
        self.transport = transport
        self.options = options

    def error(self, name: str, problem: str) -> ValueError:
        """The error for a bad value of option ``name``."""
        return ValueError(f"{self.transport} option {name} {problem}")

    def given(self, name: str) -> bool:
        """Whether option ``name`` was set to something other than an empty value."""
        value = self.options.get(name)
        return value is not None and value != ""

    def flag(self, name: str, default: bool) -> bool:
        """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case), or a bool."""
        value = self.options.get(name, default)
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise self.error(name, f"must be true or false, not {value!r}")

    def positive_int(self, name: str, default: int) -> int:
        """A whole number of at least 1."""
        number = self._int(name, default)
        if number < 1:
            raise self.error(name, f"must be a positive integer, not {number}")
        return number

    def count(self, name: str, default: int) -> int:
        """A whole number of at least 0."""
        number = self._int(name, default)
        if number < 0:
            raise self.error(name, f"must be 0 or more, not {number}")
        return number

    def _int(self, name: str, default: int) -> int:
        value = self.options.get(name, default)
        if isinstance(value, bool):
            raise self.error(name, f"must be an integer, not {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise self.error(name, f"must be an integer, not {value!r}") from None

    def seconds(self, name: str, default: float) -> float:
        """A positive, finite number of seconds."""
        value = self.options.get(name, default)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self.error(name, f"must be a number of seconds, not {value!r}") from None
        if not (number > 0 and math.isfinite(number)):
            raise self.error(name, f"must be a positive number of seconds, not {value!r}")
        return number

    def text(self, name: str) -> str | None:
        """The option as text, ``None`` when absent or empty."""
        return str(self.options[name]) if self.given(name) else None

    def words(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A comma-separated list (or a list of strings); blanks are dropped."""
        value = self.options.get(name)
        if value is None:
            return default
        items: Iterable[Any] = value.split(",") if isinstance(value, str) else value
        return tuple(str(item).strip() for item in items if str(item).strip())

    def file(self, name: str) -> str | None:
        """The path of a readable file, ``None`` when absent; checked now so a typo fails at start."""
        path = self.text(name)
        if path is not None and not Path(path).is_file():
            raise self.error(name, f"names no readable file: {path!r}")
        return path

    def tls_context(
        self, triggers: Iterable[str] = ("tls_ca", "tls_cert", "tls_key")
    ) -> ssl.SSLContext | None:
        """A broker client's TLS context: ``ssl_context`` (Python only) as given, else one made from
        ``tls_ca`` (trusted instead of the system roots), ``tls_cert`` and ``tls_key`` (a client
        certificate) when any of ``triggers`` is given; ``None`` otherwise (plaintext)."""
        context = self.options.get("ssl_context")
        if context is not None:
            if not isinstance(context, ssl.SSLContext):
                raise self.error("ssl_context", "must be an ssl.SSLContext")
            return context
        if not any(self.given(name) for name in triggers):
            return None
        context = ssl.create_default_context(cafile=self.file("tls_ca"))
        cert, key = self.file("tls_cert"), self.file("tls_key")
        if cert is None and key is not None:
            raise self.error("tls_key", "needs tls_cert (the certificate of that key)")
        if cert is not None:
            context.load_cert_chain(cert, key)
        return context

    def pem(self, name: str) -> bytes | None:
        """PEM material: a path to read, or the PEM text itself (bytes, or a string starting with
        ``-----BEGIN``); ``None`` when absent."""
        value = self.options.get(name)
        if value is None or value == "" or value == b"":
            return None
        if isinstance(value, bytes):
            return value
        if isinstance(value, (str, Path)):
            text = str(value)
            if text.lstrip().startswith("-----BEGIN"):
                return text.encode()
            try:
                return Path(text).read_bytes()
            except OSError as exc:
                raise self.error(name, f"cannot read {text!r}: {exc.strerror}") from None
        raise self.error(name, f"must be a path or PEM bytes, not {type(value).__name__}")
