"""The ``protobind`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _generate(args: argparse.Namespace) -> int:
    from .generate import generate

    written = generate(args.paths, args.out, args.include)
    for path in written:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protobind", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="generate typed Python stubs from .proto files")
    gen.add_argument("paths", nargs="+", metavar="PATH", help=".proto files or directories")
    gen.add_argument("-I", "--include", action="append", default=[], metavar="DIR", help="import path")
    gen.add_argument("--out", required=True, metavar="DIR", help="output directory")
    gen.set_defaults(run=_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .protoc import ProtoError

    try:
        code = args.run(args)
    except ProtoError as exc:
        print(str(exc), file=sys.stderr)
        code = 1
    except (ImportError, OSError, ValueError) as exc:
        print(f"protobind {args.command}: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
