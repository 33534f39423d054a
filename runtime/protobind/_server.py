"""``Server``: the registered services, their endpoints, and the bindings that serve them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from . import _aio as aio
from . import transport as registry
from ._context import Context
from ._errors import Code, RpcError
from ._interceptors import Handler, ServerInterceptor, chain_server
from ._metadata import Metadata
from .endpoints import Endpoint, EndpointTable
from .method import MethodInfo, MethodKind, ServiceInfo
from .telemetry import Telemetry, TelemetryOption
from .transport import ServerBinding, check_options, query_options, transport_for_url
from .urls import redact

__all__ = ["Server", "service_info"]

logger = logging.getLogger("protobind.server")


def service_info(service: object) -> ServiceInfo:
    """The :class:`ServiceInfo` of an implementation of a generated ``{Service}Service`` class."""
    info = getattr(type(service), "PROTOBIND_SERVICE", None)
    if not isinstance(info, ServiceInfo):
        raise TypeError(
            f"{type(service).__name__} is not a protobind service: subclass a generated `...Service` class"
        )
    return info


def _user_handler(service: object, method: MethodInfo[Any, Any]) -> Handler:
    fn = getattr(service, method.python_name)
    if method.kind in (MethodKind.UNARY, MethodKind.CLIENT_STREAMING):
        return fn  # type: ignore[no-any-return]

    async def open_stream(request: Any, context: Context) -> Any:
        return fn(request, context)

    return open_stream


def _authorizer(
    interceptors: Sequence[ServerInterceptor],
) -> Callable[[Metadata, str], RpcError | None] | None:
    checks = [check for i in interceptors if callable(check := getattr(i, "authorize", None))]
    if not checks:
        return None

    def authorize(metadata: Metadata, method: str) -> RpcError | None:
        for check in checks:
            error = check(metadata, method)
            if error is not None:
                return error  # type: ignore[no-any-return]
        return None

    return authorize


class BackgroundCalls:
    """The handlers of one-way calls, run after their callers were acknowledged.

    A one-way method's endpoint runs the interceptors as for any call (so they can still refuse
    it, and the caller gets that error), then starts the user's handler here and answers
    ``Empty`` at once: every transport acknowledges a one-way call when it has decoded it and the
    interceptors let it through. Nobody waits for the handler, so its errors are logged, never
    sent, and the caller's deadline does not bind it. At most ``limit`` handlers run at once; a
    one-way call beyond that waits for a slot before it is acknowledged (back-pressure rather than
    an unbounded pile of tasks). :meth:`Server.stop` drains them.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("max_oneway must be at least 1")
        self.limit = limit
        self.tasks: set[asyncio.Task[None]] = set()
        self._slots = aio.Slots(limit)
        #: set by :meth:`drain`, cleared when the server starts again
        self.closed = False

    def acknowledging(self, fn: Handler, method: MethodInfo[Any, Any]) -> Handler:
        """The innermost handler of one-way ``method``: start ``fn`` in the background, answer Empty."""
        empty = method.output_type()

        async def acknowledge(request: Any, context: Context) -> Any:
            await self.start(fn, request, context)
            return empty

        return acknowledge

    async def start(self, fn: Handler, request: Any, context: Context) -> None:
        """Run ``fn(request, context)`` in a task of its own once a slot is free."""
        if self.closed:
            raise RpcError(Code.UNAVAILABLE, "the server is shutting down")
        slots = self._slots
        await slots.acquire()
        # the caller's deadline bounded delivery; the handler runs to its end (or to stop())
        context.deadline = None
        task = asyncio.get_running_loop().create_task(self._run(fn, request, context, slots))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, fn: Handler, request: Any, context: Context, slots: aio.Slots) -> None:
        try:
            await fn(request, context)
        except RpcError as error:
            logger.warning("one-way call %s failed: %s: %s", context.method, error.code.name, error.message)
        except asyncio.CancelledError:
            logger.warning("one-way call %s cancelled before its handler finished", context.method)
        except Exception as exc:
            logger.error("handler of one-way call %s raised", context.method, exc_info=exc)
        finally:
            slots.release()

    async def drain(self, grace: float) -> None:
        """Refuse new one-way calls; wait up to ``grace`` seconds for the running handlers, then
        cancel the rest."""
        self.closed = True
        if self.tasks and grace > 0:
            await asyncio.wait(set(self.tasks), timeout=grace)
        left = set(self.tasks)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=1.0)


class Server:
    """Serve protobind services on one or more URLs.

    ``Server([Greeter()], interceptors=[...])`` registers the services;
    ``await server.start("grpc://127.0.0.1:50051", "nats://127.0.0.1:4222")`` binds them;
    ``await server.stop(grace=5.0)`` refuses new calls and drains in-flight ones.
    ``transport_options`` maps a transport name (``"grpc"``, ``"http"``, ``"nats"``, ...; one entry
    covers its TLS scheme too) to server options for that transport, merged over the URL's query
    string. ``telemetry=True`` (or a :class:`protobind.Telemetry`) traces, measures and logs every
    call (docs/observability.md).
    ``max_oneway`` bounds the one-way handlers running at once in the background (see
    :class:`BackgroundCalls`). ``access_log=True`` logs one line per call on the
    ``protobind.access`` logger (:mod:`protobind._access_log`; ``protobind serve`` turns it on).
    """

    def __init__(
        self,
        services: Iterable[object],
        *,
        interceptors: Sequence[ServerInterceptor] = (),
        transport_options: Mapping[str, Mapping[str, Any]] | None = None,
        telemetry: TelemetryOption = None,
        max_oneway: int = 1024,
        access_log: bool = False,
    ) -> None:
        self.background = BackgroundCalls(max_oneway)
        self.telemetry = Telemetry.from_option(telemetry)
        if access_log:  # around the application's interceptors, so it logs their refusals too
            from ._access_log import AccessLog

            interceptors = (AccessLog(), *interceptors)
        if self.telemetry is not None:  # outermost, so it sees what the other interceptors do
            interceptors = (self.telemetry.server_interceptor(lambda: self.urls, registry), *interceptors)
        self.services: list[ServiceInfo] = []
        self.endpoints: dict[str, Endpoint] = {}
        self._table: EndpointTable | None = None
        self.interceptors = tuple(interceptors)
        self.transport_options = {k: dict(v) for k, v in (transport_options or {}).items()}
        self.bindings: list[ServerBinding] = []
        for service in services:
            self.add_service(service)

    def add_service(self, service: object) -> None:
        """Register one more service implementation (before :meth:`start`)."""
        if self._table is not None:
            raise RuntimeError(
                f"cannot add {type(service).__name__} to a started server: "
                "register every service before start()"
            )
        info = service_info(service)
        self.add_handlers(info, {m.name: _user_handler(service, m) for m in info.methods})

    def add_handlers(self, info: ServiceInfo, handlers: Mapping[str, Handler]) -> None:
        """Register a service from its description and one untyped :data:`~protobind.Handler` per
        method, keyed by proto method name (before :meth:`start`). This serves a service without
        generated code (:class:`protobind.Gateway` does); a handler of a server- or bidi-streaming
        method returns an async iterator of responses."""
        if self._table is not None:
            raise RuntimeError(
                f"cannot add {info.name} to a started server: register every service before start()"
            )
        if any(s.name == info.name for s in self.services):
            raise ValueError(f"service {info.name} registered twice")
        missing = [m.name for m in info.methods if m.name not in handlers]
        if missing:
            raise ValueError(f"{info.name}: no handler for {', '.join(missing)}")
        self.services.append(info)
        for method in info.methods:
            user = handlers[method.name]
            if method.oneway:
                acknowledge = self.background.acknowledging(user, method)
                self.endpoints[method.path] = Endpoint(
                    method,
                    chain_server(acknowledge, self.interceptors),
                    chain_server(user, self.interceptors),
                )
            else:
                self.endpoints[method.path] = Endpoint(method, chain_server(user, self.interceptors))

    @property
    def urls(self) -> list[str]:
        """The bound URLs, with real port numbers (credentials hidden)."""
        return [redact(binding.url) for binding in self.bindings]

    def table(self) -> EndpointTable:
        """The frozen view of the endpoints the bindings serve; taking it freezes the server."""
        if self._table is None:
            self._table = EndpointTable(
                tuple(self.services),
                MappingProxyType(dict(self.endpoints)),
                self.telemetry,
                _authorizer(self.interceptors),
            )
        return self._table

    async def start(self, *urls: str) -> list[str]:
        """Bind every URL; return the bound URLs. On failure, bindings already started are stopped."""
        started: list[ServerBinding] = []
        table = self.table()
        self.background.closed = False
        try:
            for url in urls:
                transport = transport_for_url(url)
                transport.check_installed(server=True)
                options = query_options(url, self.transport_options.get(transport.name))
                check_options(transport, options, server=True)
                started.append(await transport.serve(table, url, options))
        except BaseException:
            for binding in started:
                await binding.stop(0)
            raise
        self.bindings.extend(started)
        # the caller's own URLs, credentials included: it needs them to connect
        return [binding.url for binding in started]

    async def stop(self, grace: float | None = 5.0) -> None:
        """Stop every binding: new calls are refused at once, in-flight calls get ``grace`` seconds,
        and so do the handlers of one-way calls already acknowledged; what is left is cancelled."""
        loop = asyncio.get_running_loop()
        until = loop.time() + (grace or 0.0)
        bindings, self.bindings = self.bindings, []
        await asyncio.gather(*(binding.stop(grace) for binding in bindings))
        await self.background.drain(max(0.0, until - loop.time()))

    def run(
        self,
        *urls: str,
        loop: str = "asyncio",
        grace: float | None = 5.0,
        on_start: Callable[[list[str]], None] | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        """Serve ``urls`` until SIGINT or SIGTERM, then stop with ``grace``: blocking, on a new
        event loop of the kind ``loop`` names (``"asyncio"`` or ``"uvloop"``). ``on_start``
        gets the bound URLs; ``on_stop`` runs when the signal came. ``protobind serve`` is this."""
        aio.run(
            aio.serve_until_signal(lambda: self.start(*urls), lambda: self.stop(grace), on_start, on_stop),
            loop,
        )

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
