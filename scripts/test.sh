#!/usr/bin/env bash
# The test suite, with lint and type checks first. Extra arguments go to pytest.
source "$(dirname "$0")/env.sh"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy runtime/protobind codegen/protobind_codegen
.venv/bin/python -m pytest "$@"
