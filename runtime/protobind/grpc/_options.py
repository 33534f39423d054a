"""Options of the gRPC binding: URL parsing, message limits and TLS material.

Kept apart from ``protobind.grpc`` so the rules for what a user may configure live in one place
and can be read (and documented) without the call path around them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..limits import ServerLimits
from ..options import DEFAULT_MAX_MESSAGE_SIZE, LIMIT_OPTIONS, TLS_CLIENT_OPTIONS, OptionReader

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

SERVER_OPTIONS = frozenset(
    {
        *LIMIT_OPTIONS,
        "body_timeout",
        "max_concurrent_streams",
        "tls_cert",
        "tls_key",
        "tls_ca",
        "health",
        "reflection",
        "reuse_port",
        "channel_args",
        "engine",
    }
)
CLIENT_OPTIONS = frozenset({"max_message_size", *TLS_CLIENT_OPTIONS, "channel_args", "engine"})

#: The engines behind grpc://: protobind's own HTTP/2 engine (the default) and grpcio (gRPC core).
ENGINES = ("native", "grpcio")
#: The engine used where the option ``engine`` is not given.
ENGINE_VARIABLE = "PROTOBIND_GRPC_ENGINE"
#: The options only the grpcio engine has, and what each one is. Given without a choice of engine
#: (neither the option ``engine`` nor PROTOBIND_GRPC_ENGINE), one of them selects grpcio; with
#: ``engine=native`` it is an error that names it. docs/configuration.md lists the same table.
GRPCIO_ONLY_OPTIONS: Mapping[str, str] = {
    "channel_args": "gRPC core channel arguments",
}


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
    limits: ServerLimits = field(default_factory=ServerLimits)
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    tls_ca: bytes | None = None
    tls_server_name: str | None = None
    health: bool = True
    reflection: bool = True
    #: SO_REUSEPORT, so several processes serve one port (`protobind serve --workers N`)
    reuse_port: bool = False
    #: SETTINGS_MAX_CONCURRENT_STREAMS of each connection; None: ``limits.admitted``
    max_concurrent_streams: int | None = None
    channel_args: tuple[tuple[str, Any], ...] = ()
    #: "native" or "grpcio" (option ``engine``, see :func:`_engine`)
    engine: str = "native"

    def client_channel_args(self) -> list[tuple[str, Any]]:
        """The grpcio channel arguments of a client with these options."""
        args: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", self.limits.max_message_size),
            ("grpc.max_send_message_length", self.limits.max_message_size),
        ]
        if self.tls_server_name:
            args.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return [*args, *self.channel_args]

    def server_channel_args(self) -> list[tuple[str, Any]]:
        """The grpcio server arguments of a server with these options."""
        limits = self.limits
        # gRPC core keeps its own queue of calls the application has not picked up yet and, past
        # 1,000 of them (its default), cancels new calls at random: a burst of 2,000 calls saw
        # about 10% CANCELLED. Sized to what the binding admits (running plus waiting, see
        # limits.ConcurrencyLimit), overload is answered by the binding's limiter with
        # RESOURCE_EXHAUSTED; core's queue only sheds calls the process cannot even pick up.
        admitted = limits.admitted
        return [
            ("grpc.max_receive_message_length", limits.max_message_size),
            ("grpc.max_send_message_length", limits.max_message_size),
            # one bound for the request metadata, not core's soft limit (calls refused at random
            # between it and the hard limit): beyond it RESOURCE_EXHAUSTED, as on the HTTP port
            ("grpc.max_metadata_size", limits.max_header_size),
            ("grpc.absolute_max_metadata_size", limits.max_header_size),
            ("grpc.server.max_pending_requests", admitted),
            ("grpc.server.max_pending_requests_hard_limit", 2 * admitted),
            # With core's overload protection (on by default) a stream counts against this until
            # the server has released it, reset or not: an HTTP/2 "rapid reset" flood holds at most
            # this many streams of one connection, the next are refused (REFUSED_STREAM). Below
            # what the limiter admits, callers would queue in HTTP/2 instead of being answered.
            ("grpc.max_concurrent_streams", self.max_concurrent_streams or admitted),
            # so_reuseport off unless asked for (`protobind serve --workers N`): binding a port
            # another server holds must fail, not silently share it
            ("grpc.so_reuseport", int(self.reuse_port)),
            *self.channel_args,
        ]


def server_options(address: Address, options: Mapping[str, Any]) -> GrpcOptions:
    """Parse and check a gRPC server's options."""
    _check_tls_names(address, options, ("tls_cert", "tls_key", "tls_ca"))
    reader = OptionReader("grpc", options)
    parsed = GrpcOptions(
        limits=ServerLimits.read(reader),
        tls_cert=reader.pem("tls_cert"),
        tls_key=reader.pem("tls_key"),
        tls_ca=reader.pem("tls_ca"),
        health=reader.flag("health", True),
        reflection=reader.flag("reflection", True),
        reuse_port=reader.flag("reuse_port", False),
        max_concurrent_streams=(
            reader.positive_int("max_concurrent_streams", 1)
            if reader.given("max_concurrent_streams")
            else None
        ),
        channel_args=_channel_args(reader),
        engine=_engine(reader),
    )
    if address.tls and (parsed.tls_cert is None or parsed.tls_key is None):
        raise ValueError("a grpcs:// server needs the options `tls_cert` and `tls_key` (PEM files)")
    return parsed


def client_options(address: Address, options: Mapping[str, Any]) -> GrpcOptions:
    """Parse and check a gRPC client's options."""
    _check_tls_names(address, options, tuple(sorted(TLS_CLIENT_OPTIONS)))
    reader = OptionReader("grpc", options)
    parsed = GrpcOptions(
        limits=ServerLimits(
            max_message_size=reader.positive_int("max_message_size", DEFAULT_MAX_MESSAGE_SIZE)
        ),
        tls_cert=reader.pem("tls_cert"),
        tls_key=reader.pem("tls_key"),
        tls_ca=reader.pem("tls_ca"),
        tls_server_name=reader.text("tls_server_name"),
        channel_args=_channel_args(reader),
        engine=_engine(reader),
    )
    if (parsed.tls_cert is None) != (parsed.tls_key is None):
        raise ValueError("a client certificate needs both `tls_cert` and `tls_key`")
    return parsed


def _check_tls_names(address: Address, options: Mapping[str, Any], names: tuple[str, ...]) -> None:
    # Checked before any file is read, so the message names the real mistake.
    given = [name for name in names if options.get(name)]
    if given and not address.tls:
        raise ValueError(f"TLS options ({', '.join(given)}) were given for a plain grpc:// URL: use grpcs://")


def _channel_args(reader: OptionReader) -> tuple[tuple[str, Any], ...]:
    """Extra grpc core channel arguments (Python or config file only): ``[(key, value), ...]``."""
    value = reader.options.get("channel_args")
    if value is None:
        return ()
    try:
        pairs = tuple((str(key), item) for key, item in value)
    except (TypeError, ValueError):
        raise reader.error("channel_args", "must be a list of (name, value) pairs") from None
    for key, item in pairs:
        if not isinstance(item, (int, str)) or isinstance(item, bool):
            raise reader.error("channel_args", f"value of {key} must be an integer or a string")
    return pairs


def _engine(reader: OptionReader) -> str:
    """The engine: the option ``engine``, else the environment variable PROTOBIND_GRPC_ENGINE, else
    grpcio when an option only grpcio has is given (:data:`GRPCIO_ONLY_OPTIONS`), else native. An
    engine chosen as native with such an option is an error that names it."""
    grpcio_only = [name for name in GRPCIO_ONLY_OPTIONS if reader.options.get(name) not in (None, (), [])]
    given = reader.text("engine")
    source = "engine"
    if given is None:
        given, source = os.environ.get(ENGINE_VARIABLE) or "", ENGINE_VARIABLE
    if not given:
        return "grpcio" if grpcio_only else "native"
    engine = given.strip().lower()
    if engine not in ENGINES:
        raise ValueError(f"grpc option {source}={given!r}: expected one of {', '.join(ENGINES)}")
    if engine == "native" and grpcio_only:
        name = grpcio_only[0]
        chosen = "engine=native" if source == "engine" else f"{ENGINE_VARIABLE}=native"
        raise ValueError(
            f"grpc option {name} ({GRPCIO_ONLY_OPTIONS[name]}) needs the grpcio engine, but {chosen} "
            "was chosen: use engine=grpcio (or leave the engine unset) for it"
        )
    return engine
