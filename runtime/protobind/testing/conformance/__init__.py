"""The conformance matrix: every case of the conformance contract against every transport and
every client/server pairing (``python -m protobind.testing.conformance``; docs/contract-testing.md).

- :mod:`.service`: ``Conformance``, the implementation of
  ``protobind.conformance.v1.ConformanceService`` that is served;
- :mod:`.cases`: the cases, and the cells each transport does not support by design;
- :mod:`.peers`: clients nobody here wrote (grpc.aio, connectrpc, nats-py) as client transports;
- :mod:`.matrix`: the columns, the runner and the report.
"""

from ._cases import CASES, UNSUPPORTED, Case
from ._matrix import Cell, Column, Verdict, columns, format_matrix, run_matrix
from .service import Conformance

__all__ = [
    "CASES",
    "UNSUPPORTED",
    "Case",
    "Cell",
    "Column",
    "Conformance",
    "Verdict",
    "columns",
    "format_matrix",
    "run_matrix",
]
