"""The conformance service implementation every transport test uses (it ships with protobind, for
the conformance matrix: protobind.testing.conformance)."""

from protobind.testing.conformance.service import Conformance

#: The conformance service's full name.
SERVICE = "protobind.conformance.v1.ConformanceService"

__all__ = ["SERVICE", "Conformance"]
