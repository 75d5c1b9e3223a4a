"""Issue 7, scenario 4: `meltano run` killed (SIGTERM, SIGKILL) in the middle of a large export.

The real `meltano` CLI runs in the temporary project copy of tests/test_meltano.py. The pipeline:

1. a first run up to ``end_date`` = CHECKPOINT stores a bookmark (the last checkpoint);
2. a run over ~100k generated events is killed (the whole process group: meltano, tap, target)
   while the target is uploading into a deliberately slow Lytics stand-in;
3. the next run delivers every event.

Why duplicates are bounded as asserted: the tap emits a checkpoint STATE every
ActivityStream.CHECKPOINT_RECORDS records of an export window, and target-lytics writes a changed
STATE as soon as every record before it was accepted (without stopping its uploads;
``min_state_interval_seconds`` is 0 here, see the test), so Meltano's
stored checkpoint never covers undelivered events. What the killed run delivered after its last
checkpoint may arrive twice: less than one checkpoint interval of accepted records, plus the
bodies beyond them (at most max_concurrent_uploads, including those in flight at the kill, which
the stand-in still stores); nothing before the first run's bookmark is ever sent again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tap_cordial_activity.streams import ActivityStream
from test_faults_helpers import assert_no_secrets, lytics_ids, wait_until
from test_meltano import (
    MELTANO,
    Meltano,
    _bookmark,
    _exported,
    meltano,
    meltano_project,
)

from sandbox.httpbase import Fault
from sandbox.pytest_plugin import Sandbox, rfc3339

pytestmark = pytest.mark.meltano
__all__ = ["meltano", "meltano_project"]  # fixtures reused from test_meltano, not copied

EVENTS = 100_000
#: Upload size for these runs: ~25 requests for the whole export, so a kill lands among them.
MAX_REQUEST_BYTES = 1_000_000
#: Each upload waits this long in the Lytics stand-in: the export takes ~10 s to deliver.
SLOW_UPLOAD_SECONDS = 0.4
#: Requests Lytics must have stored before the kill: the run is well under way, not finished.
KILL_AFTER_REQUESTS = 4
#: target-lytics' default: bodies beyond the last STATE's records that may be accepted.
MAX_CONCURRENT_UPLOADS = 4


def _run_args() -> list[str]:
    return ["--environment=sandbox", "run", "tap-cordial-activity", "target-lytics"]


def _with_env(meltano: Meltano, **env: str) -> Meltano:
    return dataclasses.replace(meltano, env={**meltano.env, **env})


def _time(event: dict[str, Any]) -> datetime:
    return datetime.strptime(event["time"], "%Y-%m-%dT%H:%M:%S%z").astimezone(UTC)


def _kill_midway(meltano: Meltano, box: Sandbox, sig: signal.Signals, log: Path) -> int:
    """Start `meltano run` in its own process group; kill the group midway; return the exit code."""
    stored_before = len(box.lytics.requests)
    box.lytics.inject("/collect/json/", *[Fault(delay_seconds=SLOW_UPLOAD_SECONDS)] * 200)
    with log.open("w+") as output:
        process = subprocess.Popen(
            [str(MELTANO), *_run_args()],
            cwd=meltano.project,
            env=meltano.env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: the kill reaches the tap and target too
        )
        try:
            wait_until(
                lambda: (
                    len(box.lytics.requests) - stored_before >= KILL_AFTER_REQUESTS
                    or process.poll() is not None
                ),
                timeout=90,
                what="the run to be uploading",
            )
            assert process.poll() is None, "the run ended before it could be killed"
            os.killpg(process.pid, sig)
            code = process.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever outlived the signal
            process.wait()
    # The request in flight when the kill landed is still stored by the stand-in once its delay
    # is over (as a real Lytics would finish a request whose client vanished): let it settle.
    time.sleep(SLOW_UPLOAD_SECONDS + 0.3)
    box.lytics.clear_faults()
    return code


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_meltano_run_then_next_run_delivers_every_event(
    meltano: Meltano, sandbox: Sandbox, tmp_path: Path, sig: signal.Signals
) -> None:
    cordial = sandbox.cordial
    cordial.add_generated(EVENTS, seed=23, start=cordial.default_start, end=cordial.default_end)
    expected = _exported(cordial.events)
    checkpoint = cordial.default_start + timedelta(hours=6)
    # Every STATE once its records are accepted: with the default interval (1 s) a ready STATE
    # may wait, and the events Lytics accepts meanwhile would widen the duplicate bound below.
    slow = _with_env(
        meltano,
        TARGET_LYTICS_MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES),
        TARGET_LYTICS_MIN_STATE_INTERVAL_SECONDS="0",
    )
    interval = ActivityStream.CHECKPOINT_RECORDS

    # 1. A finished run up to the checkpoint.
    _with_env(slow, TAP_CORDIAL_ACTIVITY_END_DATE=rfc3339(checkpoint))(*_run_args())
    first_bookmark = _bookmark(meltano.state())
    assert datetime.fromisoformat(first_bookmark) == checkpoint
    before = {i for i, e in expected.items() if _time(e) <= checkpoint}
    assert sorted(lytics_ids(sandbox.lytics)) == sorted(before)

    # 2. The next run is killed while it uploads.
    killed_log = tmp_path / "killed.log"
    code = _kill_midway(slow, sandbox, sig, killed_log)
    assert code != 0
    at_kill = Counter(lytics_ids(sandbox.lytics))
    delivered_by_killed = sum(at_kill.values()) - len(before)
    assert 0 < delivered_by_killed < len(expected) - len(before), "the kill did not land midway"
    # Meltano kept the checkpoint: the killed run stored no bookmark.
    assert _bookmark(meltano.state()) == first_bookmark

    # 3. The next run delivers everything.
    if sig is signal.SIGKILL:
        # Meltano had no chance to mark the run as ended: the next run within its stale-job window
        # (5 minutes without heartbeat) is refused with a clear message, and stores nothing.
        refused = slow(*_run_args(), check=False)
        assert refused.returncode != 0
        assert "pipeline is already running" in refused.stderr
        assert "--force" in refused.stderr
        assert Counter(lytics_ids(sandbox.lytics)) == at_kill
        final = slow(
            "--environment=sandbox", "run", "--force", "tap-cordial-activity", "target-lytics"
        )
    else:
        final = slow(*_run_args())
    received = Counter(lytics_ids(sandbox.lytics))
    assert set(received) == set(expected), (
        f"missing {len(set(expected) - set(received))} events after the recovery run"
    )
    duplicated = {i for i, n in received.items() if n > 1}
    # Duplicates: only events the killed run had delivered after its last checkpoint, each twice
    # at most; the recovery run resent nothing older.
    assert duplicated <= {i for i in at_kill if i not in before}
    largest_body = max(r.message_count for r in sandbox.lytics.requests)
    # One checkpoint interval, the bodies in flight, and the partial body a SIGTERM flushes.
    bound = interval + (MAX_CONCURRENT_UPLOADS + 1) * largest_body
    assert len(duplicated) <= min(delivered_by_killed, bound)
    assert max(received.values()) <= 2
    assert all(received[i] == 1 for i in before), "an event before the checkpoint came twice"
    print(  # shown with `pytest -rP`: the figures docs/reliability.md quotes
        f"{sig.name}, checkpoint every {interval}: {len(expected)} events, {len(before)} before "
        f"the checkpoint, killed run delivered {delivered_by_killed}, duplicates after recovery "
        f"{len(duplicated)} (bodies of up to {largest_body} events)"
    )
    latest = max(_time(e) for e in expected.values())
    assert datetime.fromisoformat(_bookmark(meltano.state())) >= latest

    # No secret in any output, in the stored state, or anywhere in Meltano's system database
    # (runs, their payloads and state, as stored at rest).
    system_db = Path(meltano.env["MELTANO_DATABASE_URI"].removeprefix("sqlite:///"))
    assert system_db.stat().st_size > 0
    assert_no_secrets(
        sandbox.secrets(),
        killed_run=killed_log.read_text(errors="replace"),
        final_run=final.stdout + final.stderr,
        state=json.dumps(meltano.state()),
        system_database=system_db.read_bytes().decode("latin-1"),
    )
