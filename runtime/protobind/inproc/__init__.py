"""``inproc://NAME``: client and server in one process, no sockets.

Messages are copied through their binary encoding, so a handler and its caller never share a
mutable object and the per-call cost includes serialization, as on a real wire. The handler runs
in the caller's task: cancelling the caller cancels the handler, and the deadline cancels both.
The server side is :mod:`.server` (bindings registered by name), the client side :mod:`.client`.
"""

from __future__ import annotations

from ..transport import Transport, lazy_dial, lazy_serve, named_harness

__all__ = ["TRANSPORT"]

TRANSPORT = Transport(
    name="inproc",
    schemes=("inproc",),
    extra="",
    serve=lazy_serve("protobind.inproc._server"),
    dial=lazy_dial("protobind.inproc._client"),
    test_harness=named_harness("inproc://test-{}"),
    in_process=True,
)
