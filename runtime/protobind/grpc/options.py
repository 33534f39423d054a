"""Options of the gRPC binding: URL parsing, message limits and TLS material.

Kept apart from ``protobind.grpc`` so the rules for what a user may configure live in one place
and can be read (and documented) without the call path around them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "CLIENT_OPTIONS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "SERVER_OPTIONS",
    "Address",
    "GrpcOptions",
    "client_options",
    "parse_address",
    "server_options",
]

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024

SERVER_OPTIONS = frozenset({"max_message_size", "cert", "key", "ca", "health", "reflection"})
CLIENT_OPTIONS = frozenset({"max_message_size", "cert", "key", "ca", "server_name"})

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Address:
    scheme: str
    host: str
    port: int | None

    @property
    def tls(self) -> bool:
        """Whether the URL asks for TLS (``grpcs://``)."""
        return self.scheme == "grpcs"

    @property
    def host_for_url(self) -> str:
        # An IPv6 literal needs its brackets back both in a URL and in a gRPC target.
        """The host as written in a URL or gRPC target (IPv6 literals in brackets)."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def target(self, port: int | None = None) -> str:
        """``host:port`` for grpcio."""
        port = self.port if port is None else port
        return self.host_for_url if port is None else f"{self.host_for_url}:{port}"


def parse_address(url: str, *, need_port: bool) -> Address:
    """The host and port of a ``grpc://`` / ``grpcs://`` URL, with clear errors for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("grpc", "grpcs"):
        raise ValueError(f"not a gRPC URL: {url!r} (expected grpc://host:port or grpcs://host:port)")
    if parts.path not in ("", "/"):
        raise ValueError(f"a gRPC URL has no path: {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in {url!r}") from exc
    host = parts.hostname
    if not host:
        raise ValueError(f"a gRPC URL needs a host: {url!r}")
    if port is None and need_port:
        raise ValueError(f"a gRPC URL to serve needs a port (0 picks a free one): {url!r}")
    return Address(parts.scheme, host, port)


@dataclass(frozen=True, slots=True)
class GrpcOptions:
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    cert: bytes | None = None
    key: bytes | None = None
    ca: bytes | None = None
    server_name: str | None = None
    health: bool = True
    reflection: bool = True

    def channel_args(self) -> list[tuple[str, Any]]:
        """The grpcio channel/server arguments these options stand for."""
        args: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", self.max_message_size),
            ("grpc.max_send_message_length", self.max_message_size),
        ]
        if self.server_name:
            args.append(("grpc.ssl_target_name_override", self.server_name))
        return args


def server_options(address: Address, options: Mapping[str, Any]) -> GrpcOptions:
    """Parse and check a gRPC server's options."""
    _check_tls_names(address, options, ("cert", "key", "ca"))
    parsed = _parse(options)
    if address.tls and (parsed.cert is None or parsed.key is None):
        raise ValueError("a grpcs:// server needs the options `cert` and `key` (PEM files)")
    return parsed


def client_options(address: Address, options: Mapping[str, Any]) -> GrpcOptions:
    """Parse and check a gRPC client's options."""
    _check_tls_names(address, options, ("cert", "key", "ca", "server_name"))
    parsed = _parse(options)
    if (parsed.cert is None) != (parsed.key is None):
        raise ValueError("a client certificate needs both `cert` and `key`")
    return parsed


def _check_tls_names(address: Address, options: Mapping[str, Any], names: tuple[str, ...]) -> None:
    # Checked before any file is read, so the message names the real mistake.
    given = [name for name in names if options.get(name)]
    if given and not address.tls:
        raise ValueError(f"TLS options ({', '.join(given)}) were given for a plain grpc:// URL: use grpcs://")


def _parse(options: Mapping[str, Any]) -> GrpcOptions:
    size = _positive_int(options.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE), "max_message_size")
    server_name = options.get("server_name")
    return GrpcOptions(
        max_message_size=size,
        cert=_pem(options.get("cert"), "cert"),
        key=_pem(options.get("key"), "key"),
        ca=_pem(options.get("ca"), "ca"),
        server_name=str(server_name) if server_name else None,
        health=_flag(options.get("health", True), "health"),
        reflection=_flag(options.get("reflection", True), "reflection"),
    )


def _positive_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"gRPC option {name} must be an integer number of bytes, not {value!r}") from None
    if number <= 0:
        raise ValueError(f"gRPC option {name} must be positive, not {number}")
    return number


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"gRPC option {name} must be true or false, not {value!r}")


def _pem(value: Any, name: str) -> bytes | None:
    """PEM bytes from a path (str or Path) or from the PEM text itself (bytes, or str that starts
    with ``-----BEGIN``), so the same option works in a URL, a config file and Python code."""
    if value is None or value == "":
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    if isinstance(value, (str, Path)):
        try:
            return Path(value).read_bytes()
        except OSError as exc:
            raise ValueError(f"gRPC option {name}: cannot read {str(value)!r}: {exc.strerror}") from None
    raise ValueError(f"gRPC option {name} must be a path or PEM bytes, not {type(value).__name__}")
