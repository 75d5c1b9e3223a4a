#!/usr/bin/env bash
# Creates .venv with both plugins (editable), the sandbox and the dev tools, at the versions pinned
# in constraints-dev.txt (refresh it with scripts/lock.sh), and puts .venv/bin first on PATH;
# re-installs only when a pyproject.toml or the lock changed. Sourced by scripts/test.sh,
# scripts/demo.sh and scripts/bench.sh, or by hand (`source scripts/bootstrap.sh`): it leaves the
# caller's shell options as they were (no `set -e` in an interactive shell) and returns non-zero
# when a step fails.
_bootstrap_venv() {
  local -
  set -o pipefail
  local root python stamp want
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return
  python="${PYTHON:-python3}"
  if [ ! -x "$root/.venv/bin/python" ]; then
    "$python" -m venv "$root/.venv" || return
  fi
  stamp="$root/.venv/.installed"
  want="$(cat "$root/pyproject.toml" "$root/tap-cordial-activity/pyproject.toml" \
    "$root/target-lytics/pyproject.toml" "$root/constraints-dev.txt" | sha256sum | cut -d' ' -f1)" \
    || return
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$root/.venv/bin/python" -m pip install -q --upgrade pip 2>/dev/null || return
    "$root/.venv/bin/python" -m pip install -q -c "$root/constraints-dev.txt" \
      -e "$root/tap-cordial-activity" -e "$root/target-lytics" -e "$root[dev]" \
      2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) || return
    echo "$want" >"$stamp"
  fi
  export PATH="$root/.venv/bin:$PATH"
}
_bootstrap_venv
# Its status, after removing the function: `return` when sourced, `exit` when run with bash.
eval "unset -f _bootstrap_venv; return $? 2>/dev/null || exit $?"
