"""The conformance service implementation every transport test uses (it ships with protobind, for
the conformance matrix: protobind.testing.conformance)."""

from protobind.testing.conformance.service import Conformance

__all__ = ["Conformance"]
