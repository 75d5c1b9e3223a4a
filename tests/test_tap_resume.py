"""Intra-window checkpoints: a run stopped midway through an export window is resumed.

The tap runs in a subprocess (as in test_tap_sync.py) through a small runner that lowers
``ActivityStream.CHECKPOINT_RECORDS`` and can make the run fail after a number of records read.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_tap_helpers import TapRun, event, iso, run_tap

# Fixtures: a sandbox whose Cordial stand-in has no default events (tests add their own).
from test_tap_sync import quiet, quiet_cordial  # noqa: F401

from sandbox.pytest_plugin import Sandbox

CHECKPOINT = 50
T0 = datetime(2024, 5, 1, tzinfo=UTC)
FIRST_END = T0 + timedelta(hours=12)
EDGES = ["edge-0", "edge-1", "edge-2"]
#: Window 1 holds 197 events plus 3 at its end (200 records); window 2 holds 20.
FIRST_IDS = [f"a{i:03d}" for i in range(197)] + EDGES
SECOND_IDS = [f"b{i:02d}" for i in range(20)]

RUNNER = """
import os
from tap_cordial_activity import export, streams
from tap_cordial_activity.tap import TapCordialActivity

streams.ActivityStream.CHECKPOINT_RECORDS = int(os.environ["CHECKPOINT_RECORDS"])
fail_after = int(os.environ.get("FAIL_AFTER_RECORDS") or 0)
if fail_after:
    original, seen = export.read_records, [0]

    def failing(*args, **kwargs):
        for item in original(*args, **kwargs):
            seen[0] += 1
            if seen[0] > fail_after:
                raise RuntimeError("simulated crash")
            yield item

    export.read_records = failing
TapCordialActivity.cli()
"""


def run_resumable_tap(
    tmp_path: Path,
    config: dict[str, Any],
    *,
    state: dict[str, Any] | None = None,
    fail_after: int = 0,
) -> TapRun:
    """Run the tap with ``CHECKPOINT_RECORDS`` = :data:`CHECKPOINT` (optionally crashing)."""
    env = {**os.environ, "CHECKPOINT_RECORDS": str(CHECKPOINT),
           "FAIL_AFTER_RECORDS": str(fail_after)}
    return run_tap(
        tmp_path, config, state=state, command=[sys.executable, "-c", RUNNER], env=env
    )


@pytest.fixture
def two_windows(quiet_sandbox: Sandbox) -> dict[str, Any]:
    """Events for two 12 h windows; returns the tap config that exports both."""
    first = [event(f"a{i:03d}", T0 + timedelta(minutes=i)) for i in range(197)]
    first += [event(edge, FIRST_END) for edge in EDGES]
    second = [event(f"b{i:02d}", FIRST_END + timedelta(hours=1, minutes=i)) for i in range(20)]
    quiet_sandbox.cordial.add_events(first + second)
    return quiet_sandbox.tap_config(
        start_date=iso(T0), end_date=iso(T0 + timedelta(hours=24)), export_window_hours=12
    )


@pytest.fixture
def quiet_sandbox(quiet: Sandbox) -> Sandbox:  # noqa: F811
    return quiet


def bookmark(state: dict[str, Any]) -> dict[str, Any]:
    return state["bookmarks"]["activity"]


def records_before(run: TapRun, state_index: int) -> list[str]:
    """Ids of the records written before the run's ``state_index``-th STATE message."""
    ids: list[str] = []
    seen = -1
    for message in run.messages:
        if message["type"] == "STATE":
            seen += 1
            if seen == state_index:
                return ids
        elif message["type"] == "RECORD":
            ids.append(message["record"]["_id"])
    raise AssertionError(f"run has no STATE #{state_index}")


START_STATE = {"bookmarks": {"activity": {
    "replication_key": "time", "replication_key_value": T0.isoformat(), "boundary_ids": ["x"],
}}}


@pytest.mark.parametrize("stream_maps", [None, {"activity": {}}], ids=["fast-path", "sdk-path"])
def test_progress_states_keep_the_bookmark(quiet_sandbox, two_windows, tmp_path, stream_maps):
    config = {**two_windows, **({"stream_maps": stream_maps} if stream_maps else {})}
    run = run_resumable_tap(tmp_path, config, state=START_STATE)
    assert run.returncode == 0, run.stderr
    assert sorted(r["_id"] for r in run.records) == sorted(FIRST_IDS + SECOND_IDS)
    states = [bookmark(s) for s in run.states]
    # The input state, 4 checkpoints of window 1 (every 50 records), then one STATE per window.
    assert len(states) == 1 + 4 + 2
    export = quiet_sandbox.cordial.exports[0]["name"]
    for number, state in enumerate(states[1:5], start=1):
        assert state["replication_key_value"] == T0.isoformat()
        assert state["boundary_ids"] == ["x"]
        progress = state["progress"]
        assert progress["export"] == export
        assert progress["job_id"]
        assert progress["window_start"] == T0.isoformat()
        assert progress["window_end"] == FIRST_END.isoformat()
        assert progress["files"]
        assert all(f.startswith(export) for f in progress["files"])
        assert progress["records_read"] == number * CHECKPOINT
        # Every record the checkpoint counts was written before it.
        assert len(records_before(run, number)) == number * CHECKPOINT
    assert "progress" not in states[5]
    assert states[5]["replication_key_value"] == FIRST_END.isoformat()
    assert states[5]["boundary_ids"] == EDGES
    assert "progress" not in states[6]


def test_split_files_checkpoint_at_each_file_end(quiet_sandbox, two_windows, tmp_path):
    run = run_resumable_tap(tmp_path, {**two_windows, "limit_records_per_file": 30})
    assert run.returncode == 0, run.stderr
    progress = [bookmark(s)["progress"] for s in run.states if "progress" in bookmark(s)]
    # Window 1: 7 files of 30, .., 30, 20 records. Each file but the last ends with a checkpoint,
    # which comes before the next 50 records are read.
    assert [p["records_read"] for p in progress] == [30, 60, 90, 120, 150, 180]
    assert len(progress[0]["files"]) == 7
    assert all("replication_key_value" not in bookmark(s) for s in run.states[:len(progress)])


@pytest.mark.parametrize("stream_maps", [None, {"activity": {}}], ids=["fast-path", "sdk-path"])
def test_crashed_run_resumes_without_a_new_export(
    quiet_sandbox, two_windows, tmp_path, stream_maps
):
    config = {**two_windows, **({"stream_maps": stream_maps} if stream_maps else {})}
    failed = run_resumable_tap(tmp_path, config, state=START_STATE, fail_after=120)
    assert failed.returncode != 0
    assert "simulated crash" in failed.stderr
    last = failed.states[-1]
    assert bookmark(last)["progress"]["records_read"] == 100
    assert bookmark(last)["replication_key_value"] == T0.isoformat()
    delivered = records_before(failed, len(failed.states) - 1)
    # What the crash re-sends is at most the records written after the last checkpoint.
    assert len(failed.records) - len(delivered) <= 120 - 100
    # Window 1's job, and window 2's created ahead while window 1 was read.
    assert len(quiet_sandbox.cordial.exports) == 2
    assert "already created for later windows" in failed.stderr

    rerun = run_resumable_tap(tmp_path, config, state=last)
    assert rerun.returncode == 0, rerun.stderr
    assert "Resuming export" in rerun.stderr
    # Only window 2 needed a new export job.
    assert len(quiet_sandbox.cordial.exports) == 3
    second_export = quiet_sandbox.cordial.exports[2]
    assert second_export["selected_timeframe_start"] == "2024-05-01T12:00:00.000Z"
    emitted = delivered + [r["_id"] for r in rerun.records]
    assert sorted(emitted) == sorted(FIRST_IDS + SECOND_IDS)
    assert len(emitted) == len(set(emitted))
    assert bookmark(rerun.states[-1])["replication_key_value"] == (T0 + timedelta(1)).isoformat()
    assert "progress" not in bookmark(rerun.states[-1])


def test_replayed_boundary_events_are_not_sent_again(quiet_sandbox, two_windows, tmp_path):
    full = run_resumable_tap(tmp_path, two_windows)
    assert full.returncode == 0, full.stderr
    # The checkpoint after all 200 records of window 1 (edges included), before its final STATE.
    index = next(i for i, s in enumerate(full.states)
                 if bookmark(s).get("progress", {}).get("records_read") == 200)
    delivered = records_before(full, index)
    assert sorted(delivered) == sorted(FIRST_IDS)

    rerun = run_resumable_tap(tmp_path, two_windows, state=full.states[index])
    assert rerun.returncode == 0, rerun.stderr
    assert len(quiet_sandbox.cordial.exports) == 3  # 2 by the full run, window 2 again
    # The replayed edges went into boundary_ids, so window 2's export (which includes its start
    # instant) does not send them again.
    assert sorted(r["_id"] for r in rerun.records) == SECOND_IDS
    assert bookmark(rerun.states[-2])["boundary_ids"] == EDGES
    assert "skipped 0 outside the window and 3 already delivered" in rerun.stderr


def test_missing_files_fall_back_to_a_new_export(quiet_sandbox, two_windows, tmp_path):
    failed = run_resumable_tap(tmp_path, two_windows, fail_after=120)
    assert failed.returncode != 0
    last = failed.states[-1]
    gone = bookmark(last)["progress"]["files"][0]
    (quiet_sandbox.sftp.root / gone).unlink()

    rerun = run_resumable_tap(tmp_path, two_windows, state=last)
    assert rerun.returncode == 0, rerun.stderr
    assert "Cannot resume export" in rerun.stderr
    assert gone in rerun.stderr
    # Failed run: windows 1 and 2 (ahead); this run: window 1 again, and window 2.
    assert len(quiet_sandbox.cordial.exports) == 4
    ids = [r["_id"] for r in rerun.records]
    # At least once: every event of the window is delivered again.
    assert sorted(ids) == sorted(FIRST_IDS + SECOND_IDS)
