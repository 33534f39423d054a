"""Make the example's generated stubs (gen/) and its service (service.py) importable."""

import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(EXAMPLE.parent))
from _support import generate_stubs  # noqa: E402

generate_stubs(EXAMPLE)
sys.path.insert(0, str(EXAMPLE))
