"""A schemathesis check for tests/test_fuzz.py (loaded through SCHEMATHESIS_HOOKS): no 5xx but the
deliberate ones (504 deadline_exceeded when a generated Connect-Timeout-Ms is tiny, 501 for what the
binding does not implement), and no exception text or traceback in any body."""

from __future__ import annotations

from typing import Any

import schemathesis

_LEAKS = ("Traceback", 'File "', "Exception:", "Exception(", "Error:", "has no attribute", "int()")


@schemathesis.check
def no_unplanned_5xx_or_internal_detail(ctx: Any, response: Any, case: Any) -> None:
    text = response.text
    for leak in _LEAKS:
        if leak in text:
            raise AssertionError(f"internal detail {leak!r} in the body: {text[:300]}")
    if response.status_code >= 500 and response.status_code not in (501, 504):
        raise AssertionError(f"unplanned {response.status_code}: {text[:300]}")
