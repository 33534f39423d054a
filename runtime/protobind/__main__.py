"""``python -m protobind``: the ``protobind`` command, with the same arguments and exit codes."""

from __future__ import annotations


def main() -> None:
    """Run the ``protobind`` command line (imported here, so ``import protobind`` never loads it)."""
    from protobind_codegen.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
