"""The conformance matrix."""
