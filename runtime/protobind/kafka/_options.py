"""Options of the Kafka binding: the connection's, the topics' and the broker engine's
(docs/brokers.md, "Kafka", has the table)."""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .._version import __version__
from ..broker.base import EngineSettings
from ..broker.durable._settings import DURABLE_CLIENT_OPTIONS, DURABLE_SERVER_OPTIONS, durable_settings
from ..codec import codec_named
from ..options import DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_PENDING, OptionReader

__all__ = [
    "CLIENT_OPTIONS",
    "DEFAULT_TOPIC",
    "SERVER_OPTIONS",
    "Settings",
    "client_url",
    "settings_from",
]

#: The topic of a method's calls: ``{prefix}`` (the binding's prefix, with its trailing dot),
#: ``{service}`` (the service's full name) and ``{method}``.
DEFAULT_TOPIC = "{prefix}{service}.{method}"
#: Kafka's own default limit on a record batch (``message.max.bytes``), rounded down.
DEFAULT_MAX_PAYLOAD = 1024 * 1024
#: The producer's batch size per partition (aiokafka and Kafka's Java client take 16 KiB): a few
#: 16 KiB records fit one batch, so concurrent senders rarely wait for a batch to be drained.
DEFAULT_BATCH_SIZE = 128 * 1024

_SERVER_OPTIONS = {
    "queue_group",
    "max_concurrency",
    "max_pending",
    "version",
    "reflection",
    "rebalance_grace",
}
_CLIENT_OPTIONS = {"codec"}
_CONNECTION_OPTIONS = {
    "prefix",
    "window",
    "heartbeat",
    "max_message_size",
    "topic",
    "partitions",
    "replication_factor",
    "control_topic",
    "idempotence",
    "max_payload",
    "fetch_wait",
    "linger",
    "batch_size",
    "client_id",
    "connect_timeout",
    "session_timeout",
    "tls",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "ssl_context",
    "sasl_mechanism",
    "user",
    "password",
}
#: The SASL mechanisms the ``sasl_mechanism`` option takes (those aiokafka speaks with a password).
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SERVER_OPTIONS = frozenset(_SERVER_OPTIONS | _CONNECTION_OPTIONS | DURABLE_SERVER_OPTIONS)
CLIENT_OPTIONS = frozenset(_CLIENT_OPTIONS | _CONNECTION_OPTIONS | DURABLE_CLIENT_OPTIONS)

_TEMPLATE_FIELDS = re.compile(r"\{(\w*)\}")


@dataclass(frozen=True, slots=True)
class Settings:
    """A Kafka binding's options."""

    bootstrap: list[str]
    engine: EngineSettings
    topic: str = DEFAULT_TOPIC
    partitions: int = 4
    replication_factor: int = 1
    control_topic: str = "protobind.control"
    idempotence: bool = True
    max_payload: int = DEFAULT_MAX_PAYLOAD
    fetch_wait: float = 0.05
    linger: float = 0.0
    #: bytes of records per partition the producer puts in one batch (at most ``max_payload``)
    batch_size: int = DEFAULT_BATCH_SIZE
    client_id: str = "protobind"
    connect_timeout: float = 10.0
    rebalance_grace: float = 10.0
    session_timeout: float = 10.0
    #: None: plaintext. ``tls=true`` or any TLS option means TLS or an error, never plaintext
    tls: ssl.SSLContext | None = None
    #: None: no SASL; else one of :data:`SASL_MECHANISMS`, with ``user`` and ``password``
    sasl_mechanism: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """Where it connects, without credentials (for errors and logs)."""
        return "kafka://" + ",".join(self.bootstrap)

    def security(self) -> dict[str, Any]:
        """aiokafka's keyword arguments for TLS and SASL (the same for every client it makes)."""
        tls, sasl = self.tls is not None, self.sasl_mechanism is not None
        protocol = {(False, False): "PLAINTEXT", (True, False): "SSL", (False, True): "SASL_PLAINTEXT"}
        found: dict[str, Any] = {"security_protocol": protocol.get((tls, sasl), "SASL_SSL")}
        if self.tls is not None:
            found["ssl_context"] = self.tls
        if self.sasl_mechanism is not None:
            found.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.user,
                sasl_plain_password=self.password,
            )
        return found


def settings_from(url: str, options: Mapping[str, Any]) -> Settings:
    """Parse a ``kafka://host:port[,host:port]`` URL and its options."""
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise ValueError(f"not a Kafka URL: {url!r}")
    userinfo, _, netloc = parts.netloc.rpartition("@")
    hosts = [host.strip() for host in netloc.split(",") if host.strip()]
    if not hosts:
        raise ValueError("a Kafka URL is kafka://[user:password@]host:port[,host:port...]")
    reader = OptionReader("kafka", options)
    tls = _tls(reader)
    user, _, password = userinfo.partition(":")
    sasl_mechanism, user_name, secret = _sasl(
        reader, unquote(user) or None, unquote(password) if ":" in userinfo else None, tls
    )
    prefix = str(options.get("prefix", "") or "")
    if prefix and not prefix.endswith("."):
        prefix += "."
    codec_name = str(options.get("codec", "proto")).lower()
    codec_named(codec_name)
    topic = reader.text("topic") or DEFAULT_TOPIC
    fields = set(_TEMPLATE_FIELDS.findall(topic))
    if not fields <= {"prefix", "service", "method"} or not {"service", "method"} <= fields:
        raise reader.error(
            "topic", f"must use {{service}} and {{method}} (and may use {{prefix}}), not {topic!r}"
        )
    engine = EngineSettings(
        prefix=prefix,
        queue_group=str(options.get("queue_group", "")),
        max_concurrency=reader.positive_int("max_concurrency", DEFAULT_MAX_CONCURRENCY),
        max_pending=reader.count("max_pending", DEFAULT_MAX_PENDING),
        max_message_size=reader.positive_int("max_message_size", DEFAULT_MAX_MESSAGE_SIZE),
        window=reader.positive_int("window", 64),
        heartbeat=max(0.01, reader.seconds("heartbeat", 5.0)),
        codec_name=codec_name,
        version=str(options.get("version", __version__)),
        reflection=reader.flag("reflection", True),
        durable=durable_settings("kafka", options),
    )
    return Settings(
        bootstrap=hosts,
        engine=engine,
        topic=topic,
        partitions=reader.positive_int("partitions", 4),
        replication_factor=reader.positive_int("replication_factor", 1),
        control_topic=reader.text("control_topic") or "protobind.control",
        idempotence=reader.flag("idempotence", True),
        max_payload=reader.positive_int("max_payload", DEFAULT_MAX_PAYLOAD),
        fetch_wait=reader.seconds("fetch_wait", 0.05),
        linger=_non_negative(reader, "linger"),
        batch_size=_batch_size(reader),
        client_id=reader.text("client_id") or "protobind",
        connect_timeout=reader.seconds("connect_timeout", 10.0),
        rebalance_grace=reader.seconds("rebalance_grace", 10.0),
        session_timeout=reader.seconds("session_timeout", 10.0),
        tls=tls,
        sasl_mechanism=sasl_mechanism,
        user=user_name,
        password=secret,
    )


def _tls(reader: OptionReader) -> ssl.SSLContext | None:
    """The TLS context: ``tls=true``, or any TLS option, means TLS; ``tls=false`` with TLS
    options is a contradiction, refused."""
    wanted = reader.flag("tls", False) if reader.given("tls") else None
    given = [name for name in ("tls_ca", "tls_cert", "tls_key", "ssl_context") if reader.given(name)]
    if wanted is False and given:
        raise reader.error("tls", f"is false but TLS options were given ({', '.join(given)})")
    context = reader.tls_context()
    if context is None and wanted:
        context = ssl.create_default_context()  # the system's CAs
    return context


def _sasl(
    reader: OptionReader, user: str | None, password: str | None, tls: ssl.SSLContext | None
) -> tuple[str | None, str | None, str | None]:
    """The SASL mechanism and credentials (the ``user``/``password`` options override the URL's);
    a password is never part of an error."""
    if reader.given("user"):
        user = str(reader.options["user"])
    if reader.given("password"):
        password = str(reader.options["password"])
    mechanism = (reader.text("sasl_mechanism") or "").upper() or None
    if mechanism is None:
        if user is not None or password is not None:
            raise reader.error(
                "sasl_mechanism",
                f"is needed with credentials: one of {', '.join(SASL_MECHANISMS)} (what the cluster's "
                "listener expects)",
            )
        return None, None, None
    if mechanism not in SASL_MECHANISMS:
        raise reader.error(
            "sasl_mechanism", f"must be one of {', '.join(SASL_MECHANISMS)}, not {mechanism!r}"
        )
    if not user or password is None:
        raise reader.error("sasl_mechanism", "needs a user and a password (kafka://user:password@host:port)")
    if mechanism == "PLAIN" and tls is None:
        raise reader.error(
            "sasl_mechanism",
            "PLAIN sends the password as it is: it needs TLS (tls=true or tls_ca=...), "
            "or use SCRAM-SHA-256/512",
        )
    return mechanism, user, password


def _batch_size(reader: OptionReader) -> int:
    size = reader.positive_int("batch_size", DEFAULT_BATCH_SIZE)
    max_payload = reader.positive_int("max_payload", DEFAULT_MAX_PAYLOAD)
    if reader.given("batch_size") and size > max_payload:
        raise reader.error("batch_size", f"must not exceed max_payload ({max_payload}), not {size}")
    return min(size, max_payload)


def _non_negative(reader: OptionReader, name: str) -> float:
    value = reader.options.get(name, 0.0)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise reader.error(name, f"must be a number of seconds, not {value!r}") from None
    if not 0 <= number < 60:
        raise reader.error(name, f"must be 0 or more seconds (under a minute), not {value!r}")
    return number


def client_url(url: str) -> str:
    """``url`` without the server-only options of its query string: what a client dials."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k in CLIENT_OPTIONS]
    return urlunsplit(parts._replace(query=urlencode(kept)))
