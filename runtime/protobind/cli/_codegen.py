"""The code generator's commands: ``generate`` and ``breaking`` (``openapi`` and ``asyncapi`` of
``.proto`` files too: :mod:`.documents`).

Their arguments are declared here, so ``protobind --help`` lists them and ``protobind COMMAND
--help`` works in any install; the work is done by :mod:`protobind_codegen`, imported when a
command runs (``pip install 'protobind[codegen]'``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._base import UsageError, needs_codegen

__all__ = ["FORMATS", "LEVELS", "add_breaking_parser", "add_generate_parser"]

#: ``breaking --level``: what must keep working, least to most strict (see
#: :mod:`protobind_codegen.breaking`).
LEVELS = ("WIRE", "WIRE_JSON", "FILE")
#: ``breaking --format``.
FORMATS = ("text", "json", "github")


def add_generate_parser(commands: Any) -> None:
    """Register ``generate`` on the CLI's sub-parsers."""
    gen = commands.add_parser("generate", help="generate typed Python stubs from .proto files")
    gen.add_argument("paths", nargs="+", metavar="PATH", help=".proto files or directories")
    gen.add_argument("-I", "--include", action="append", default=[], metavar="DIR", help="import path")
    gen.add_argument("--out", required=True, metavar="DIR", help="output directory")
    gen.set_defaults(run=_generate)


def _generate(args: argparse.Namespace) -> int:
    with needs_codegen():
        from protobind_codegen.generate import generate

    for path in generate(args.paths, args.out, args.include):
        print(path)
    return 0


# --- breaking -------------------------------------------------------------------------------------


def add_breaking_parser(commands: Any) -> None:
    """Register ``breaking`` on the CLI's sub-parsers."""
    breaking = commands.add_parser(
        "breaking",
        help="list changes in NEW that break clients of OLD",
        usage="protobind breaking [OLD_PATH] NEW_PATH [--against OLD_PATH|git:REF] [-I DIR]... "
        "[--level LEVEL] [--format FORMAT]",
    )
    breaking.add_argument(
        "paths", nargs="+", metavar="PATH", help="OLD_PATH NEW_PATH, or NEW_PATH with --against"
    )
    breaking.add_argument(
        "--against", metavar="OLD", help="the old version: a path, or git:REF (NEW_PATH as it was at REF)"
    )
    breaking.add_argument("-I", "--include", action="append", default=[], metavar="DIR", help="import path")
    breaking.add_argument(
        "--level",
        choices=LEVELS,
        default="WIRE_JSON",
        help="what must keep working: WIRE binary clients, WIRE_JSON (default) binary and JSON clients, "
        "FILE also code generated from OLD",
    )
    breaking.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    breaking.set_defaults(run=_breaking)


def _breaking(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    with needs_codegen():
        from protobind_codegen.breaking import breaking_changes, render
        from protobind_codegen.breaking_sides import Side, git_side

    if len(args.paths) != (1 if args.against else 2):
        raise UsageError("give OLD_PATH NEW_PATH, or NEW_PATH --against OLD_PATH|git:REF")
    new = Side("NEW", (args.paths[-1],), tuple(args.include))
    with ExitStack() as stack:
        if args.against and args.against.startswith("git:"):
            old = stack.enter_context(git_side(args.against[4:], new))
        else:
            old = Side("OLD", (args.against or args.paths[0],), tuple(args.include))
        findings = breaking_changes(old, new, args.level)
    print(render(findings, args.format, args.level))
    if findings and args.format != "json":
        print(f"{len(findings)} breaking change(s) at level {args.level}", file=sys.stderr)
    return 1 if findings else 0
