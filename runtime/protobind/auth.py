"""Bearer-token and API-key authentication, the same on every transport.

Server side, :class:`BearerAuth` is a server interceptor::

    auth = protobind.auth.BearerAuth({
        "s3cr3t-admin": ["*"],                                  # every method
        "s3cr3t-reader": ["library.v1.Library/Get*", "grpc.health.v1.Health/*"],
    })
    server = protobind.Server([Library()], interceptors=[auth])

A call without a token (or with a token nobody configured) fails with UNAUTHENTICATED; a known
token used on a method outside its patterns fails with PERMISSION_DENIED. Tokens are compared in
constant time (``hmac.compare_digest``, against every configured token). The same check guards what
a binding serves besides the services, when the server has a ``BearerAuth``: gRPC health and
reflection (their gRPC method names), the HTTP binding's ``/openapi.json``
(:data:`OPENAPI_METHOD`) and ``/protobind/reflection`` (:data:`REFLECTION_METHOD`), NATS
micro discovery (:data:`MICRO_METHOD`) and the AsyncAPI documents a broker binding answers
(:data:`ASYNCAPI_METHOD`). Bindings reach it through
:attr:`protobind.endpoints.EndpointTable.authorize`.

A durable request/response call also names the caller group its reply is stored for; a server
with an authorizer stores it only for a group the call's credentials allow, granted like a
method with :func:`reply_group`::

    BearerAuth({
        "s3cr3t-checkout": ["shop.v1.Payments/*", reply_group("checkout")],
        "s3cr3t-admin": ["*"],                                  # every method and every group
    })

Client side, :class:`BearerToken` is a client interceptor that sends the token on every call::

    protobind.connect(url, interceptors=[protobind.auth.BearerToken("s3cr3t-reader")])

``header="x-api-key", scheme=None`` turn both into API-key authentication (the bare key in a
header of its own). Tokens travel as metadata: use TLS (``grpcs://``, ``https://``, ``tls://``)
wherever the network is not trusted.
"""

from __future__ import annotations

import fnmatch
import hmac
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ._context import CallInfo, Context
from ._errors import Code, RpcError
from ._interceptors import Handler, Invoker
from ._metadata import Metadata

__all__ = [
    "ASYNCAPI_METHOD",
    "CREDENTIAL_HEADERS",
    "MICRO_METHOD",
    "OPENAPI_METHOD",
    "REFLECTION_METHOD",
    "REPLY_GROUP_SERVICE",
    "Authorizer",
    "BearerAuth",
    "BearerToken",
    "reply_group",
]

#: The method name ``/openapi.json`` of the HTTP binding is authorized as.
OPENAPI_METHOD = "protobind.Discovery/OpenAPI"
#: The method name the HTTP binding's reflection route (``/protobind/reflection``) is authorized as.
REFLECTION_METHOD = "protobind.Discovery/Reflection"
#: The method name NATS micro discovery (``$SRV.PING|INFO|STATS``) is authorized as.
MICRO_METHOD = "protobind.Discovery/Micro"
#: The method name a request for a service's AsyncAPI document (``$PROTOBIND.ASYNCAPI.*``) is
#: authorized as.
ASYNCAPI_METHOD = "protobind.Discovery/AsyncAPI"
#: The service part of the names durable reply groups are authorized as (see :func:`reply_group`).
REPLY_GROUP_SERVICE = "protobind.ReplyGroup"


def reply_group(group: str) -> str:
    """The method name (or pattern: ``reply_group("team-*")``) that grants storing the replies of
    durable request/response calls for the caller group ``group``. A server asks its authorizer
    for it, with the call's metadata, before it runs such a call: a group the credentials are not
    granted refuses the call (``PERMISSION_DENIED``, to the dead letter, no reply anywhere).

    ``group`` is spelled as in the reply subject: letters, digits, ``-`` and ``_``."""
    return f"{REPLY_GROUP_SERVICE}/{group}"


#: Metadata keys that carry credentials: never copied where others read (durable dead letters).
#: A :class:`BearerAuth` reading another header should use one of these names.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})


class Authorizer(Protocol):
    """What a binding asks before serving something that is not a service method."""

    def authorize(self, metadata: Metadata, method: str) -> RpcError | None:
        """``None`` to allow a call of ``method`` (``package.Service/Method``) with this request
        metadata, else the error to answer with."""
        ...


class BearerAuth:
    """Server interceptor: require a known token on every call (see the module docstring).

    ``tokens`` maps each token to the method patterns it may call (``*`` for all;
    ``package.Service/*``; shell-style wildcards; :func:`reply_group` for the caller groups its
    durable calls may have their replies stored for), or is a plain collection of tokens that may
    call everything. ``public`` lists method patterns anyone may call without a token. ``header`` is
    the metadata key carrying the token; with ``scheme`` (default ``Bearer``) its value must be
    ``"<scheme> <token>"``, with ``scheme=None`` it is the token itself.
    """

    def __init__(
        self,
        tokens: Mapping[str, Iterable[str]] | Iterable[str],
        *,
        header: str = "authorization",
        scheme: str | None = "Bearer",
        public: Iterable[str] = (),
    ) -> None:
        if isinstance(tokens, Mapping):
            pairs = [(token, tuple(patterns)) for token, patterns in tokens.items()]
        else:
            pairs = [(token, ("*",)) for token in tokens]
        if not pairs or any(not token for token, _ in pairs):
            raise ValueError("BearerAuth needs at least one token, and no empty token")
        self._tokens = [(token.encode(), patterns) for token, patterns in pairs]
        self._header = header.lower()
        self._scheme = scheme
        self._public = tuple(public)

    def __repr__(self) -> str:
        return f"BearerAuth({len(self._tokens)} tokens, header={self._header!r})"

    def authorize(self, metadata: Metadata, method: str) -> RpcError | None:
        """``None`` when ``metadata`` carries a token allowed to call ``method``, else the error."""
        if _matches(method, self._public):
            return None
        presented = self._presented(metadata)
        if presented is None:
            return RpcError(Code.UNAUTHENTICATED, "missing credentials")
        allowed: tuple[str, ...] | None = None
        for token, patterns in self._tokens:  # every token, not the first match: constant time
            if hmac.compare_digest(presented, token) and allowed is None:
                allowed = patterns
        if allowed is None:
            return RpcError(Code.UNAUTHENTICATED, "invalid credentials")
        if not _matches(method, allowed):
            return RpcError(Code.PERMISSION_DENIED, f"these credentials may not call {method}")
        return None

    def _presented(self, metadata: Metadata) -> bytes | None:
        value = metadata.get(self._header)
        if value is None:
            return None
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if self._scheme is not None:
            scheme, _, text = text.strip().partition(" ")
            if scheme.lower() != self._scheme.lower():
                return None
        text = text.strip()
        return text.encode() if text else None

    async def intercept(self, handler: Handler, request: Any, context: Context) -> Any:
        """Refuse the call unless :meth:`authorize` allows it."""
        error = self.authorize(context.metadata, context.method)
        if error is not None:
            if error.code is Code.UNAUTHENTICATED and self._scheme is not None:
                context.set_header("www-authenticate", self._scheme)
            raise error
        return await handler(request, context)


def _matches(method: str, patterns: Iterable[str]) -> bool:
    return any(pattern == "*" or fnmatch.fnmatchcase(method, pattern) for pattern in patterns)


class BearerToken:
    """Client interceptor: send ``token`` with every call (``header`` and ``scheme`` as for
    :class:`BearerAuth`). The token never appears in its repr."""

    def __init__(self, token: str, *, header: str = "authorization", scheme: str | None = "Bearer") -> None:
        if not token:
            raise ValueError("BearerToken needs a token")
        self._header = header.lower()
        self._value = f"{scheme} {token}" if scheme else token

    def __repr__(self) -> str:
        return f"BearerToken(header={self._header!r}, token=<hidden>)"

    async def intercept(self, invoker: Invoker, request: Any, call: CallInfo) -> Any:
        """Put the token in the call's metadata."""
        call.metadata[self._header] = self._value
        return await invoker(request, call)
