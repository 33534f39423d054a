"""protobind's proto3 JSON codec (``protobind._jsonfast`` behind ``JsonCodec``) against the reference,
``google.protobuf.json_format`` as protobind used it before (``json.dumps(MessageToDict(...))`` and
``json.loads`` + ``parse_json``): on random messages of the test contracts the bytes written must be
the same, and on random JSON (valid, in the other accepted spellings, and wrong) the message read or
the error text must be the same. Examples are derandomized, so every run checks the same inputs."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import (
    any_pb2,
    duration_pb2,
    field_mask_pb2,
    json_format,
    message_factory,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonkinds.v1 import kinds_pb2
from library.v1 import library_pb2

from protobind import _jsonfast
from protobind._errors import RpcError
from protobind.codec import JSON, JsonCodec, parse_json
from protobind.conformance.v1 import conformance_pb2

_T = FieldDescriptor
TYPES: list[type[Message]] = [
    conformance_pb2.Everything,
    conformance_pb2.Request,
    conformance_pb2.Response,
    kinds_pb2.Kinds,
    library_pb2.Book,
]
WKT = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Any",
}
RUN = settings(
    max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
LENIENT = JsonCodec(ignore_unknown_fields=True)


@pytest.fixture(autouse=True, params=sorted(_jsonfast.BASE64_BACKENDS))
def base64_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test with each base64 backend there is (the standard library's, pybase64's)."""
    before = _jsonfast.BASE64
    _jsonfast.use_base64(request.param)
    yield request.param
    _jsonfast.use_base64(before)


# --- random messages -------------------------------------------------------------------------------

_INT_RANGES = {
    _T.TYPE_INT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _T.TYPE_UINT32: (0, 2**32 - 1),
    _T.TYPE_FIXED32: (0, 2**32 - 1),
    _T.TYPE_INT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _T.TYPE_UINT64: (0, 2**64 - 1),
    _T.TYPE_FIXED64: (0, 2**64 - 1),
}


def _ints(kind: int) -> st.SearchStrategy[int]:
    low, high = _INT_RANGES[kind]
    edges = [n for n in (low, high, 0, 1, -1, 2**53 + 1) if low <= n <= high]
    return st.one_of(st.integers(low, high), st.sampled_from(edges))


def _texts() -> st.SearchStrategy[str]:
    # control characters, quotes, backslashes, non-ASCII, astral characters: json's escaping rules
    return st.one_of(st.text(max_size=12), st.sampled_from(['"', "\\", "\n\x00\x1f\x7f", "é ✓ 😀", "\u2028"]))


def _json_values(depth: int) -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=False, allow_infinity=False),
        _texts(),
        st.integers(-5, 5),
    )
    if depth <= 0:
        return leaf
    inner = _json_values(depth - 1)
    return st.one_of(leaf, st.lists(inner, max_size=3), st.dictionaries(_texts(), inner, max_size=3))


def _well_known(name: str, depth: int) -> st.SearchStrategy[Message]:
    if name == "google.protobuf.Timestamp":
        return st.builds(
            timestamp_pb2.Timestamp,
            seconds=st.integers(-62135596800, 253402300799),
            nanos=st.sampled_from([0, 1, 500_000_000, 999_999_999, 10_000]),
        )
    if name == "google.protobuf.Duration":
        return st.integers(-(10**9), 10**9).flatmap(
            lambda s: st.builds(
                duration_pb2.Duration,
                seconds=st.just(s),
                nanos=st.integers(0, 999_999_999).map(lambda n: -n if s < 0 else n),
            )
        )
    if name == "google.protobuf.FieldMask":
        path = st.sampled_from(["a", "foo_bar", "foo.bar_baz", "x1"])
        return st.lists(path, max_size=3).map(lambda paths: field_mask_pb2.FieldMask(paths=paths))
    if name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):

        def make(value: Any) -> Message:
            if name == "google.protobuf.Struct":
                out: Message = struct_pb2.Struct()
                out.update(value)  # type: ignore[attr-defined]
            elif name == "google.protobuf.ListValue":
                out = struct_pb2.ListValue()
                out.extend(value)  # type: ignore[attr-defined]
            else:
                out = struct_pb2.Value()
                json_format.ParseDict(value, out)
            return out

        if name == "google.protobuf.Struct":
            return st.dictionaries(_texts(), _json_values(1), max_size=3).map(make)
        if name == "google.protobuf.ListValue":
            return st.lists(_json_values(1), max_size=3).map(make)
        return _json_values(2).map(make)
    if name == "google.protobuf.Any":

        def pack(inner: Message) -> Message:
            out = any_pb2.Any()
            out.Pack(inner)
            return out

        return st.one_of(
            st.just(any_pb2.Any()),
            messages(conformance_pb2.Nested.DESCRIPTOR, depth).map(pack),
            _well_known("google.protobuf.Timestamp", depth).map(pack),
            st.builds(wrappers_pb2.Int64Value, value=_ints(_T.TYPE_INT64)).map(pack),
        )
    raise AssertionError(name)


def _values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    """Random values of one (singular) field, as Python values a message accepts."""
    if field.message_type is not None:
        return messages(field.message_type, depth - 1)
    if field.enum_type is not None:
        numbers = [v.number for v in field.enum_type.values]
        if field.enum_type.full_name == "google.protobuf.NullValue":
            return st.just(0)
        return st.one_of(st.sampled_from(numbers), st.integers(-3, 7))  # open enums: unknown numbers too
    if field.type == _T.TYPE_BYTES:
        return st.binary(max_size=40)
    if field.type == _T.TYPE_STRING:
        return _texts()
    if field.type == _T.TYPE_BOOL:
        return st.booleans()
    if field.type == _T.TYPE_DOUBLE:
        return st.one_of(st.floats(), st.sampled_from([0.1, 1e300, -0.0, 5e-324, 2.0**53]))
    if field.type == _T.TYPE_FLOAT:
        return st.one_of(st.floats(width=32), st.sampled_from([0.1, 3.4028234663852886e38, 1e-45]))
    return _ints(field.type)


def messages(descriptor: Descriptor, depth: int = 3) -> st.SearchStrategy[Message]:
    """Random messages of ``descriptor``: any subset of its fields set, nested ``depth`` deep."""
    if descriptor.full_name in WKT:
        return _well_known(descriptor.full_name, depth)
    cls = message_factory.GetMessageClass(descriptor)
    if depth <= 0:
        return st.just(cls())
    fields = [f for f in descriptor.fields if f.message_type is None or depth > 1 or f.is_repeated]
    # a message whose only fields are singular messages has none left at the last level: it is
    # drawn empty (sampled_from refuses an empty list, which failed a CI run)
    chosen = (
        st.lists(st.sampled_from(fields), max_size=6, unique_by=lambda f: f.number) if fields else st.just([])
    )

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in draw(chosen):
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:
                keys = draw(st.lists(_values(entry.fields_by_name["key"], depth), max_size=3, unique=True))
                target = getattr(message, field.name)
                for key in keys:
                    value = draw(_values(entry.fields_by_name["value"], depth))
                    if isinstance(value, Message):
                        target[key].CopyFrom(value)
                    else:
                        target[key] = value
            elif field.is_repeated:
                values = draw(st.lists(_values(field, depth), max_size=3))
                target = getattr(message, field.name)
                for value in values:
                    if isinstance(value, Message):
                        target.add().CopyFrom(value)
                    else:
                        target.append(value)
            else:
                value = draw(_values(field, depth))
                if isinstance(value, Message):
                    getattr(message, field.name).CopyFrom(value)
                else:
                    setattr(message, field.name, value)
        return message

    return build()


def any_message() -> st.SearchStrategy[Message]:
    return st.sampled_from(TYPES).flatmap(lambda cls: messages(cls.DESCRIPTOR))


# --- the reference ---------------------------------------------------------------------------------


def reference_decode(data: bytes, cls: type[Message], ignore: bool) -> Message:
    """protobind's JsonCodec.decode before the tables: json.loads, then parse_json (json_format)."""
    codec = LENIENT if ignore else JSON
    try:
        saved = _jsonfast.parse
        _jsonfast.parse = lambda *args, **kwargs: False  # type: ignore[assignment]
        return codec.decode(data, cls)
    finally:
        _jsonfast.parse = saved


def outcome(decode: Any, data: bytes, cls: type[Message], ignore: bool) -> tuple[str, Any]:
    try:
        message = decode(data, cls, ignore)
    except RpcError as exc:
        return "error", (exc.code, exc.message)
    return "ok", message.SerializeToString(deterministic=True)


def fast_decode(data: bytes, cls: type[Message], ignore: bool) -> Message:
    return (LENIENT if ignore else JSON).decode(data, cls)


def check_decode(data: bytes, cls: type[Message]) -> None:
    for ignore in (False, True):
        assert outcome(fast_decode, data, cls, ignore) == outcome(reference_decode, data, cls, ignore), data


def _outer_of_one_message_field() -> Descriptor:
    """``Outer { Inner inner = 1; }``: at the last level of nesting no field of it is drawn."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    file = descriptor_pb2.FileDescriptorProto(
        name="jsonfast_gen_test.proto", package="jsonfast.gen", syntax="proto3"
    )
    file.message_type.add(name="Inner")
    outer = file.message_type.add(name="Outer")
    outer.field.add(
        name="inner",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        type_name=".jsonfast.gen.Inner",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool.FindMessageTypeByName("jsonfast.gen.Outer")


@RUN
@given(messages(_outer_of_one_message_field(), depth=1))
def test_the_generator_draws_a_message_with_no_field_left_empty(message: Message) -> None:
    assert message.ByteSize() == 0


# --- writing ---------------------------------------------------------------------------------------


@RUN
@given(any_message())
def test_encode_is_json_formats_bytes(message: Message) -> None:
    try:
        expected: Any = _jsonfast.reference_encode(message)
    except Exception as exc:  # json_format refuses some values (a NaN in a Value): the same error
        expected = type(exc)
    try:
        got: Any = JSON.encode(message)
    except Exception as exc:
        got = type(exc)
    assert got == expected
    if isinstance(expected, bytes):
        check_decode(expected, type(message))


def test_encode_examples() -> None:
    everything = conformance_pb2.Everything(
        f_int64=-(2**63), f_uint64=2**64 - 1, f_double=math.inf, f_float=0.1, r_double=[math.nan, -math.inf],
        f_bytes=b"\xff\x00", f_string='a"\\\n\x01é😀', f_enum=7, m_bool_bytes={True: b"1", False: b""},
        m_int64_message={-5: conformance_pb2.Nested(name="n")}, o_int32=0, c_bytes=b"",
        m_string_string={'k"\n': "v"},
    )  # fmt: skip
    data = JSON.encode(everything)
    assert data == _jsonfast.reference_encode(everything)
    assert b'"fInt64":"-9223372036854775808"' in data and b'"fDouble":"Infinity"' in data
    assert b'"fFloat":0.1,' in data and b'"rDouble":["NaN","-Infinity"]' in data and b'"fEnum":7' in data
    assert b'"oInt32":0' in data and b'"cBytes":""' in data  # presence kept
    kinds = kinds_pb2.Kinds(renamed="r", nothing=0, p_float=0.0)
    kinds.values["v"].null_value = 0
    kinds.list.add().list_value.append(1)
    assert JSON.encode(kinds) == _jsonfast.reference_encode(kinds)
    assert JSON.encode(kinds_pb2.Kinds()) == b"{}"
    assert JSON.encode(wrappers_pb2.StringValue(value="x")) == b'"x"'


# --- reading ---------------------------------------------------------------------------------------


def _b64_forms(data: bytes) -> st.SearchStrategy[str]:
    std = base64.b64encode(data).decode()
    url = base64.urlsafe_b64encode(data).decode()
    return st.sampled_from(
        [std, url, std.rstrip("="), url.rstrip("="), std + "=", " " + std, std + "!", "QQ=Q"]
    )


def _spellings(value: Any, field: FieldDescriptor | None) -> st.SearchStrategy[Any]:
    """The JSON value ``value`` (json_format's output for ``field``) in another spelling: numbers as
    strings and back, base64 in the URL-safe alphabet or unpadded, enum numbers, nulls, wrong types."""
    options: list[st.SearchStrategy[Any]] = [st.just(value), st.just(None), _json_values(1)]
    if field is not None and field.type == _T.TYPE_BYTES and isinstance(value, str):
        options.append(_b64_forms(base64.b64decode(value)))
    if isinstance(value, str):
        options.append(st.sampled_from([value + " ", " " + value, value.lower(), "0" + value, "+" + value]))
        if value.lstrip("-").isdigit():
            options.append(st.just(int(value)))
    if isinstance(value, int) and not isinstance(value, bool):
        options.append(st.sampled_from([str(value), float(value), value + 0.5, 2**64, -(2**63) - 1]))
    if isinstance(value, float):
        options.append(
            st.sampled_from([str(value), math.nan, math.inf, int(value) if math.isfinite(value) else 0])
        )
    if field is not None and field.enum_type is not None:
        options.append(st.sampled_from([v.number for v in field.enum_type.values] + ["NOPE", 99, True]))
    return st.one_of(options)


def _json_of(descriptor: Descriptor, js: Any) -> st.SearchStrategy[Any]:
    """Variants of ``js``, json_format's JSON of a message of ``descriptor``: keys under the other
    name or unknown, values in other spellings, nested the same way."""
    if not isinstance(js, dict) or descriptor.full_name in WKT:
        return st.one_of(st.just(js), _json_values(1))
    by_json = {f.json_name: f for f in descriptor.fields}

    @st.composite
    def vary(draw: st.DrawFn) -> Any:
        out: dict[str, Any] = {}
        for key, value in js.items():
            field = by_json.get(key)
            if field is not None and draw(st.booleans()):
                key = field.name
            if field is not None and field.message_type is not None and isinstance(value, (dict, list)):
                entry = field.message_type
                if entry.GetOptions().map_entry and isinstance(value, dict):
                    sub = entry.fields_by_name["value"]
                    value = {
                        draw(st.sampled_from([k, k + "x", " " + k, k.upper()])): draw(
                            _json_of(sub.message_type, v) if sub.message_type else _spellings(v, sub)
                        )
                        for k, v in value.items()
                    }
                elif isinstance(value, list):
                    value = [draw(_json_of(entry, v)) for v in value]
                else:
                    value = draw(_json_of(entry, value))
            elif isinstance(value, list):
                value = [draw(_spellings(v, field)) for v in value] + draw(st.sampled_from([[], [None]]))
            else:
                value = draw(_spellings(value, field))
            out[key] = value
        extra = draw(st.sampled_from([{}, {}, {"nope": 1}, {"[x.y]": 1}, {"renamed": "a", "otherName": "b"}]))
        out.update(extra)
        if descriptor.oneofs and draw(st.booleans()):
            members = descriptor.oneofs[0].fields
            out.update({f.json_name: draw(_json_values(0)) for f in members[:2]})
        return out

    return vary()


@RUN
@given(
    st.sampled_from(TYPES).flatmap(lambda cls: messages(cls.DESCRIPTOR).map(lambda m: (cls, m))), st.data()
)
def test_decode_is_json_formats(pair: tuple[type[Message], Message], data: st.DataObject) -> None:
    cls, message = pair
    try:
        js = json.loads(_jsonfast.reference_encode(message))
    except ValueError:
        return  # a message json_format cannot write
    varied = data.draw(_json_of(cls.DESCRIPTOR, js))
    check_decode(json.dumps(varied).encode(), cls)


@pytest.mark.parametrize(
    "body",
    [
        b'{"payload":"aGk"}', b'{"payload":"-_-_"}', b'{"payload":"aGk=x"}', b'{"payload":"!!!"}',
        b'{"payload":null,"text":null}', b'{"number":"12"}', b'{"number":12.0}', b'{"number":"1e3"}',
        b'{"number":" 12"}', b'{"number":"0012"}', b'{"labels":{"a":"b"},"tags":["x",null]}',
        b'{"when":"2020-01-01T00:00:00Z","howLong":"1.5s","extra":{"a":[1,null]}}',
        b'{"everything":{"fEnum":"COLOR_RED","rEnum":["COLOR_GREEN",5],"oInt32":0,"cInt64":"7"}}',
        b'{"everything":{"cString":"a","cInt64":"7"}}', b'{"everything":{"cString":"a","cInt64":null}}',
        b'{"everything":{"f_int64":"1","fInt64":"2"}}', b'{"everything":{"fFloat":1e39,"fDouble":"NaN"}}',
        b'{"everything":{"tValue":null,"wBytes":"!!","wInt64":"5","tAny":{}}}',
        b'{"everything":{"mBoolBytes":{"true":"AA==","false":""},"mInt32Int64":{"-1":"5"}}}',
        b'{"everything":{"mInt64Message":{"01":{}}}}', b'{"everything":{"fEnum":"NOPE"}}',
        b'{"everything":{"fString":"\\ud800"}}', b'{"nmae":1}', b'{"[a.b]":1}', b'[]', b'"x"',
        b'{"behavior":{"sleepMs":"soon"}}', b'{"everything":{"fInt32":2147483648}}',
    ],
)  # fmt: skip
def test_decode_examples(body: bytes) -> None:
    check_decode(body, conformance_pb2.Request)


def test_decode_deep_nesting_is_left_to_json_format() -> None:
    for depth in (60, 99, 100, 101, 150):
        body = '{"child":' * depth + "{}" + "}" * depth
        check_decode(body.encode(), conformance_pb2.Nested)


def test_fast_path_is_taken() -> None:
    """The common shapes go through the tables (not json_format), so the speed is where it is claimed."""
    request = conformance_pb2.Request(
        text="t", payload=b"\x00" * 100, number=2**60, labels={"a": "b"}, tags=["x"]
    )
    body = JSON.encode(request)
    message = conformance_pb2.Request()
    assert _jsonfast.parse(json.loads(body), message) and message == request
    assert not _jsonfast.parse({"payload": "!!!"}, conformance_pb2.Request())
    assert not _jsonfast.parse({"nmae": 1}, conformance_pb2.Request())
    assert _jsonfast.parse({"nmae": 1}, conformance_pb2.Request(), ignore_unknown_fields=True)


def test_parse_json_unchanged_for_rest() -> None:
    """parse_json (REST path and query values merge into a message) still is json_format's."""
    message = conformance_pb2.Request(text="kept")
    parse_json({"number": "5"}, message)
    assert message.text == "kept" and message.number == 5


def test_any_holding_a_well_known_type_is_accepted() -> None:
    """An Any whose packed type is a well-known one has a "value" key that is not base64 (it was
    refused as "not valid base64", since Any's own bytes field is called value)."""
    packed = {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "1.5s"}
    body = {"everything": {"tAny": packed}}
    message = conformance_pb2.Request()
    parse_json(body, message)
    duration = duration_pb2.Duration()
    assert message.everything.t_any.Unpack(duration) and duration.ToJsonString() == "1.500s"
    assert JSON.decode(json.dumps(body).encode(), conformance_pb2.Request) == message
