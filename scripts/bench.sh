#!/usr/bin/env bash
# The benchmark command (issue 6): our tap and target against stock singer-sdk plugins, on the
# sandbox. Arguments go to benchmarks/run.py, e.g. scripts/bench.sh --events 1000000 --compare-small
# The "slow link" scenario (200 ms per request, 20 MB/s; our target with its defaults against
# max_concurrent_uploads 1 and against the local link): scripts/bench.sh --only slow-link
# The table is printed and written to benchmarks/results/latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v sshd >/dev/null && [ ! -x /usr/sbin/sshd ]; then
  echo "error: the benchmark serves the export over OpenSSH sshd: install openssh-server" >&2
  exit 1
fi
source scripts/bootstrap.sh
exec python -m benchmarks.run "$@"
