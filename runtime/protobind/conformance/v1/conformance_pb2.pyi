import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Behavior(_message.Message):
    __slots__ = ("error_code", "error_message", "error_detail_reason", "sleep_ms", "raise_exception", "stream_count", "error_after", "response_size")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_REASON_FIELD_NUMBER: _ClassVar[int]
    SLEEP_MS_FIELD_NUMBER: _ClassVar[int]
    RAISE_EXCEPTION_FIELD_NUMBER: _ClassVar[int]
    STREAM_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_AFTER_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_SIZE_FIELD_NUMBER: _ClassVar[int]
    error_code: int
    error_message: str
    error_detail_reason: str
    sleep_ms: int
    raise_exception: bool
    stream_count: int
    error_after: int
    response_size: int
    def __init__(self, error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., error_detail_reason: _Optional[str] = ..., sleep_ms: _Optional[int] = ..., raise_exception: _Optional[bool] = ..., stream_count: _Optional[int] = ..., error_after: _Optional[int] = ..., response_size: _Optional[int] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("text", "payload", "behavior", "number", "when", "how_long", "extra", "labels", "tags")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOR_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    WHEN_FIELD_NUMBER: _ClassVar[int]
    HOW_LONG_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    text: str
    payload: bytes
    behavior: Behavior
    number: int
    when: _timestamp_pb2.Timestamp
    how_long: _duration_pb2.Duration
    extra: _struct_pb2.Struct
    labels: _containers.ScalarMap[str, str]
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, text: _Optional[str] = ..., payload: _Optional[bytes] = ..., behavior: _Optional[_Union[Behavior, _Mapping]] = ..., number: _Optional[int] = ..., when: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., how_long: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., extra: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("text", "payload", "metadata", "request_count", "time_remaining", "transport", "method", "number", "index")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    TIME_REMAINING_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    text: str
    payload: bytes
    metadata: _containers.ScalarMap[str, str]
    request_count: int
    time_remaining: float
    transport: str
    method: str
    number: int
    index: int
    def __init__(self, text: _Optional[str] = ..., payload: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ..., request_count: _Optional[int] = ..., time_remaining: _Optional[float] = ..., transport: _Optional[str] = ..., method: _Optional[str] = ..., number: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...
