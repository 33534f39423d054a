"""The implementation of ``protobind.conformance.v1.ConformanceService`` that the conformance
matrix and protobind's own test suite serve.

Each request's ``behavior`` says what to do: fail with a code (and a ``google.rpc.ErrorInfo``
detail), raise a plain exception, sleep, stream so many responses, fail mid-stream. The service
records which calls saw their task cancelled (``cancelled``, by request text) so a client-side
check can tell that a deadline or a cancellation reached the handler. A request whose text starts
with ``gate`` waits in its handler until ``gate`` is set, which lets a test tell a caller that did
not wait for the handler (a one-way call) from one that did, without timing anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from google.protobuf.empty_pb2 import Empty
from google.rpc import error_details_pb2

from ..._context import Context
from ..._errors import Code, RpcError
from ...conformance.v1.conformance_pb2 import Request, Response
from ...conformance.v1.conformance_protobind import ConformanceService

__all__ = ["Conformance"]


def _fail(request: Request) -> None:
    behavior = request.behavior
    if behavior.raise_exception:
        raise ValueError("secret internal detail: database password is hunter2")
    if behavior.error_code:
        details = []
        if behavior.error_detail_reason:
            details.append(
                error_details_pb2.ErrorInfo(
                    reason=behavior.error_detail_reason, domain="protobind.test", metadata={"k": "v"}
                )
            )
        raise RpcError(Code(behavior.error_code), behavior.error_message, details)


def _response(request: Request, context: Context, *, index: int = 0, request_count: int = 0) -> Response:
    remaining = context.time_remaining()
    response = Response(
        text=request.text,
        payload=b"x" * request.behavior.response_size if request.behavior.response_size else request.payload,
        metadata={k: v for k, v in context.metadata.items() if isinstance(v, str) and k.startswith("x-")},
        time_remaining=-1.0 if remaining is None else remaining,
        transport=context.transport,
        method=context.method,
        number=request.number,
        index=index,
        request_count=request_count,
    )
    if request.HasField("everything"):
        response.everything.CopyFrom(request.everything)
    return response


def _echo_metadata(context: Context) -> None:
    # x-echo-NAME comes back as header x-echo-NAME-header and trailer x-echo-NAME-trailer
    # (x-echo-NAME-bin as x-echo-NAME-header-bin: binary keys keep their suffix)
    for key, value in context.metadata.items():
        if key.startswith("x-echo-"):
            stem, binary = (key[:-4], "-bin") if key.endswith("-bin") else (key, "")
            context.set_header(f"{stem}-header{binary}", value)
            context.set_trailer(f"{stem}-trailer{binary}", value)


class Conformance(ConformanceService):
    """Echoes requests and does what their ``behavior`` asks."""

    def __init__(self) -> None:
        #: texts of the requests whose handler was cancelled (deadline or caller gone)
        self.cancelled: list[str] = []
        #: texts of the requests whose handler started its ``sleep_ms``
        self.sleeping: list[str] = []
        #: set once a unary handler has started
        self.started = asyncio.Event()
        #: requests whose text starts with "gate" wait in the handler until this is set
        self.gate = asyncio.Event()
        #: texts of the unary and one-way requests that reached their handler
        self.entered: list[str] = []
        #: texts of the one-way requests whose handler finished (failing ones included)
        self.notified: list[str] = []
        self._changed = asyncio.Event()

    def _record(self, seen: list[str], text: str) -> None:
        seen.append(text)
        self._changed.set()

    async def until(self, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        """Wait until ``condition()`` holds; it is checked whenever a handler records a call."""

        async def wait() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    async def _enter(self, request: Request) -> None:
        self._record(self.entered, request.text)
        if request.text.startswith("gate"):
            await self.gate.wait()

    async def _sleep(self, request: Request) -> None:
        self.sleeping.append(request.text)
        try:
            await asyncio.sleep(request.behavior.sleep_ms / 1000)
        except asyncio.CancelledError:
            self._record(self.cancelled, request.text)
            raise

    async def unary(self, request: Request, context: Context) -> Response:
        _echo_metadata(context)
        self.started.set()
        await self._enter(request)
        if request.behavior.sleep_ms:
            await self._sleep(request)
        _fail(request)
        return _response(request, context)

    async def lookup(self, request: Request, context: Context) -> Response:
        return await self.unary(request, context)

    async def server_stream(self, request: Request, context: Context) -> AsyncIterator[Response]:
        _echo_metadata(context)
        behavior = request.behavior
        try:
            for index in range(behavior.stream_count):
                if behavior.error_after and index == behavior.error_after:
                    _fail(request)
                if behavior.sleep_ms:
                    await asyncio.sleep(behavior.sleep_ms / 1000)
                yield _response(request, context, index=index)
        except (asyncio.CancelledError, GeneratorExit):
            # GeneratorExit: the binding closed the generator because the caller went away
            self.cancelled.append(request.text)
            raise
        if not behavior.error_after:
            _fail(request)

    async def client_stream(self, requests: AsyncIterator[Request], context: Context) -> Response:
        _echo_metadata(context)
        texts = []
        try:
            async for request in requests:
                texts.append(request.text)
                _fail(request)  # at once, while the caller may still be sending
        except asyncio.CancelledError:
            self.cancelled.append(",".join(texts))
            raise
        return _response(Request(text=",".join(texts)), context, request_count=len(texts))

    async def bidi_stream(
        self, requests: AsyncIterator[Request], context: Context
    ) -> AsyncIterator[Response]:
        _echo_metadata(context)
        index = 0
        async for request in requests:
            _fail(request)
            if request.behavior.sleep_ms:
                await self._sleep(request)
            yield _response(request, context, index=index)
            index += 1

    async def notify(self, request: Request, context: Context) -> Empty:
        await self._enter(request)
        try:
            if request.behavior.sleep_ms:
                await self._sleep(request)
            _fail(request)
        finally:
            self._record(self.notified, request.text)
        return Empty()
