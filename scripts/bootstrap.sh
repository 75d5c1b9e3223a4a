#!/usr/bin/env bash
# Creates .venv with both plugins (editable), the sandbox and the dev tools.
# Sourced by scripts/test.sh, scripts/demo.sh and benchmarks/run.sh; re-installs only when a
# pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PYTHON" -m venv "$ROOT/.venv"
fi
stamp="$ROOT/.venv/.installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/tap-cordial-activity/pyproject.toml" "$ROOT/target-lytics/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$ROOT/.venv/bin/python" -m pip install -q --upgrade pip 2>/dev/null
  "$ROOT/.venv/bin/python" -m pip install -q \
    -e "$ROOT/tap-cordial-activity" -e "$ROOT/target-lytics" -e "$ROOT[dev]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "$want" > "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
