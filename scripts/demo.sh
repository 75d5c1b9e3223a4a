#!/usr/bin/env bash
# The demo: one command on a fresh machine, no root and no Cordial or Lytics account.
#   1. .venv with meltano and both plugins (scripts/bootstrap.sh), then `meltano install`;
#   2. the sandbox (Cordial + SFTP + Lytics stand-ins on 127.0.0.1) with generated events;
#   3. `meltano run tap-cordial-activity target-lytics` in the sandbox environment, and what Lytics got;
#   4. new events, a second run that delivers only those; then the sandbox stops (also on failure).
# DEMO_EVENTS / DEMO_NEW_EVENTS change the sizes. Logs go to .sandbox/*.log.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS="${DEMO_EVENTS:-3000}"
NEW_EVENTS="${DEMO_NEW_EVENTS:-250}"
WORK=.sandbox
ENV_FILE="$WORK/env.sh"
STATE_ID="sandbox:tap-cordial-activity-to-target-lytics"

if [ -t 1 ]; then bold=$'\033[1m'; dim=$'\033[2m'; reset=$'\033[0m'; else bold=; dim=; reset=; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$reset"; }
note() { printf '%s%s%s\n' "$dim" "$*" "$reset"; }
# Runs a command with its output in a log file; on failure shows the end of the log and stops.
logged() {
  local log="$1"; shift
  local start=$SECONDS
  if ! "$@" >"$log" 2>&1; then
    echo "FAILED: $* (exit status above; last lines of $log):" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  note "   done in $((SECONDS - start)) s (log: $log)"
}

step "Setting up .venv (meltano, both plugins, the sandbox)"
source scripts/bootstrap.sh
export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false
mkdir -p "$WORK"

step "meltano install"
logged "$WORK/meltano-install.log" meltano install

step "Starting the sandbox with $EVENTS generated Cordial events"
rm -f "$ENV_FILE"
# --allow-sftp-fallback: without root or sshd the sandbox serves SFTP with paramiko instead.
python -m sandbox up --events "$EVENTS" --allow-sftp-fallback --env-file "$ENV_FILE" \
  >"$WORK/sandbox.log" 2>&1 &
sandbox_pid=$!
stop_sandbox() {
  if kill -0 "$sandbox_pid" 2>/dev/null; then
    kill -TERM "$sandbox_pid" 2>/dev/null || true
    wait "$sandbox_pid" 2>/dev/null || true
    note "sandbox stopped"
  fi
}
trap stop_sandbox EXIT
trap 'exit 130' INT TERM
for _ in $(seq 1 600); do
  grep -qx "SANDBOX READY" "$WORK/sandbox.log" 2>/dev/null && break
  if ! kill -0 "$sandbox_pid" 2>/dev/null; then
    echo "the sandbox did not start:" >&2; cat "$WORK/sandbox.log" >&2; exit 1
  fi
  sleep 0.1
done
grep -qx "SANDBOX READY" "$WORK/sandbox.log" || { echo "sandbox not ready after 60 s" >&2; exit 1; }
# The sandbox's addresses and throwaway credentials, as TAP_CORDIAL_ACTIVITY_* / TARGET_LYTICS_*.
# shellcheck disable=SC1090
source "$ENV_FILE"
grep -v "^SANDBOX READY$" "$WORK/sandbox.log" | sed 's/^/   /' | head -n 8 || true

# A new sandbox holds new events: forget the bookmark of an earlier demo.
meltano --environment=sandbox state clear --force "$STATE_ID" >/dev/null 2>&1 || true

bookmark() {
  meltano --environment=sandbox state get "$STATE_ID" 2>/dev/null | python -c '
import json, sys
state = json.load(sys.stdin)["singer_state"]["bookmarks"]["activity"]
print(state["replication_key_value"])'
}

step "Run 1: meltano run tap-cordial-activity target-lytics"
logged "$WORK/run-1.log" meltano --environment=sandbox run tap-cordial-activity target-lytics

step "What Lytics received"
python -m sandbox show --env-file "$ENV_FILE"
first_bookmark="$(bookmark)"
echo
echo "Bookmark in Meltano's state ($STATE_ID): time = $first_bookmark"

step "Adding $NEW_EVENTS new events in Cordial, timed after the bookmark"
python -m sandbox add-events "$NEW_EVENTS" --since "$first_bookmark" --env-file "$ENV_FILE"

step "Run 2: the same command; the tap starts from the bookmark"
logged "$WORK/run-2.log" meltano --environment=sandbox run tap-cordial-activity target-lytics

step "What Lytics received now"
python -m sandbox show --env-file "$ENV_FILE"
echo
echo "Bookmark in Meltano's state: time = $(bookmark) (was $first_bookmark)"
python -m sandbox show --env-file "$ENV_FILE" --json | python -c '
import json, sys
summary = json.load(sys.stdin)
expected = int(sys.argv[1]) + int(sys.argv[2])
total, distinct = summary["total"], summary["distinct_event_ids"]
print(f"{total} events in Lytics, {distinct} distinct: run 2 delivered only the {sys.argv[2]} new ones"
      if total == distinct else f"DUPLICATES: {total} events but {distinct} distinct")
sys.exit(0 if total == distinct else 1)' "$EVENTS" "$NEW_EVENTS"

step "Done: the sandbox stops now"
