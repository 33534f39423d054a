"""The conformance cases: each one a short async function that calls the conformance service
through a :class:`ConformanceClient` and raises ``AssertionError`` (or anything else) when the
pairing misbehaves.

A case names the client features it needs (``streams``, ``full_duplex``, ``cancel``, ...): a
column whose client lacks one shows the case as not applicable. Which (case, transport) cells are
unsupported by design, and how each refuses, is in :data:`UNSUPPORTED`; docs/protocols.md says the
same.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf import (
    any_pb2,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from ..._client import RequestStream
from ..._context import CallInfo
from ..._errors import Code, RpcError
from ..._metadata import MetadataLike
from ...conformance.v1.conformance_pb2 import Behavior, Color, Everything, Nested, Request, Response
from ...conformance.v1.conformance_protobind import CONFORMANCE_SERVICE_UNARY
from ...method import MethodInfo
from .service import Conformance

__all__ = ["CASES", "UNSUPPORTED", "Case", "ConformanceClient", "Env", "Unsupported"]

KiB = 1024


class ConformanceClient(Protocol):
    """What a case calls: the generated ``ConformanceServiceClient``'s methods, plus ``call_unary``
    for any unary method (one the server does not have, say)."""

    async def unary(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> Response:
        """Call ``Unary``."""
        ...

    async def lookup(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> Response:
        """Call ``Lookup`` (``NO_SIDE_EFFECTS``)."""
        ...

    def server_stream(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> AsyncIterator[Response]:
        """Call ``ServerStream``."""
        ...

    async def client_stream(
        self,
        requests: RequestStream[Request],
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> Response:
        """Call ``ClientStream``."""
        ...

    def bidi_stream(
        self,
        requests: RequestStream[Request],
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> AsyncIterator[Response]:
        """Call ``BidiStream``."""
        ...

    async def notify(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> None:
        """Call ``Notify`` (one-way)."""
        ...

    async def call_unary(
        self, method: MethodInfo[Request, Response], request: Request, *, timeout: float | None = None
    ) -> Response:
        """Call any unary method with ``Request`` and ``Response`` messages."""
        ...


@dataclass(frozen=True, slots=True)
class Env:
    """What a case runs with: the client of one column, the service behind it (to observe the
    handler's side), the transport's message size limit and a text unique to this cell."""

    client: ConformanceClient
    service: Conformance
    transport: str
    limit: int | None
    marker: str


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A (case, transport) cell that the transport does not support by design. ``probe`` makes the
    call the transport refuses; it must fail with ``code`` (the documented refusal). Without a
    probe there is nothing to call."""

    reason: str
    probe: Callable[[Env], Awaitable[None]] | None = None
    code: Code = Code.UNIMPLEMENTED


@dataclass(frozen=True, slots=True)
class Case:
    """One conformance case."""

    name: str
    summary: str
    run: Callable[[Env], Awaitable[None]]
    needs: frozenset[str] = field(default_factory=frozenset)


CASES: list[Case] = []


async def _bidi_call(env: Env) -> None:
    async for _ in env.client.bidi_stream([Request(text="probe")], timeout=10):
        pass


_BIDI_OVER_HTTP = Unsupported(
    "bidi streaming needs full duplex; Connect over HTTP/1.1 (the connectrpc client) answers unimplemented "
    "(docs/protocols.md, HTTP > Streaming)",
    _bidi_call,
)
_NO_LIMIT_IN_PROCESS = Unsupported(
    "in-process calls cross no wire and have no message size limit (docs/protocols.md, In-process)"
)


async def _unknown_method_waits(env: Env) -> None:
    missing = dataclasses.replace(CONFORMANCE_SERVICE_UNARY, name="NoSuchMethod")
    # the first call may create the method's topic (then it is answered UNAVAILABLE at once): the
    # documented case is the second one, on a topic that exists and that nobody reads
    with contextlib.suppress(RpcError):
        await env.client.call_unary(missing, Request(), timeout=1)
    await env.client.call_unary(missing, Request(), timeout=1)


_KAFKA_TOPIC_PER_METHOD = Unsupported(
    "each method has a topic of its own, so a method the server lacks reaches nobody: the call ends "
    "at its deadline (docs/protocols.md, Kafka)",
    _unknown_method_waits,
    Code.DEADLINE_EXCEEDED,
)

#: (case name, transport) -> why the transport does not support it (also in docs/protocols.md).
UNSUPPORTED: dict[tuple[str, str], Unsupported] = {
    ("stream.bidi", "http"): _BIDI_OVER_HTTP,
    ("stream.bidi_error", "http"): _BIDI_OVER_HTTP,
    ("limits.request_over", "inproc"): _NO_LIMIT_IN_PROCESS,
    ("limits.response_over", "inproc"): _NO_LIMIT_IN_PROCESS,
    ("errors.unknown_method", "kafka"): _KAFKA_TOPIC_PER_METHOD,
}


def case(name: str, *, needs: Iterable[str] = ()) -> Callable[[Callable[[Env], Awaitable[None]]], Case]:
    """Register the decorated function as a case; its docstring is the summary."""

    def register(run: Callable[[Env], Awaitable[None]]) -> Case:
        found = Case(name, (run.__doc__ or "").strip().splitlines()[0], run, frozenset(needs))
        CASES.append(found)
        return found

    return register


# --- helpers ---------------------------------------------------------------------------------------


async def _error(call: Awaitable[object]) -> RpcError:
    try:
        await call
    except RpcError as error:
        return error
    raise AssertionError("the call succeeded; an error was expected")


async def _collect(responses: AsyncIterator[Response], into: list[Response] | None = None) -> list[Response]:
    seen = [] if into is None else into
    async for response in responses:
        seen.append(response)
    return seen


def _check_error(error: RpcError, code: Code, message: str | None = None, reason: str | None = None) -> None:
    assert error.code is code, f"code {error.code.name} ({error.message!r}), expected {code.name}"
    if message is not None:
        assert error.message == message, f"message {error.message!r}, expected {message!r}"
    if reason is not None:
        infos = [d for d in error.details if isinstance(d, error_details_pb2.ErrorInfo)]
        assert len(infos) == 1, f"details {list(error.details)!r}, expected one google.rpc.ErrorInfo"
        assert (infos[0].reason, dict(infos[0].metadata)) == (reason, {"k": "v"}), f"detail {infos[0]}"


async def _eventually(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait (bounded) for something the server does after the client already has its answer."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def _fail(code: Code, message: str, reason: str = "") -> Behavior:
    return Behavior(error_code=int(code), error_message=message, error_detail_reason=reason)


def _same(sent: Message, got: Message) -> None:
    """Field by field, presence included; floats compared by their bits (NaN, -0.0)."""
    if sent.SerializeToString(deterministic=True) == got.SerializeToString(deterministic=True):
        return
    sent_fields = {f.name: v for f, v in sent.ListFields()}
    got_fields = {f.name: v for f, v in got.ListFields()}
    for name in sorted(set(sent_fields) | set(got_fields)):
        if name not in got_fields:
            raise AssertionError(f"{name} was sent but came back unset")
        if name not in sent_fields:
            raise AssertionError(f"{name} came back set ({got_fields[name]!r}) but was not sent")
        if _repr(sent_fields[name]) != _repr(got_fields[name]):
            raise AssertionError(f"{name}: sent {_repr(sent_fields[name])}, got {_repr(got_fields[name])}")
    raise AssertionError(f"the encodings differ: sent {sent}, got {got}")


def _repr(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if not math.isnan(value) else "nan"
    if isinstance(value, Message):
        return "{" + str(value).replace("\n", " ").strip() + "}"
    if hasattr(value, "items"):
        return repr(sorted((k, _repr(v)) for k, v in value.items()))
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return repr([_repr(v) for v in value])
    return repr(value)


async def _echo_everything(env: Env, everything: Everything) -> None:
    reply = await env.client.unary(Request(text=env.marker, everything=everything), timeout=30)
    assert reply.HasField("everything"), "Response.everything came back unset"
    _same(everything, reply.everything)


async def _requests(items: Iterable[Request], pause: float = 0.0) -> AsyncIterator[Request]:
    for item in items:
        if pause:
            await asyncio.sleep(pause)
        yield item


# --- unary calls and encodings ---------------------------------------------------------------------


@case("unary.echo")
async def _unary_echo(env: Env) -> None:
    """Unary round trip: text, bytes, int64; the handler sees transport and method."""
    reply = await env.client.unary(Request(text="hello", payload=b"\x00\x01\xff", number=2**40), timeout=10)
    assert (reply.text, reply.payload, reply.number) == ("hello", b"\x00\x01\xff", 2**40), reply
    assert reply.transport == env.transport, f"handler saw transport {reply.transport!r}"
    assert reply.method == "protobind.conformance.v1.ConformanceService/Unary", reply.method
    assert not reply.HasField("everything"), "an unset message field came back set"
    empty = await env.client.unary(Request(), timeout=10)
    assert empty.text == "" and empty.payload == b"" and empty.number == 0, empty


@case("unary.lookup")
async def _unary_lookup(env: Env) -> None:
    """A NO_SIDE_EFFECTS method (Connect clients may use GET)."""
    reply = await env.client.lookup(Request(text="looked up", tags=["a", "b"]), timeout=10)
    assert reply.text == "looked up", reply
    assert reply.method.endswith("/Lookup"), reply.method


@case("unary.concurrent")
async def _unary_concurrent(env: Env) -> None:
    """32 unary calls in flight on one client, each answered with its own response."""
    replies = await asyncio.gather(
        *(env.client.unary(Request(text=str(i), number=i), timeout=20) for i in range(32))
    )
    assert [(r.text, r.number) for r in replies] == [(str(i), i) for i in range(32)]


@case("oneway.handled")
async def _oneway_handled(env: Env) -> None:
    """A one-way call returns without waiting for its handler, which then runs (stock clients
    call it as a unary method answered with Empty)."""
    gate = f"gate-{env.marker}"
    env.service.gate.clear()  # one service serves every column of a transport, one cell at a time
    await env.client.notify(Request(text=gate), timeout=10)
    await _eventually(lambda: gate in env.service.entered, "the handler starting")
    assert gate not in env.service.notified, "the call waited for the handler"
    env.service.gate.set()
    await _eventually(lambda: gate in env.service.notified, "the handler finishing")


@case("oneway.errors_not_sent")
async def _oneway_errors_not_sent(env: Env) -> None:
    """A one-way handler's error or exception never reaches the caller; the server goes on."""
    failing = Behavior(error_code=int(Code.FAILED_PRECONDITION), error_message="no")
    texts = [f"fails-{env.marker}", f"raises-{env.marker}"]
    raising = Behavior(raise_exception=True)
    await env.client.notify(Request(text=texts[0], behavior=failing), timeout=10)
    await env.client.notify(Request(text=texts[1], behavior=raising), timeout=10)
    await _eventually(lambda: set(texts) <= set(env.service.notified), "both handlers running")
    assert (await env.client.unary(Request(text="after"), timeout=10)).text == "after"


@case("types.scalars")
async def _types_scalars(env: Env) -> None:
    """Every scalar type at its extremes, enums and nested messages."""
    await _echo_everything(
        env,
        Everything(
            f_double=-1.7976931348623157e308,
            # not float32's largest value, 3.4028234663852886e38: protobuf-python prints it in
            # JSON as 3.4028235e+38 and then refuses that as too large (protocolbuffers/protobuf#8336)
            f_float=-3.4028232635611926e38,
            f_int32=-(2**31),
            f_int64=-(2**63),
            f_uint32=2**32 - 1,
            f_uint64=2**64 - 1,
            f_sint32=-(2**31),
            f_sint64=2**63 - 1,
            f_fixed32=2**32 - 1,
            f_fixed64=2**64 - 1,
            f_sfixed32=-(2**31),
            f_sfixed64=-(2**63),
            f_bool=True,
            f_string="plain text",
            f_bytes=bytes(range(256)),
            f_enum=Color.COLOR_GREEN,
            f_message=Nested(name="outer", child=Nested(name="inner", values=[-1, 0, 1]), values=[2**31 - 1]),
        ),
    )
    await _echo_everything(env, Everything(f_double=5e-324, f_float=1.401298464324817e-45, f_int64=2**53 + 1))


@case("types.special_floats")
async def _types_special_floats(env: Env) -> None:
    """NaN, infinities and -0.0 in float, double, repeated, maps and wrappers."""
    inf, nan = math.inf, math.nan
    await _echo_everything(
        env,
        Everything(
            f_double=nan,
            f_float=-inf,
            r_double=[inf, -inf, nan, -0.0, 0.0],
            m_string_double={"inf": inf, "nan": nan, "negative zero": -0.0},
            w_double=wrappers_pb2.DoubleValue(value=-inf),
            w_float=wrappers_pb2.FloatValue(value=nan),
            o_double=-0.0,
        ),
    )


@case("types.repeated")
async def _types_repeated(env: Env) -> None:
    """Repeated scalars (packed), strings, bytes, enums and messages, zero values included."""
    await _echo_everything(
        env,
        Everything(
            r_int32=[0, -1, 2**31 - 1, -(2**31), 0],
            r_int64=[2**63 - 1, 0, -(2**63)],
            r_double=[0.0, 1.5, -2.25],
            r_bool=[True, False, True],
            r_string=["", "a", "", "long " * 100],
            r_bytes=[b"", b"\x00", b"\xff" * 3],
            r_enum=[Color.COLOR_UNSPECIFIED, Color.COLOR_RED, Color.COLOR_GREEN],
            r_message=[Nested(), Nested(name="x"), Nested(child=Nested())],
        ),
    )


@case("types.maps")
async def _types_maps(env: Env) -> None:
    """Maps with string, int32, int64, uint32 and bool keys; message, enum and bytes values."""
    await _echo_everything(
        env,
        Everything(
            m_string_string={"": "", "k": "v", "with space": "a=b&c"},
            m_int32_int64={-1: -(2**63), 0: 0, 2**31 - 1: 2**63 - 1},
            m_int64_message={-(2**63): Nested(name="min"), 2**63 - 1: Nested(), 0: Nested(values=[1])},
            m_uint32_enum={0: Color.COLOR_UNSPECIFIED, 2**32 - 1: Color.COLOR_RED},
            m_bool_bytes={True: b"\x00\x01", False: b""},
            m_string_double={"half": 0.5},
        ),
    )


@case("types.oneof")
async def _types_oneof(env: Env) -> None:
    """Each oneof member in turn, zero values included (a set member keeps its presence)."""
    members: list[dict[str, Any]] = [
        {"c_string": ""},
        {"c_string": "text"},
        {"c_int64": 0},
        {"c_int64": -(2**63)},
        {"c_message": Nested()},
        {"c_enum": Color.COLOR_UNSPECIFIED},
        {"c_bytes": b""},
    ]
    for member in members:
        sent = Everything(**member)
        reply = await env.client.unary(Request(everything=sent), timeout=10)
        (name,) = member
        chosen = reply.everything.WhichOneof("choice")
        assert chosen == name, f"sent {name}={member[name]!r}, the oneof came back as {chosen!r}"
        _same(sent, reply.everything)
    reply = await env.client.unary(Request(everything=Everything(f_int32=1)), timeout=10)
    assert reply.everything.WhichOneof("choice") is None, "an unset oneof came back set"


@case("types.well_known")
async def _types_well_known(env: Env) -> None:
    """Timestamp, Duration, Struct, Value, ListValue, Any, FieldMask, Empty and every wrapper."""
    packed = any_pb2.Any()
    packed.Pack(Nested(name="inside any", values=[7]))
    struct = struct_pb2.Struct()
    struct.update(
        {"number": 1.5, "text": "t", "flag": True, "none": None, "list": [1.0, "two"], "obj": {"a": 2.0}}
    )
    value = struct_pb2.Value(string_value="just a string")
    listed = struct_pb2.ListValue()
    listed.extend([1.0, "x", None, False])
    await _echo_everything(
        env,
        Everything(
            t_timestamp=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=123_456_789),
            t_duration=duration_pb2.Duration(seconds=-1, nanos=-500_000_000),
            t_struct=struct,
            t_value=value,
            t_list=listed,
            t_any=packed,
            t_field_mask=field_mask_pb2.FieldMask(paths=["f_int32", "f_message.name"]),
            t_empty=empty_pb2.Empty(),
            w_double=wrappers_pb2.DoubleValue(value=1.25),
            w_float=wrappers_pb2.FloatValue(value=2.5),
            w_int64=wrappers_pb2.Int64Value(value=-(2**63)),
            w_uint64=wrappers_pb2.UInt64Value(value=2**64 - 1),
            w_int32=wrappers_pb2.Int32Value(value=-7),
            w_uint32=wrappers_pb2.UInt32Value(value=2**32 - 1),
            w_bool=wrappers_pb2.BoolValue(value=True),
            w_string=wrappers_pb2.StringValue(value="wrapped"),
            w_bytes=wrappers_pb2.BytesValue(value=b"\x00wrapped"),
        ),
    )


@case("types.presence")
async def _types_presence(env: Env) -> None:
    """Default vs unset: optional fields, wrappers and messages set to zero values stay set."""
    sent = Everything(
        o_int32=0,
        o_string="",
        o_bool=False,
        o_enum=Color.COLOR_UNSPECIFIED,
        o_double=0.0,
        w_int32=wrappers_pb2.Int32Value(value=0),
        w_string=wrappers_pb2.StringValue(value=""),
        w_bool=wrappers_pb2.BoolValue(value=False),
        f_message=Nested(),
        t_empty=empty_pb2.Empty(),
        c_int64=0,
        f_int32=0,
        f_string="",
    )
    reply = await env.client.unary(Request(everything=sent), timeout=10)
    got = reply.everything
    present: list[Any] = [
        "o_int32",
        "o_string",
        "o_bool",
        "o_enum",
        "o_double",
        "w_int32",
        "w_string",
        "w_bool",
    ]
    present += ["f_message", "t_empty", "c_int64"]
    for name in present:
        assert got.HasField(name), f"{name} was set to its zero value but came back unset"
    absent: list[Any] = ["w_int64", "w_bytes", "t_timestamp", "t_any", "c_message"]
    for name in absent:
        assert not got.HasField(name), f"{name} was unset but came back set"
    _same(sent, got)


@case("types.unicode")
async def _types_unicode(env: Env) -> None:
    """Text from every plane (accents, CJK, RTL, emoji, astral symbols, NUL) in fields and map keys."""
    text = "ascii é ß Ω 中文 日本語 עברית 🦀 𝄞 \u2028 \x00 end"
    reply = await env.client.unary(
        Request(
            text=text,
            everything=Everything(
                f_string=text, r_string=[text, "ü"], m_string_string={text: text, "ключ": "значение"}
            ),
        ),
        timeout=10,
    )
    assert reply.text == text, f"text came back as {reply.text!r}"
    assert reply.everything.f_string == text, f"f_string came back as {reply.everything.f_string!r}"
    assert dict(reply.everything.m_string_string) == {text: text, "ключ": "значение"}


# --- limits ----------------------------------------------------------------------------------------

_MARGIN = 64 * KiB  # room for the envelope, headers and JSON quoting below the limit


@case("limits.near")
async def _limits_near(env: Env) -> None:
    """A request and a response just under the transport's message size limit."""
    size = (env.limit or 4096 * KiB) - _MARGIN
    reply = await env.client.unary(Request(text="x" * size), timeout=60)
    assert len(reply.text) == size, f"sent {size} characters, got {len(reply.text)}"


@case("limits.request_over", needs={"request_limit"})
async def _limits_request_over(env: Env) -> None:
    """A request over the limit fails with RESOURCE_EXHAUSTED; the server keeps serving."""
    assert env.limit is not None
    error = await _error(env.client.unary(Request(text="x" * (env.limit + _MARGIN)), timeout=60))
    _check_error(error, Code.RESOURCE_EXHAUSTED)
    assert (await env.client.unary(Request(text="after"), timeout=10)).text == "after"


@case("limits.response_over")
async def _limits_response_over(env: Env) -> None:
    """A response over the limit fails with RESOURCE_EXHAUSTED; the server keeps serving."""
    assert env.limit is not None
    behavior = Behavior(response_size=env.limit + _MARGIN)
    error = await _error(env.client.unary(Request(behavior=behavior), timeout=60))
    _check_error(error, Code.RESOURCE_EXHAUSTED)
    assert (await env.client.unary(Request(text="after"), timeout=10)).text == "after"


# --- metadata --------------------------------------------------------------------------------------


@case("metadata.request")
async def _metadata_request(env: Env) -> None:
    """Request metadata reaches the handler."""
    sent = {"x-user": "ada", "x-trace-id": "t-1"}
    reply = await env.client.unary(Request(), metadata=sent, timeout=10)
    got = dict(reply.metadata)
    for key, value in sent.items():
        assert got.get(key) == value, f"handler saw {key}={got.get(key)!r}"


@case("metadata.headers_trailers")
async def _metadata_headers_trailers(env: Env) -> None:
    """Response headers and trailers, text and binary (-bin), reach the client."""
    call = CallInfo()
    binary = b"\x00\xffbin"
    sent: dict[str, str | bytes] = {"x-echo-a": "1", "x-echo-b-bin": binary}
    await env.client.unary(Request(), metadata=sent, call=call, timeout=10)
    assert call.headers.get("x-echo-a-header") == "1", f"headers {call.headers!r}"
    assert call.trailers.get("x-echo-a-trailer") == "1", f"trailers {call.trailers!r}"
    assert call.headers.get("x-echo-b-header-bin") == binary, f"headers {call.headers!r}"
    assert call.trailers.get("x-echo-b-trailer-bin") == binary, f"trailers {call.trailers!r}"


@case("metadata.on_error")
async def _metadata_on_error(env: Env) -> None:
    """Headers and trailers also reach the client with an error."""
    call = CallInfo()
    behavior = _fail(Code.NOT_FOUND, "gone")
    error = await _error(
        env.client.unary(Request(behavior=behavior), metadata={"x-echo-e": "v"}, call=call, timeout=10)
    )
    _check_error(error, Code.NOT_FOUND, "gone")
    assert call.trailers.get("x-echo-e-trailer") == "v", f"trailers {call.trailers!r}"


# --- errors ----------------------------------------------------------------------------------------


@case("errors.codes")
async def _errors_codes(env: Env) -> None:
    """Every non-OK code, with its message and a google.rpc.ErrorInfo detail."""
    wrong = []
    for code in Code:
        if code is Code.OK:
            continue
        behavior = _fail(code, f"failed with {code.name}", code.name)
        try:
            _check_error(
                await _error(env.client.unary(Request(behavior=behavior), timeout=10)),
                code,
                f"failed with {code.name}",
                code.name,
            )
        except AssertionError as problem:
            wrong.append(f"{code.name}: {problem}")
    assert not wrong, "; ".join(wrong)


@case("errors.unicode_message")
async def _errors_unicode_message(env: Env) -> None:
    """An error message with non-ASCII text comes back unchanged."""
    message = "nicht gefunden: ✗ 中文 𝄞 100%"
    error = await _error(env.client.unary(Request(behavior=_fail(Code.NOT_FOUND, message)), timeout=10))
    _check_error(error, Code.NOT_FOUND, message)


@case("errors.internal")
async def _errors_internal(env: Env) -> None:
    """A handler's exception is INTERNAL with a generic message; its text stays on the server."""
    error = await _error(env.client.unary(Request(behavior=Behavior(raise_exception=True)), timeout=10))
    _check_error(error, Code.INTERNAL)
    for secret in ("hunter2", "ValueError", "Traceback"):
        assert secret not in error.message, f"the message leaks {secret!r}: {error.message!r}"


@case("errors.unknown_method")
async def _errors_unknown_method(env: Env) -> None:
    """A method the server does not have answers UNIMPLEMENTED."""
    missing = dataclasses.replace(CONFORMANCE_SERVICE_UNARY, name="NoSuchMethod")
    _check_error(await _error(env.client.call_unary(missing, Request(), timeout=10)), Code.UNIMPLEMENTED)


# --- deadlines and cancellation --------------------------------------------------------------------


@case("deadline.propagated")
async def _deadline_propagated(env: Env) -> None:
    """The caller's timeout reaches the handler as its deadline; no timeout, no deadline."""
    reply = await env.client.unary(Request(), timeout=5.0)
    assert 2.0 < reply.time_remaining <= 5.0, f"the handler saw {reply.time_remaining} s left of 5"
    reply = await env.client.unary(Request())
    assert reply.time_remaining == -1.0, f"no timeout, but the handler saw {reply.time_remaining} s left"


@case("deadline.exceeded")
async def _deadline_exceeded(env: Env) -> None:
    """Past the deadline: DEADLINE_EXCEEDED, the handler is cancelled, the server keeps serving."""
    error = await _error(
        env.client.unary(Request(text=env.marker, behavior=Behavior(sleep_ms=10_000)), timeout=0.3)
    )
    _check_error(error, Code.DEADLINE_EXCEEDED)
    await _eventually(lambda: env.marker in env.service.cancelled, "cancelling the handler")
    assert (await env.client.unary(Request(text="after"), timeout=10)).text == "after"


@case("deadline.stream", needs={"streams"})
async def _deadline_stream(env: Env) -> None:
    """A server stream still running at its deadline ends with DEADLINE_EXCEEDED."""
    seen: list[Response] = []
    behavior = Behavior(stream_count=1000, sleep_ms=20)
    error = await _error(
        _collect(env.client.server_stream(Request(text=env.marker, behavior=behavior), timeout=0.5), seen)
    )
    _check_error(error, Code.DEADLINE_EXCEEDED)
    assert len(seen) < 1000, "the stream ran to its end"
    await _eventually(lambda: env.marker in env.service.cancelled, "cancelling the handler")


@case("cancel.unary", needs={"cancel"})
async def _cancel_unary(env: Env) -> None:
    """A caller that cancels its call cancels the handler."""
    task = asyncio.ensure_future(
        env.client.unary(Request(text=env.marker, behavior=Behavior(sleep_ms=10_000)))
    )
    await _eventually(lambda: env.marker in env.service.sleeping or task.done(), "starting the handler")
    assert not task.done(), (
        f"the call ended early: {task.exception() if not task.cancelled() else 'cancelled'}"
    )
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except RpcError as error:  # some client libraries (connectrpc) report their own cancel so
        _check_error(error, Code.CANCELLED)
    else:
        raise AssertionError("the cancelled call returned a response")
    await _eventually(lambda: env.marker in env.service.cancelled, "cancelling the handler")


@case("cancel.stream", needs={"streams", "cancel"})
async def _cancel_stream(env: Env) -> None:
    """A caller that stops reading a server stream cancels the handler."""
    responses = env.client.server_stream(
        Request(text=env.marker, behavior=Behavior(stream_count=1000, sleep_ms=20))
    )
    seen = 0
    async for _ in responses:
        seen += 1
        if seen == 2:
            break
    await responses.aclose()  # type: ignore[attr-defined]
    await _eventually(lambda: env.marker in env.service.cancelled, "cancelling the handler")


# --- the four method kinds -------------------------------------------------------------------------


@case("stream.server", needs={"streams"})
async def _stream_server(env: Env) -> None:
    """Server streaming: five responses in order, then headers and trailers."""
    call = CallInfo()
    request = Request(text="s", behavior=Behavior(stream_count=5))
    replies = await _collect(
        env.client.server_stream(request, metadata={"x-echo-s": "v"}, call=call, timeout=10)
    )
    assert [r.index for r in replies] == [0, 1, 2, 3, 4], [r.index for r in replies]
    assert call.headers.get("x-echo-s-header") == "v", f"headers {call.headers!r}"
    assert call.trailers.get("x-echo-s-trailer") == "v", f"trailers {call.trailers!r}"


@case("stream.server_empty", needs={"streams"})
async def _stream_server_empty(env: Env) -> None:
    """Server streaming with no response at all ends cleanly."""
    call = CallInfo()
    replies = await _collect(
        env.client.server_stream(Request(), metadata={"x-echo-z": "v"}, call=call, timeout=10)
    )
    assert replies == [], replies
    assert call.trailers.get("x-echo-z-trailer") == "v", f"trailers {call.trailers!r}"


@case("stream.server_error", needs={"streams"})
async def _stream_server_error(env: Env) -> None:
    """Server streaming failing after two responses: both arrive, then the error with details."""
    behavior = Behavior(
        stream_count=5,
        error_after=2,
        error_code=int(Code.ABORTED),
        error_message="mid",
        error_detail_reason="MID",
    )
    seen: list[Response] = []
    error = await _error(_collect(env.client.server_stream(Request(behavior=behavior), timeout=10), seen))
    assert [r.index for r in seen] == [0, 1], [r.index for r in seen]
    _check_error(error, Code.ABORTED, "mid", "MID")


@case("stream.client", needs={"streams"})
async def _stream_client(env: Env) -> None:
    """Client streaming: four requests from an async iterator, one response, headers and trailers."""
    call = CallInfo()
    reply = await env.client.client_stream(
        _requests((Request(text=str(i)) for i in range(4)), pause=0.001),
        metadata={"x-echo-c": "v"},
        call=call,
        timeout=10,
    )
    assert (reply.text, reply.request_count) == ("0,1,2,3", 4), reply
    assert call.headers.get("x-echo-c-header") == "v", f"headers {call.headers!r}"
    assert call.trailers.get("x-echo-c-trailer") == "v", f"trailers {call.trailers!r}"


@case("stream.client_empty", needs={"streams"})
async def _stream_client_empty(env: Env) -> None:
    """Client streaming with no request at all."""
    reply = await env.client.client_stream([], timeout=10)
    assert reply.request_count == 0, reply


@case("stream.client_error", needs={"streams"})
async def _stream_client_error(env: Env) -> None:
    """Client streaming failing mid-stream, while the caller still has requests to send."""
    behavior = _fail(Code.FAILED_PRECONDITION, "third is bad", "BAD")
    first = [Request(text="a"), Request(text="b"), Request(text="c", behavior=behavior)]
    more = (Request(text=f"more {i}") for i in range(200))
    requests = _requests([*first, *more], pause=0.005)
    _check_error(
        await _error(env.client.client_stream(requests, timeout=20)),
        Code.FAILED_PRECONDITION,
        "third is bad",
        "BAD",
    )


@case("stream.bidi", needs={"streams", "full_duplex"})
async def _stream_bidi(env: Env) -> None:
    """Bidi streaming, full duplex: each request is sent only after the previous response arrived."""
    queue: asyncio.Queue[Request | None] = asyncio.Queue()
    queue.put_nowait(Request(text="0"))

    async def requests() -> AsyncIterator[Request]:
        while (item := await queue.get()) is not None:
            yield item

    call = CallInfo()
    seen = []
    async for reply in env.client.bidi_stream(requests(), metadata={"x-echo-b": "v"}, call=call, timeout=10):
        seen.append(reply.text)
        queue.put_nowait(Request(text=str(len(seen))) if len(seen) < 4 else None)
    assert seen == ["0", "1", "2", "3"], seen
    assert call.trailers.get("x-echo-b-trailer") == "v", f"trailers {call.trailers!r}"


@case("stream.bidi_error", needs={"streams", "full_duplex"})
async def _stream_bidi_error(env: Env) -> None:
    """Bidi streaming failing after two responses: both arrive, then the error with details."""
    requests = [
        Request(text="a"),
        Request(text="b"),
        Request(behavior=_fail(Code.ABORTED, "bidi mid", "MID")),
    ]
    seen: list[Response] = []
    error = await _error(_collect(env.client.bidi_stream(_requests(requests, pause=0.001), timeout=10), seen))
    assert [r.text for r in seen] == ["a", "b"], [r.text for r in seen]
    _check_error(error, Code.ABORTED, "bidi mid", "MID")
