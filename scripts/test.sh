#!/usr/bin/env bash
# The test suite, with lint and type checks first. Extra arguments go to pytest.
source "$(dirname "$0")/env.sh"
.venv/bin/ruff check runtime codegen tests examples benchmarks
.venv/bin/ruff format --check runtime codegen tests examples benchmarks
.venv/bin/mypy runtime/protobind codegen/protobind_codegen
# Four workers on two cores: most of a test is waiting on its servers (PROTOBIND_TEST_WORKERS=0: one process).
.venv/bin/python -m pytest -n "${PROTOBIND_TEST_WORKERS:-4}" "$@"
