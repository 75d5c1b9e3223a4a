#!/usr/bin/env bash
# The test command: sets up everything on a fresh machine, then runs lint, types and pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k sandbox -x).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v sshd >/dev/null && [ ! -x /usr/sbin/sshd ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing openssh-server (the tests use a real OpenSSH sftp server)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
  else
    echo "error: the tests need OpenSSH sshd: run 'sudo apt-get install openssh-server'" >&2
    exit 1
  fi
fi
source scripts/bootstrap.sh
echo "== ruff"; ruff check .
echo "== mypy"; mypy sandbox tap-cordial-activity/tap_cordial_activity target-lytics/target_lytics benchmarks
echo "== pytest"; pytest "$@"
