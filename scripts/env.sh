# Sourced by the other scripts: create or reuse .venv and install protobind with every extra and
# the test tools, again only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
stamp=".venv/.protobind-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # pip is quiet for a minute or more: say what is happening before it starts
  echo "$(basename "$0"): installing protobind, every extra and the test tools into .venv" \
    "(first run, or pyproject.toml changed; about a minute)..." >&2
  if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
  fi
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  echo "$want" > "$stamp"
  echo "$(basename "$0"): installed" >&2
fi
