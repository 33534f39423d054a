"""``python -m protobind``: the ``protobind`` command, with the same arguments and exit codes."""

from __future__ import annotations

from protobind.cli import main

if __name__ == "__main__":
    main()
