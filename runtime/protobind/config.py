"""``protobind.toml``: which services to serve, on which URLs, and the URL each client uses;
:func:`client` and :func:`client_sync` connect a generated client to its configured URL.

```toml
[server]
services = ["myapp.greeter:Greeter"]          # MODULE:ATTR, a class (instantiated) or an instance
bind = ["grpc://0.0.0.0:50051", "http://0.0.0.0:8080", "nats://127.0.0.1:4222"]
grace = 5.0                                   # seconds in-flight calls get on shutdown
max_oneway = 1024                             # one-way handlers running at once (gRPC, HTTP, inproc)
path = ["gen"]                                # import roots of generated code (relative to this file)
workers = 1                                   # processes sharing the work (`protobind serve`)
loop = "asyncio"                              # or "uvloop" (pip install 'protobind[speed]')
access_log = true                             # `protobind serve`: a line per call (default true)
log_level = "info"                            # `protobind serve`: logging on stderr from this level

[server.options.grpc]                         # server options by transport name (grpc covers grpcs)
max_message_size = 8388608

[clients]
greeter = "nats://127.0.0.1:4222"             # protobind.client(GreeterClient) connects here
default = "grpc://127.0.0.1:50051"            # services with no entry of their own

[telemetry]                                   # traces, metrics and failure logs (docs/observability.md)
enabled = true                                # for the server and for the clients made from this file
log_successes = false                         # also: tracing, metrics, log_failures (default true)
exporter = "console"                          # or "otlp" (+ otlp_endpoint, otlp_protocol, service_name)
```

Every key is checked: one the file may not have is a :class:`ConfigError` that names it and the
key it most likely meant (``unknown key server.bnd (did you mean server.bind?)``).

Environment variables override the file: ``PROTOBIND_BIND`` (comma-separated URLs) replaces
``server.bind``, ``PROTOBIND_SERVICES`` replaces ``server.services``, ``PROTOBIND_PATH``
(directories separated by ``os.pathsep``, relative to the working directory) replaces
``server.path``, ``PROTOBIND_WORKERS`` and ``PROTOBIND_LOOP`` replace ``server.workers`` and
``server.loop``, ``PROTOBIND_CLIENT_<NAME>`` replaces ``clients.<name>`` (name upper-cased, ``-``
and ``.`` as ``_``), and ``PROTOBIND_TELEMETRY`` (``true``/``false``) replaces ``telemetry.enabled``.
Switching a deployment from gRPC to NATS is a one-line change in either place.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from ._aio import LOOPS
from ._client import Channel, connect
from ._interceptors import ClientInterceptor
from .method import ServiceInfo, python_name
from .sync import SyncChannel, connect_sync
from .telemetry import Telemetry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


__all__ = [
    "Config",
    "ConfigError",
    "GeneratedClient",
    "GeneratedSyncClient",
    "client",
    "client_sync",
    "load_service",
]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class Config:
    """The contents of ``protobind.toml`` with the environment applied (see the module docstring)."""

    services: tuple[str, ...] = ()
    bind: tuple[str, ...] = ()
    grace: float = 5.0
    transport_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    clients: Mapping[str, str] = field(default_factory=dict)
    source: str = "<defaults>"
    #: ``None`` unless ``[telemetry] enabled = true`` (or ``PROTOBIND_TELEMETRY=true``).
    telemetry: Telemetry | None = None
    #: directories to import services and generated code from (``server.path``), absolute
    path: tuple[str, ...] = ()
    workers: int = 1
    loop: str = "asyncio"
    #: one-way handlers a server runs at once in the background (``Server(max_oneway=...)``)
    max_oneway: int = 1024
    #: ``server.access_log``: ``None`` when the file does not say (``protobind serve``: on)
    access_log: bool | None = None
    #: ``server.log_level`` (``protobind serve --log-level``), lower case; ``None``: not set
    log_level: str | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
        """Read ``path`` (default ``./protobind.toml`` when it exists), then apply the environment."""
        env = os.environ if env is None else env
        data: dict[str, Any] = {}
        source = "<defaults>"
        candidate = Path(path) if path is not None else Path("protobind.toml")
        if path is not None or candidate.exists():
            source = str(candidate)
            try:
                data = tomllib.loads(candidate.read_text())
            except FileNotFoundError:
                raise ConfigError(f"{candidate}: no such file") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{candidate}: {exc}") from None
        _check_keys(data, _TOP_KEYS, "", source)
        server = _table(data, "server", source)
        _check_keys(server, _SERVER_KEYS, "server.", source)
        services = _strings(server.get("services", []), "server.services", source)
        bind = _strings(server.get("bind", []), "server.bind", source)
        grace = server.get("grace", 5.0)
        if not isinstance(grace, (int, float)) or grace < 0:
            raise ConfigError(f"{source}: server.grace must be a number of seconds >= 0")
        workers = _whole_number(env.get("PROTOBIND_WORKERS") or server.get("workers", 1))
        if workers is None or workers < 1:
            raise ConfigError(f"{source}: server.workers must be a whole number >= 1")
        max_oneway = _whole_number(server.get("max_oneway", 1024))
        if max_oneway is None or max_oneway < 1:
            raise ConfigError(f"{source}: server.max_oneway must be a whole number >= 1")
        loop = env.get("PROTOBIND_LOOP") or server.get("loop", "asyncio")
        if loop not in LOOPS:
            raise ConfigError(f"{source}: server.loop must be one of {', '.join(LOOPS)}, not {loop!r}")
        options = _transport_options(_table(server, "options", source), source)
        access_log = server.get("access_log")
        if access_log is not None and not isinstance(access_log, bool):
            raise ConfigError(f"{source}: server.access_log must be true or false")
        log_level = server.get("log_level")
        if log_level is not None and (not isinstance(log_level, str) or log_level.lower() not in LOG_LEVELS):
            raise ConfigError(f"{source}: server.log_level must be one of {', '.join(LOG_LEVELS)}")
        base = candidate.parent if source != "<defaults>" else Path()
        roots = [str((base / p).resolve()) for p in _strings(server.get("path", []), "server.path", source)]
        if env.get("PROTOBIND_PATH"):
            roots = [str(Path(p).resolve()) for p in env["PROTOBIND_PATH"].split(os.pathsep) if p]
        clients = {k: str(v) for k, v in _table(data, "clients", source).items()}
        if env.get("PROTOBIND_BIND"):
            bind = [u.strip() for u in env["PROTOBIND_BIND"].split(",") if u.strip()]
        if env.get("PROTOBIND_SERVICES"):
            services = [s.strip() for s in env["PROTOBIND_SERVICES"].split(",") if s.strip()]
        for key, value in env.items():
            if key.startswith("PROTOBIND_CLIENT_"):
                name = key[len("PROTOBIND_CLIENT_") :].lower()
                clients[next((c for c in clients if _env_name(c) == name), name)] = value
        telemetry = _telemetry(_table(data, "telemetry", source), env.get("PROTOBIND_TELEMETRY"), source)
        return cls(
            tuple(services),
            tuple(bind),
            float(grace),
            options,
            clients,
            source,
            telemetry,
            path=tuple(roots),
            workers=workers,
            loop=loop,
            max_oneway=max_oneway,
            access_log=access_log,
            log_level=log_level.lower() if log_level is not None else None,
        )

    def client_url(self, name: str) -> str:
        """The URL configured for client ``name`` (``[clients] name``, or its environment variable)."""
        return self._client_url((name,), name)

    def service_url(self, service: str, name: str | None = None) -> str:
        """The URL a client of ``service`` (full name: ``greeter.v1.Greeter``) connects to.

        With ``name``, the ``[clients]`` entry of that name. Otherwise the first of: the entry named
        after the service's full name (``"greeter.v1.Greeter"``), the one named after its short name
        in snake_case (``greeter``; ``RouteGuide`` -> ``route_guide``), and ``default``.
        """
        if name is not None:
            return self.client_url(name)
        short = python_name(service.rpartition(".")[2]).rstrip("_")
        return self._client_url((service, short, "default"), service)

    def _client_url(self, keys: tuple[str, ...], what: str) -> str:
        by_key = {_env_name(k): url for k, url in self.clients.items()}
        for key in keys:
            url = by_key.get(_env_name(key))
            if url is not None:
                return url
        raise ConfigError(
            f"{self.source}: no client URL for {what!r}: add {' or '.join(repr(k) for k in keys)} under "
            f"[clients], or set {' or '.join('PROTOBIND_CLIENT_' + _env_name(k).upper() for k in keys)}"
        )

    def connect(self, name: str, **kwargs: Any) -> Channel:
        """``protobind.connect()`` to client ``name``'s URL, with the configured telemetry."""
        from ._client import connect

        kwargs.setdefault("telemetry", self.telemetry)
        return connect(self.client_url(name), **kwargs)


_TOP_KEYS = ("server", "clients", "telemetry")
_SERVER_KEYS = (
    *("services", "bind", "grace", "max_oneway", "path", "workers", "loop", "options"),
    *("access_log", "log_level"),
)
_TELEMETRY_FLAGS = ("enabled", "tracing", "metrics", "message_sizes", "log_failures", "log_successes")
_TELEMETRY_KEYS = (*_TELEMETRY_FLAGS, "exporter", "otlp_endpoint", "otlp_protocol", "service_name")
#: ``server.log_level`` / ``protobind serve --log-level``, as the ``logging`` module names them
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLEANS.update(dict.fromkeys(("0", "false", "no", "off"), False))


def _check_keys(table: Mapping[str, Any], known: Sequence[str], where: str, source: str) -> None:
    """A key the file may not have is an error naming it, with the likeliest intended key."""
    from .options import closest

    for key in table:
        if key not in known:
            close = closest(key, known)
            hint = f" (did you mean {where}{close}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {where}{key}{hint}; known: {', '.join(known)}")


def _transport_options(table: dict[str, Any], source: str) -> dict[str, Any]:
    """``[server.options.<transport>]``: registered transport names, each with its server options."""
    from .transport import all_transports, check_options, transport_named

    _check_keys(table, [t.name for t in all_transports()], "server.options.", source)
    for name, options in table.items():
        where = f"server.options.{name}"
        if not isinstance(options, dict):
            raise ConfigError(f"{source}: {where} must be a table")
        try:
            check_options(transport_named(name), options, server=True)
        except ValueError as exc:
            raise ConfigError(f"{source}: {where}: {exc}") from None
    return table


def _telemetry(table: dict[str, Any], env_value: str | None, source: str) -> Telemetry | None:
    _check_keys(table, _TELEMETRY_KEYS, "telemetry.", source)
    for key in _TELEMETRY_FLAGS:
        if not isinstance(table.get(key, False), bool):
            raise ConfigError(f"{source}: telemetry.{key} must be true or false")
    settings = {key: value for key, value in table.items() if key != "enabled"}
    exporters = tuple(_strings(settings.pop("exporter", []), "telemetry.exporter", source))
    try:
        telemetry = Telemetry(exporter=exporters, **settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    # naming an exporter asks for telemetry: `enabled` defaults to true then
    enabled = table.get("enabled", bool(exporters))
    if env_value:
        if env_value.strip().lower() not in _BOOLEANS:
            raise ConfigError(f"PROTOBIND_TELEMETRY must be true or false, not {env_value!r}")
        enabled = _BOOLEANS[env_value.strip().lower()]
    return telemetry if enabled else None


def _whole_number(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _env_name(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _table(data: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {key} must be a table")
    return value


def _strings(value: Any, key: str, source: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: {key} must be a list of strings")
    return list(value)


def load_service(spec: str) -> object:
    """``MODULE:ATTR`` -> a service instance (a class is instantiated without arguments)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"service {spec!r} must be MODULE:ATTR, e.g. myapp.greeter:Greeter")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"service {spec!r}: cannot import {module_name}: {exc}") from None
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"service {spec!r}: {module_name} has no attribute {attr!r}") from None
    return target() if isinstance(target, type) else target


class GeneratedClient(Protocol):
    """What the generator makes as ``{Service}Client``."""

    PROTOBIND_SERVICE: ClassVar[ServiceInfo]
    _channel: Channel  # checked, unlike ``__init__``: type checkers tell a blocking client from this

    def __init__(self, channel: Channel) -> None: ...


class GeneratedSyncClient(Protocol):
    """What the generator makes as ``{Service}SyncClient``."""

    PROTOBIND_SERVICE: ClassVar[ServiceInfo]
    _channel: SyncChannel

    def __init__(self, channel: SyncChannel) -> None: ...


ClientT = TypeVar("ClientT", bound=GeneratedClient)
SyncClientT = TypeVar("SyncClientT", bound=GeneratedSyncClient)


@contextlib.asynccontextmanager
async def client(
    client_class: type[ClientT],
    *,
    name: str | None = None,
    config: Config | None = None,
    interceptors: Sequence[ClientInterceptor] = (),
    options: Mapping[str, Any] | None = None,
) -> AsyncIterator[ClientT]:
    """A generated ``{Service}Client`` on a channel to the URL configured for its service.

    ``async with protobind.client(GreeterClient) as greeter:`` finds the URL with
    :meth:`Config.service_url` in ``config`` (default: ``Config.load()``, i.e. ``./protobind.toml``
    and the environment), connects with the configured telemetry, and closes the channel when the
    block ends.
    """
    config = config if config is not None else Config.load()
    url = config.service_url(client_class.PROTOBIND_SERVICE.name, name)
    async with connect(
        url, interceptors=interceptors, options=options, telemetry=config.telemetry
    ) as channel:
        yield client_class(channel)


@contextlib.contextmanager
def client_sync(
    client_class: type[SyncClientT],
    *,
    name: str | None = None,
    config: Config | None = None,
    interceptors: Sequence[ClientInterceptor] = (),
    options: Mapping[str, Any] | None = None,
) -> Iterator[SyncClientT]:
    """:func:`client` for blocking code: ``with protobind.client_sync(GreeterSyncClient) as greeter:``."""
    config = config if config is not None else Config.load()
    url = config.service_url(client_class.PROTOBIND_SERVICE.name, name)
    with connect_sync(url, interceptors=interceptors, options=options, telemetry=config.telemetry) as channel:
        yield client_class(channel)
