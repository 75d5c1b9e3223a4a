#!/usr/bin/env bash
# The benchmark command (issue 6): our tap and target against stock singer-sdk plugins, on the
# sandbox. Arguments go to benchmarks/run.py, e.g. scripts/bench.sh --events 1000000 --compare-small
# The "slow link" scenario (200 ms per request, 20 MB/s; our target with its defaults against
# max_concurrent_uploads 1 and against the local link): scripts/bench.sh slow-link [--events N]
# (the same as --only slow-link).
# The table is printed and written to benchmarks/results/latest.md.
# `scripts/bench.sh backfill [--days 90 ...]` runs only the backfill scenario (benchmarks/backfill.py:
# sized concurrent windows against fixed daily windows one at a time; results/backfill.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v sshd >/dev/null && [ ! -x /usr/sbin/sshd ]; then
  echo "error: the benchmark serves the export over OpenSSH sshd: install openssh-server" >&2
  exit 1
fi
source scripts/bootstrap.sh
if [ "${1:-}" = backfill ]; then
  shift
  exec python -m benchmarks.backfill "$@"
fi
if [ "${1:-}" = slow-link ]; then
  shift
  exec python -m benchmarks.run --only slow-link "$@"
fi
exec python -m benchmarks.run "$@"
