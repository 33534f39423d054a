"""HTTP binding options."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

__all__ = [
    "CLIENT_OPTIONS",
    "SERVER_OPTIONS",
]


SERVER_OPTIONS = frozenset(
    {
        "max_body_size",
        "ignore_unknown_fields",
        "cors_origins",
        "cors_allow_headers",
        "cors_expose_headers",
        "cors_allow_credentials",
        "cors_max_age",
        "tls_cert",
        "tls_key",
    }
)
CLIENT_OPTIONS = frozenset({"codec", "max_connections", "max_body_size", "tls_ca", "tls_cert", "tls_key"})
_DEFAULT_MAX_BODY = 4 * 1024 * 1024
# Longer than the client pool's idle timeout (15 s), so idle connections are closed by the client.
_KEEP_ALIVE = 75


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "protobind":
            raise
        raise ImportError(
            f"the http:// transport needs the package {exc.name!r}: pip install 'protobind[http]'"
        ) from exc


# --- options --------------------------------------------------------------------------------------


def _bool(options: Mapping[str, Any], name: str, default: bool) -> bool:
    value = options.get(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"http option {name} must be true or false, not {value!r}")


def _int(options: Mapping[str, Any], name: str, default: int) -> int:
    value = options.get(name, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"http option {name} must be an integer, not {value!r}") from None
    if number <= 0:
        raise ValueError(f"http option {name} must be positive, not {value!r}")
    return number


def _list(options: Mapping[str, Any], name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    value = options.get(name)
    if value is None:
        return default
    items: Iterable[Any] = value.split(",") if isinstance(value, str) else value
    return tuple(str(item).strip() for item in items if str(item).strip())


def _str(options: Mapping[str, Any], name: str) -> str | None:
    value = options.get(name)
    return None if value is None or value == "" else str(value)


def _prefix(path: str) -> str:
    prefix = "/" + path.strip("/") if path.strip("/") else ""
    return prefix


def _server_options(options: Mapping[str, Any], prefix: str = "") -> Any:
    from .app import ServerOptions

    return ServerOptions(
        prefix=prefix,
        max_body_size=_int(options, "max_body_size", _DEFAULT_MAX_BODY),
        ignore_unknown_fields=_bool(options, "ignore_unknown_fields", False),
        cors_origins=_list(options, "cors_origins"),
        cors_allow_headers=_list(options, "cors_allow_headers", ("*",)),
        cors_expose_headers=_list(options, "cors_expose_headers"),
        cors_allow_credentials=_bool(options, "cors_allow_credentials", False),
        cors_max_age=_int(options, "cors_max_age", 7200),
    )
