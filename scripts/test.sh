#!/usr/bin/env bash
# The test command: sets up everything on a fresh machine, then runs lint, types and pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k sandbox -x).
set -euo pipefail
cd "$(dirname "$0")/.."
# Real servers the tests start themselves: OpenSSH sshd (SFTP) and PostgreSQL (shared state).
need=()
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing ${need[*]} (the tests run real servers)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "error: the tests need ${need[*]}: run 'sudo apt-get install ${need[*]}'" >&2
    exit 1
  fi
fi
source scripts/bootstrap.sh
echo "== ruff"; ruff check .
echo "== mypy"; mypy sandbox tap-cordial-activity/tap_cordial_activity target-lytics/target_lytics benchmarks orchestrate/dagster
echo "== import-linter"; lint-imports
echo "== pytest"; pytest "$@"
