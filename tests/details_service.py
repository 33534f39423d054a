"""A conformance service whose Unary fails with standard and unknown error details when asked.

Served by the reflection and CLI tests (``protobind serve tests.details_service:Details``). The
details go out packed as ``google.protobuf.Any``, as a server that never imported their types
would send them.
"""

from __future__ import annotations

from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2

import protobind
from protobind.conformance.v1.conformance_pb2 import Request, Response

from .conformance import Conformance

#: A detail of a type no process here knows: field 1 = 1.
UNKNOWN = any_pb2.Any(type_url="type.googleapis.com/acme.v1.Secret", value=b"\x08\x01")


def _packed(message: Message) -> any_pb2.Any:
    wrapper = any_pb2.Any()
    wrapper.Pack(message)
    return wrapper


DETAILS = [
    _packed(error_details_pb2.ErrorInfo(reason="QUOTA", domain="details.test", metadata={"k": "v"})),
    _packed(
        error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field="text", description="bad")]
        )
    ),
    _packed(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=3))),
    UNKNOWN,
]


class Details(Conformance):
    async def unary(self, request: Request, context: protobind.Context) -> Response:
        if request.text == "details":
            raise protobind.RpcError(protobind.Code.FAILED_PRECONDITION, "with details", DETAILS)
        return await super().unary(request, context)
