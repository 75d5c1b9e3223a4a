#!/usr/bin/env bash
# The demo: one command on a fresh machine, no root and no Cordial or Lytics account.
#   1. .venv with meltano and both plugins (scripts/bootstrap.sh), then `meltano install`;
#   2. the sandbox (Cordial + SFTP + Lytics stand-ins on 127.0.0.1) with generated events;
#   3. `meltano run tap-cordial-activity target-lytics` in the sandbox environment, and what Lytics got;
#   4. new events, a second run that delivers only those; then the sandbox stops (also on failure);
#   5. before the runs the target publishes the Lytics user schema; the end shows user profiles.
# DEMO_EVENTS / DEMO_NEW_EVENTS change the sizes; DEMO_DESTINATION=s3 sends the exports through
# moto's S3 server instead of SFTP (export_destination: s3). Logs go to .sandbox/*.log.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS="${DEMO_EVENTS:-3000}"
NEW_EVENTS="${DEMO_NEW_EVENTS:-250}"
DESTINATION="${DEMO_DESTINATION:-sftp}"
WORK=.sandbox
ENV_FILE="$WORK/env.sh"
STATE_ID="sandbox:tap-cordial-activity-to-target-lytics"

if [ -t 1 ]; then bold=$'\033[1m'; dim=$'\033[2m'; reset=$'\033[0m'; else bold=; dim=; reset=; fi
# fd 3 is the terminal even where a step's output goes to its log file.
exec 3>&1
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$reset" >&3; }
note() { printf '%s%s%s\n' "$dim" "$*" "$reset" >&3; }
# Runs a quiet command and says every 10 s that it still runs (a fresh machine's installs take a
# minute or more); its exit status is the command's.
heartbeat() {
  local what="$1"; shift
  local start=$SECONDS next=10 pid
  "$@" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if kill -0 "$pid" 2>/dev/null && [ $((SECONDS - start)) -ge "$next" ]; then
      note "   ... $what ($((SECONDS - start)) s)"
      next=$((next + 10))
    fi
  done
  wait "$pid"
}
# The lines of a `meltano run` log that tell the story: windows, jobs, files, records, state.
highlights() {
  grep -E "Exporting activity|: Done,|Read .* bytes|done: [0-9]+ records|completed processing|state has been updated|No state was found|Resuming" "$1" \
    | sed -E 's/^[0-9T:.-]+Z \[[a-z ]+\] /   /' \
    | awk -v width=160 'length($0) <= width { print; next }
        { line = substr($0, 1, width); sub(/ [^ ]*$/, "", line); print line " ..." }' || true
}
# Runs a command with its output in a log file; on failure shows the end of the log and stops.
logged() {
  local log="$1"; shift
  local start=$SECONDS
  if ! heartbeat "still running: $*" "$@" >"$log" 2>&1; then
    echo "FAILED: $* (exit status above; last lines of $log):" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  note "   done in $((SECONDS - start)) s (log: $log)"
}

step "Setting up .venv (meltano, both plugins, the sandbox)"
note "   on a fresh machine this downloads and installs packages: a minute or two"
# Installed by a child first (so the heartbeat can run beside it), then sourced for PATH: quick,
# since the child left it up to date.
heartbeat "installing packages into .venv" bash scripts/bootstrap.sh
source scripts/bootstrap.sh
export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false
mkdir -p "$WORK"

step "meltano install"
# `meltano install` upgrades the plugins' venvs in place; when meltano.yml or a plugin's dependencies
# changed since the last demo, reinstall them from scratch (--clean) so nothing stale remains.
stamp=.meltano/.demo-installed
want="$(cat meltano.yml tap-cordial-activity/pyproject.toml target-lytics/pyproject.toml | sha256sum | cut -d' ' -f1)"
clean=()
[ "$(cat "$stamp" 2>/dev/null)" = "$want" ] || clean=(--clean)
logged "$WORK/meltano-install.log" meltano install "${clean[@]}"
echo "$want" >"$stamp"

step "Starting the sandbox with $EVENTS generated Cordial events (exports through $DESTINATION)"
# Removed first: the background job truncates its log files only once it runs, after the wait
# loop below may have looked at them.
rm -f "$ENV_FILE" "$WORK/sandbox.out" "$WORK/sandbox.log"
# Without root or sshd the sandbox serves SFTP with paramiko instead of OpenSSH (the tests never do).
python -m sandbox up --events "$EVENTS" --destination "$DESTINATION" --env-file "$ENV_FILE" >"$WORK/sandbox.out" 2>"$WORK/sandbox.log" &
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
  grep -qx "SANDBOX READY" "$WORK/sandbox.out" 2>/dev/null && break
  if ! kill -0 "$sandbox_pid" 2>/dev/null; then
    echo "the sandbox did not start:" >&2; cat "$WORK/sandbox.log" >&2; exit 1
  fi
  sleep 0.1
done
grep -qx "SANDBOX READY" "$WORK/sandbox.out" 2>/dev/null || {
  echo "sandbox not ready after 60 s:" >&2; cat "$WORK/sandbox.log" >&2; exit 1
}
sed 's/^/   /' "$WORK/sandbox.log"
# The sandbox's addresses and throwaway credentials, as TAP_CORDIAL_ACTIVITY_* / TARGET_LYTICS_*.
# shellcheck disable=SC1090
source "$ENV_FILE"

step "meltano invoke target-lytics:schema-publish (Cordial fields as Lytics user fields)"
# Once per account, before the first run: creates the user fields and mappings and publishes them,
# so Lytics builds profiles from the events. Run again, it writes nothing.
logged "$WORK/schema-publish.log" meltano --environment=sandbox invoke target-lytics:schema-publish
grep -E "^(created|Created|Nothing)" "$WORK/schema-publish.log" | sed 's/^/   /'

# A new sandbox holds new events: forget the bookmark of an earlier demo (the demo leaves its own
# behind; the README's "Run it by hand" clears it the same way).
meltano --environment=sandbox state clear --force "$STATE_ID" >/dev/null 2>&1 || true

bookmark() {
  meltano --environment=sandbox state get "$STATE_ID" 2>/dev/null | python -c '
import json, sys
print(json.load(sys.stdin)["singer_state"]["bookmarks"]["activity"]["replication_key_value"])'
}
# Counts what the Lytics stand-in holds; prints "total distinct".
lytics_counts() {
  python -m sandbox show --env-file "$ENV_FILE" --json --limit 100000000 | python -c '
import json, sys
events = json.load(sys.stdin)["sample"]["events"]
print(len(events), len({e["cr_system_event_id"] for e in events}))'
}
# Shows the last N events Lytics received, one per line.
latest_events() {
  python -m sandbox show --env-file "$ENV_FILE" --json --limit 100000000 | python -c '
import json, sys
for event in json.load(sys.stdin)["sample"]["events"][-int(sys.argv[1]):]:
    print("  " + json.dumps(event, ensure_ascii=False, sort_keys=True))' "$1"
}

step "Run 1: meltano run tap-cordial-activity target-lytics"
logged "$WORK/run-1.log" meltano --environment=sandbox run tap-cordial-activity target-lytics
highlights "$WORK/run-1.log"

step "What Lytics received"
python -m sandbox show --env-file "$ENV_FILE" --profiles 0
first_bookmark="$(bookmark)"
read -r total_1 distinct_1 < <(lytics_counts)
note "(the tap's default actions leave out Cordial's reserved pageview and message-stopped actions, hence"
note " fewer than $EVENTS; page-view above is a custom action, which the default 'custom' includes)"
echo
echo "Meltano's state (meltano state list, then meltano state get $STATE_ID):"
meltano --environment=sandbox state list 2>/dev/null | sed 's/^/  /'
meltano --environment=sandbox state get "$STATE_ID" 2>/dev/null | sed 's/^/  /'
echo "Bookmark: time = $first_bookmark (the next run exports from there)"

step "Adding $NEW_EVENTS new events in Cordial, timed after the bookmark"
python -m sandbox add-events "$NEW_EVENTS" --env-file "$ENV_FILE"

step "Run 2: the same command; the tap starts from the bookmark"
logged "$WORK/run-2.log" meltano --environment=sandbox run tap-cordial-activity target-lytics
highlights "$WORK/run-2.log"

step "What Lytics received now"
python -m sandbox show --env-file "$ENV_FILE" --limit 0 --profiles 0
read -r total_2 distinct_2 < <(lytics_counts)
echo "the last 3 events received (from run 2):"
latest_events 3
echo
echo "Bookmark in Meltano's state: time = $(bookmark) (was $first_bookmark)"
echo "Run 1 delivered $total_1 events, run 2 delivered $((total_2 - total_1)) more;" \
  "$distinct_2 distinct event ids in $total_2 events."
if [ "$total_2" -le "$total_1" ] || [ "$distinct_2" -ne "$total_2" ] || [ "$distinct_1" -ne "$total_1" ]; then
  echo "UNEXPECTED: run 2 should add only new, distinct events" >&2
  exit 1
fi
echo "Only the new events arrived: no event was delivered twice."

step "User profiles: Lytics merged the events by cr_contact_id through the published mappings"
python -m sandbox show --env-file "$ENV_FILE" --profiles-only --profiles 3
profiles="$(python -m sandbox show --env-file "$ENV_FILE" --json --limit 0 | python -c '
import json, sys
print(json.load(sys.stdin)["profiles"]["total"])')"
if [ "$profiles" -lt 1 ]; then
  echo "UNEXPECTED: no user profile was built from the events" >&2
  exit 1
fi

step "Done: the sandbox stops now"
