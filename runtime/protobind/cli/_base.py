"""What every command of the ``protobind`` command line shares: its user errors, and the code
generator, which a runtime-only install does not have."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

__all__ = ["UsageError", "codegen_errors", "needs_codegen"]


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 1, no traceback."""


@contextlib.contextmanager
def needs_codegen(what: str = "") -> Iterator[None]:
    """Around the imports of ``protobind_codegen`` (and of what it needs) in a command: when one
    is missing, an ``ImportError`` that says which extra to install. ``what`` names the option that
    needs it, when the command itself does not."""
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = (exc.name or "a module").partition(".")[0]
        raise ImportError(
            f"{what + ' ' if what else ''}needs the code generator ({missing} is not installed): "
            "pip install 'protobind[codegen]'"
        ) from None


def codegen_errors() -> tuple[type[Exception], ...]:
    """The code generator's error for rejected ``.proto`` input, when it is loaded (it cannot have
    been raised otherwise): printed as protoc wrote it."""
    protoc = sys.modules.get("protobind_codegen.protoc")
    return (protoc.ProtoError,) if protoc is not None else ()
