"""Proto3 JSON in a few table lookups per field, exact to ``google.protobuf.json_format``.

``json_format`` looks every field's kind up in its descriptor on every call, builds a dict, and
leaves the JSON text to ``json.dumps``, which scans every string (a 16 KiB ``bytes`` field is
22,000 characters of base64) for characters to escape. Here the work that depends only on the
schema is done once per message type: a table per descriptor maps each field to a function that
writes its value as JSON bytes (base64 text, numbers, ``true``/``false`` and enum names need no
escaping) or reads it back from the value ``json.loads`` made.

The output is byte for byte what ``json.dumps(json_format.MessageToDict(m), separators=(",", ":"),
ensure_ascii=False).encode()`` gives, and a parse fills the same message ``json_format.ParseDict``
does. Whatever the tables do not cover exactly is left to ``json_format``: the well-known types
(Timestamp, Duration, FieldMask, Struct, Value, ListValue, Any and the wrappers) as a whole
sub-message, and, for a whole message, anything unusual. The parser accepts only the plain forms
(an int64 as a number or a canonical decimal string, canonical base64, each field once, ...) and
raises :class:`Unsupported` for the rest, an error included: the caller then parses the same value
again with ``json_format``, which decides, so the result and every error text stay ``json_format``'s
(tests/test_jsonfast.py compares both on random messages and random JSON).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.internal.type_checkers import ToShortestFloat
from google.protobuf.message import Message

__all__ = ["Unsupported", "encode", "parse", "reference_encode"]

_T = FieldDescriptor
#: Well-known types whose JSON form is not an object of their fields; ``json_format`` does them.
_SPECIAL = frozenset(
    "google.protobuf." + name
    for name in ("Any", "Duration", "FieldMask", "ListValue", "Struct", "Timestamp", "Value")
)
_INT64 = frozenset((_T.CPPTYPE_INT64, _T.CPPTYPE_UINT64))
#: A message nested deeper than this is left to json_format (its limit is 100 levels).
_MAX_DEPTH = 64


class Unsupported(Exception):
    """The fast path does not cover this value exactly; use ``json_format``."""


# Base64, the bulk of the work for a large bytes field: pybase64 (the `speed` extra, SIMD) when its
# compiled module is there, else the standard library. Both give the same text, and both decoders
# accept only standard base64 with its padding (anything else takes json_format's way below).
def _stdlib_base64() -> tuple[Callable[[bytes], bytes], Callable[[str], bytes]]:
    def encode(value: bytes) -> bytes:
        return binascii.b2a_base64(value, newline=False)

    if sys.version_info >= (3, 11):

        def decode(value: str) -> bytes:
            return binascii.a2b_base64(value, strict_mode=True)

    else:  # pragma: no cover - Python 3.10

        def decode(value: str) -> bytes:
            return base64.b64decode(value, validate=True)

    return encode, decode


def _pybase64() -> tuple[Callable[[bytes], bytes], Callable[[str], bytes]] | None:
    try:
        import pybase64
        import pybase64._pybase64  # the compiled module, not the pure-Python fallback
    except ImportError:
        return None

    def decode(value: str) -> bytes:
        return pybase64.b64decode(value, validate=True)

    return pybase64.b64encode, decode


BASE64_BACKENDS = {"stdlib": _stdlib_base64()}
_fast = _pybase64()
if _fast is not None:
    BASE64_BACKENDS["pybase64"] = _fast
#: The base64 backend in use (tests switch it with :func:`use_base64`).
BASE64 = "pybase64" if _fast is not None else "stdlib"
_b64encode, _b64decode_strict = BASE64_BACKENDS[BASE64]


def use_base64(name: str) -> None:
    """Switch the base64 backend (``stdlib`` or, when installed, ``pybase64``)."""
    global BASE64, _b64encode, _b64decode_strict
    _b64encode, _b64decode_strict = BASE64_BACKENDS[name]
    BASE64 = name


def _special(descriptor: Descriptor) -> bool:
    return descriptor.full_name in _SPECIAL or descriptor.file.name == "google/protobuf/wrappers.proto"


def _map_entry(field: FieldDescriptor) -> Descriptor | None:
    """The entry type of a map field (fields ``key`` and ``value``), ``None`` for other fields."""
    entry = field.message_type
    if field.is_repeated and entry is not None and entry.GetOptions().map_entry:
        return entry
    return None


def _plain_enum(enum: EnumDescriptor) -> bool:
    """Whether the enum's JSON names are its value names (no per-value options that could rename
    them, and not ``NullValue``, whose JSON form is ``null``)."""
    return enum.full_name != "google.protobuf.NullValue" and not any(
        value.GetOptions().ListFields() for value in enum.values
    )


def _plain_message(descriptor: Descriptor) -> bool:
    """Whether the tables can cover this message (proto2 extensions and groups are left out)."""
    return not descriptor.extension_ranges and all(field.type != _T.TYPE_GROUP for field in descriptor.fields)


# --- writing -------------------------------------------------------------------------------------

_ToBytes = Callable[[Any], bytes]
_Writer = Callable[[Any, list[bytes]], None]
_escape: Callable[[str], str] = json.encoder.encode_basestring
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def reference_encode(message: Message) -> bytes:
    """``json_format``'s proto3 JSON of ``message``, compact, non-ASCII characters as themselves."""
    return _DUMPS(json_format.MessageToDict(message)).encode()


def _string(value: str) -> bytes:
    return _escape(value).encode()


def _bytes(value: bytes) -> bytes:
    return b'"' + _b64encode(value) + b'"'


def _int(value: int) -> bytes:
    return b"%d" % value


def _int64(value: int) -> bytes:
    return b'"%d"' % value


def _bool(value: bool) -> bytes:
    return b"true" if value else b"false"


def _double(value: float) -> bytes:
    if value - value == 0.0:  # finite
        return repr(value).encode()
    if value != value:
        return b'"NaN"'
    return b'"Infinity"' if value > 0 else b'"-Infinity"'


def _float(value: float) -> bytes:
    return _double(ToShortestFloat(value) if value - value == 0.0 else value)


def _well_known(value: Message) -> bytes:
    return reference_encode(value)


def _enum_writer(enum: EnumDescriptor) -> _ToBytes:
    names = {number: _string(value.name) for number, value in enum.values_by_number.items()}
    closed = bool(enum.is_closed)

    def write(value: int) -> bytes:
        name = names.get(value)
        if name is not None:
            return name
        if closed:
            raise Unsupported  # json_format refuses it, with its own error
        return b"%d" % value

    return write


def _message_writer(value: Message) -> bytes:
    out: list[bytes] = []
    _write_message(value, out)
    return b"".join(out)


def _scalar_writer(field: FieldDescriptor) -> _ToBytes | None:
    """How a single value of ``field`` is written, or ``None`` for an enum json_format must do."""
    if field.message_type is not None:
        return _well_known if _special(field.message_type) else _message_writer
    if field.enum_type is not None:
        return _enum_writer(field.enum_type) if _plain_enum(field.enum_type) else None
    if field.type == _T.TYPE_BYTES:
        return _bytes
    if field.cpp_type == _T.CPPTYPE_STRING:
        return _string
    if field.cpp_type == _T.CPPTYPE_BOOL:
        return _bool
    if field.cpp_type in _INT64:
        return _int64
    if field.cpp_type == _T.CPPTYPE_FLOAT:
        return _float
    if field.cpp_type == _T.CPPTYPE_DOUBLE:
        return _double
    return _int


def _map_key(key: Any) -> bytes:
    if key is True:
        return b'"true"'
    if key is False:
        return b'"false"'
    return _string(str(key))


def _field_writer(field: FieldDescriptor) -> _Writer | None:
    entry = _map_entry(field)
    if entry is not None:
        value_writer = _scalar_writer(entry.fields_by_name["value"])
        if value_writer is None:
            return None
        to_json = value_writer

        def write_map(value: Any, out: list[bytes]) -> None:
            out.append(b"{")
            sep = b""
            for key in value:
                out.append(sep)
                out.append(_map_key(key))
                out.append(b":")
                out.append(to_json(value[key]))
                sep = b","
            out.append(b"}")

        return write_map
    writer = _scalar_writer(field)
    if writer is None:
        return None
    element = writer
    if field.is_repeated:

        def write_list(value: Any, out: list[bytes]) -> None:
            out.append(b"[" + b",".join([element(item) for item in value]) + b"]")

        return write_list

    def write_one(value: Any, out: list[bytes]) -> None:
        out.append(element(value))

    return write_one


class _Writers:
    """One message type's fields by number: the JSON key (``"jsonName":``) and the value writer."""

    __slots__ = ("keys", "writers")

    def __init__(self, descriptor: Descriptor) -> None:
        self.keys: dict[int, bytes] = {}
        self.writers: dict[int, _Writer] = {}
        if not _plain_message(descriptor) or _special(descriptor):
            return  # every field missing: json_format writes the message
        for field in descriptor.fields:
            writer = _field_writer(field)
            if writer is not None:
                self.keys[field.number] = _string(field.json_name) + b":"
                self.writers[field.number] = writer


_WRITERS: dict[Descriptor, _Writers] = {}


def _writers(descriptor: Descriptor) -> _Writers:
    found = _WRITERS.get(descriptor)
    if found is None:
        found = _WRITERS[descriptor] = _Writers(descriptor)
    return found


def _write_message(message: Message, out: list[bytes]) -> None:
    table = _writers(message.DESCRIPTOR)  # type: ignore[arg-type]  # upb's descriptor is the same API
    keys = table.keys
    writers = table.writers
    sep = b"{"
    for field, value in message.ListFields():
        number = field.number
        writer = writers.get(number)
        if writer is None:
            raise Unsupported  # an extension, a special enum, or a type json_format writes
        out.append(sep)
        out.append(keys[number])
        writer(value, out)
        sep = b","
    out.append(b"}" if sep == b"," else b"{}")


def encode(message: Message) -> bytes:
    """``message`` as proto3 JSON bytes, the same as :func:`reference_encode` (which it falls back
    to for what its tables do not cover, and so for every error)."""
    if _special(message.DESCRIPTOR):  # type: ignore[arg-type]
        return reference_encode(message)
    out: list[bytes] = []
    try:
        _write_message(message, out)
    except Exception:
        return reference_encode(message)
    return b"".join(out)


# --- parsing -------------------------------------------------------------------------------------

_Convert = Callable[[Any], Any]
#: (message, JSON value, ignore_unknown_fields, depth) -> None, for one field
_Setter = Callable[[Message, Any, bool, int], None]
_SURROGATE = re.compile("[\ud800-\udfff]")
_FLOAT_LIMIT = 3.4e38  # below float32's largest value: a larger number is json_format's to judge
_SPECIAL_FLOATS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")


def _to_int(value: Any) -> int:
    kind = type(value)
    if kind is int:
        return value  # type: ignore[no-any-return]
    if kind is str:
        number = int(value)
        if str(number) == value:  # a canonical decimal: what json_format reads the same way
            return number
    raise Unsupported


def _to_double(value: Any) -> float:
    kind = type(value)
    if kind is float:
        if value - value == 0.0:
            return value  # type: ignore[no-any-return]
    elif kind is int:
        if -(2**53) <= value <= 2**53:
            return float(value)
    elif kind is str:
        special = _SPECIAL_FLOATS.get(value)
        if special is not None:
            return special
    raise Unsupported


def _to_float(value: Any) -> float:
    number = _to_double(value)
    if -_FLOAT_LIMIT <= number <= _FLOAT_LIMIT or number != number or type(value) is str:
        return number
    raise Unsupported


def _to_bool(value: Any) -> bool:
    if type(value) is bool:
        return bool(value)
    raise Unsupported


def _to_string(value: Any) -> str:
    if type(value) is str and (value.isascii() or _SURROGATE.search(value) is None):
        return value
    raise Unsupported


def _to_bytes(value: Any) -> bytes:
    if type(value) is not str:
        raise Unsupported
    try:
        return _b64decode_strict(value)  # standard base64 with its padding: every decoder agrees
    except ValueError:
        pass
    # URL-safe or unpadded: what json_format does, after the check protobind's parse_json makes
    if value.isascii() and _BASE64.fullmatch(value) is not None and len(value.rstrip("=")) % 4 != 1:
        return base64.urlsafe_b64decode(value + "=" * (4 - len(value) % 4))
    raise Unsupported


def _enum_reader(enum: EnumDescriptor) -> _Convert | None:
    if not _plain_enum(enum):
        return None
    names = {value.name: value.number for value in enum.values}
    numbers = frozenset(value.number for value in enum.values)
    closed = bool(enum.is_closed)

    def read(value: Any) -> int:
        kind = type(value)
        if kind is str:
            number = names.get(value)
            if number is not None:
                return number
        elif kind is int and (not closed or value in numbers):
            return value  # type: ignore[no-any-return]
        raise Unsupported  # unknown names are skipped or refused by json_format, by the options

    return read


def _map_key_reader(field: FieldDescriptor) -> _Convert:
    if field.cpp_type == _T.CPPTYPE_BOOL:

        def read_bool(key: str) -> bool:
            if key == "true":
                return True
            if key == "false":
                return False
            raise Unsupported

        return read_bool
    if field.cpp_type == _T.CPPTYPE_STRING:
        return _to_string
    return _to_int  # keys are JSON strings: only canonical decimals pass


def _scalar_reader(field: FieldDescriptor) -> _Convert | None:
    if field.enum_type is not None:
        return _enum_reader(field.enum_type)
    if field.type == _T.TYPE_BYTES:
        return _to_bytes
    if field.cpp_type == _T.CPPTYPE_STRING:
        return _to_string
    if field.cpp_type == _T.CPPTYPE_BOOL:
        return _to_bool
    if field.cpp_type == _T.CPPTYPE_FLOAT:
        return _to_float
    if field.cpp_type == _T.CPPTYPE_DOUBLE:
        return _to_double
    return _to_int


def _fill_sub(message: Message, value: Any, ignore: bool, depth: int) -> None:
    """Fill a (regular or well-known) message from its JSON value."""
    descriptor: Descriptor = message.DESCRIPTOR  # type: ignore[assignment]
    if _special(descriptor):
        if value is None:
            raise Unsupported  # null means something per type (Value: null_value)
        if descriptor.full_name == "google.protobuf.BytesValue":
            message.value = _to_bytes(value)  # type: ignore[attr-defined]  # base64 checked as for bytes
            return
        limit = 100 - _MAX_DEPTH - 1  # json_format counts nesting from here on
        json_format.ParseDict(value, message, ignore_unknown_fields=ignore, max_recursion_depth=limit)
        return
    if type(value) is not dict:
        raise Unsupported
    _fill(message, value, ignore, depth + 1)


def _field_setter(field: FieldDescriptor) -> _Setter | None:
    name = field.name
    entry = _map_entry(field)
    if entry is not None:
        read_key = _map_key_reader(entry.fields_by_name["key"])
        value_field = entry.fields_by_name["value"]
        if value_field.message_type is not None:

            def set_message_map(message: Message, value: Any, ignore: bool, depth: int) -> None:
                if type(value) is not dict:
                    raise Unsupported
                target = getattr(message, name)
                for key, item in value.items():
                    _fill_sub(target[read_key(key)], item, ignore, depth)

            return set_message_map
        read_value = _scalar_reader(value_field)
        if read_value is None:
            return None
        read_map_value = read_value

        def set_scalar_map(message: Message, value: Any, ignore: bool, depth: int) -> None:
            if type(value) is not dict:
                raise Unsupported
            target = getattr(message, name)
            for key, item in value.items():
                target[read_key(key)] = read_map_value(item)

        return set_scalar_map
    if field.message_type is not None:
        if field.is_repeated:

            def set_messages(message: Message, value: Any, ignore: bool, depth: int) -> None:
                if type(value) is not list:
                    raise Unsupported
                target = getattr(message, name)
                for item in value:
                    if item is None:
                        raise Unsupported
                    _fill_sub(target.add(), item, ignore, depth)

            return set_messages

        def set_message(message: Message, value: Any, ignore: bool, depth: int) -> None:
            sub = getattr(message, name)
            sub.SetInParent()
            _fill_sub(sub, value, ignore, depth)

        return set_message
    reader = _scalar_reader(field)
    if reader is None:
        return None
    read = reader
    if field.is_repeated:

        def set_list(message: Message, value: Any, ignore: bool, depth: int) -> None:
            if type(value) is not list:
                raise Unsupported
            getattr(message, name).extend([read(item) for item in value])

        return set_list

    def set_one(message: Message, value: Any, ignore: bool, depth: int) -> None:
        setattr(message, name, read(value))

    return set_one


class _Readers:
    """One message type's fields by every JSON key proto3 accepts for them, with the setters."""

    __slots__ = ("aliases", "fields", "known", "nullable", "oneofs", "setters")

    def __init__(self, descriptor: Descriptor) -> None:
        self.setters: dict[str, _Setter] = {}
        #: key -> the field's number, to find a field given twice (once by each of its names)
        self.fields: dict[str, int] = {}
        #: key -> the index of its oneof
        self.oneofs: dict[str, int] = {}
        #: keys whose null means "leave unset" (json_format clears them; here: never set yet)
        self.nullable: frozenset[str] = frozenset()
        #: proto field names that differ from the JSON name: a key of these may repeat another key's field
        self.aliases = frozenset(field.name for field in descriptor.fields if field.name != field.json_name)
        by_key: dict[str, FieldDescriptor] = {field.name: field for field in descriptor.fields}
        by_key.update((field.json_name, field) for field in descriptor.fields)  # json_format: JSON name first
        #: every key of a field, with a setter or not
        self.known = frozenset(by_key)
        if not _plain_message(descriptor) or _special(descriptor):
            return
        nullable: set[str] = set()
        for key, field in by_key.items():
            setter = _field_setter(field)
            if setter is None:
                continue
            self.setters[key] = setter
            self.fields[key] = field.number
            if field.containing_oneof is not None:
                self.oneofs[key] = field.containing_oneof.index
            elif not (
                field.message_type is not None and field.message_type.full_name == "google.protobuf.Value"
            ):
                nullable.add(key)
        self.nullable = frozenset(nullable)


_READERS: dict[Descriptor, _Readers] = {}


def _readers(descriptor: Descriptor) -> _Readers:
    found = _READERS.get(descriptor)
    if found is None:
        found = _READERS[descriptor] = _Readers(descriptor)
    return found


def _fill(message: Message, value: dict[str, Any], ignore: bool, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise Unsupported
    table = _readers(message.DESCRIPTOR)  # type: ignore[arg-type]
    setters = table.setters
    if (table.oneofs and len(value) > 1) or not table.aliases.isdisjoint(value):
        _check_keys(table, value)
    for key, item in value.items():
        setter = setters.get(key)
        if setter is None:
            if ignore and not key.startswith("[") and key not in table.known:
                continue  # an unknown field, skipped as asked
            raise Unsupported  # an unknown field (refused), an extension, or a field json_format reads
        if item is None:
            if key in table.nullable:
                continue
            raise Unsupported
        setter(message, item, ignore, depth)


def _check_keys(table: _Readers, value: dict[str, Any]) -> None:
    """Leave to json_format a field given under both its names, and two fields of one oneof."""
    fields = table.fields
    oneofs = table.oneofs
    seen: set[int] = set()
    chosen: set[int] = set()
    for key, item in value.items():
        number = fields.get(key)
        if number is None:
            continue
        if number in seen:
            raise Unsupported
        seen.add(number)
        oneof = oneofs.get(key)
        if oneof is not None:
            if item is None or oneof in chosen:
                raise Unsupported
            chosen.add(oneof)


def parse(value: Any, message: Message, *, ignore_unknown_fields: bool = False) -> bool:
    """Fill ``message`` (new, empty) from ``value``, a decoded JSON value, as ``json_format.ParseDict``
    would. ``False`` when the value is not one the tables cover exactly: ``message`` is then in an
    unknown state and the caller parses ``value`` again, into a new message, with json_format."""
    if type(value) is not dict or _special(message.DESCRIPTOR):  # type: ignore[arg-type]
        return False
    try:
        _fill(message, value, ignore_unknown_fields, 1)
    except Exception:
        return False
    return True
