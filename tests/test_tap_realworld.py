"""tap-cordial-activity against a Cordial whose jobs take time and whose events arrive late.

Late events and ``settle_minutes``, export jobs running ahead (``max_concurrent_exports``) with
records and STATE in window order, a failed job mid-backfill, windows sized to the data
(``target_events_per_window``), and progress lines while a file is read. Real sshd and the
Cordial stand-in with small timings.
"""

from __future__ import annotations

import itertools
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_tap_helpers import TapRun, event, iso, run_tap

# Fixtures: a sandbox whose Cordial stand-in has no default events (tests add their own).
from test_tap_sync import quiet, quiet_cordial  # noqa: F401

from sandbox.cordial import RECORDING_DELAY_KEY
from sandbox.httpbase import Request, Response
from sandbox.pytest_plugin import Sandbox

T0 = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture
def sbx(quiet: Sandbox) -> Sandbox:  # noqa: F811
    """The sandbox with a Cordial stand-in holding only the test's events."""
    return quiet


def window_of(body: dict[str, Any]) -> tuple[datetime, datetime]:
    """The timeframe an export request asked for."""
    return (datetime.fromisoformat(body["selected_timeframe_start"]),
            datetime.fromisoformat(body["selected_timeframe_end"]))


def assert_window_order(run: TapRun) -> None:
    """Bookmarks only move forward, and each record comes before the STATE that covers it."""
    bookmark: datetime | None = None
    pending: list[datetime] = []
    for message in run.messages:
        if message["type"] == "RECORD":
            moment = datetime.fromisoformat(message["record"]["time"])
            assert bookmark is None or moment >= bookmark, "a record before the bookmark"
            pending.append(moment)
        elif message["type"] == "STATE":
            value = message["value"]["bookmarks"]["activity"].get("replication_key_value")
            if value is None:
                continue
            moment = datetime.fromisoformat(value)
            assert bookmark is None or moment >= bookmark, "the bookmark moved back"
            assert all(p <= moment for p in pending), "a record after its window's STATE"
            bookmark, pending = moment, []


# -- late events and settle_minutes ---------------------------------------------------------


@pytest.mark.parametrize("settle_minutes", [None, 0])
def test_late_events_are_delivered_once_with_settle_minutes(sbx, tmp_path, settle_minutes):
    """Events recorded up to 15 minutes after their time: the default waits for them."""
    now = datetime.now(UTC).replace(microsecond=0)
    recorded_at = now + timedelta(seconds=12)  # after run 1 created its job, before run 2
    late_by = timedelta(minutes=15) - timedelta(seconds=1)
    sbx.cordial.add_events([
        event("on-time", now - timedelta(hours=1)),
        # Recorded late, but before run 1: run 1 exports it either way.
        {**event("late-early", now - timedelta(minutes=16)),
         RECORDING_DELAY_KEY: timedelta(minutes=15).total_seconds()},
        # Recorded 14:59 after its time, 12 s after the test began.
        {**event("late", recorded_at - late_by), RECORDING_DELAY_KEY: late_by.total_seconds()},
    ])
    config = sbx.tap_config(start_date=iso(now - timedelta(hours=2)),
                              settle_minutes=settle_minutes)
    first = run_tap(tmp_path, config)
    assert first.returncode == 0, first.stderr
    created = [job.created for job in sbx.cordial.jobs.values()]
    assert max(created) < recorded_at, "run 1 was too slow for this test's timing"
    time.sleep(max(0.0, (recorded_at - datetime.now(UTC)).total_seconds()) + 2)
    second = run_tap(tmp_path, config, state=first.states[-1])
    assert second.returncode == 0, second.stderr
    first_ids = [r["_id"] for r in first.records]
    second_ids = [r["_id"] for r in second.records]
    if settle_minutes is None:
        assert sorted(first_ids) == ["late-early", "on-time"]
        assert second_ids == ["late"]
        end = datetime.fromisoformat(first.bookmark["replication_key_value"])
        assert now - timedelta(minutes=15) <= end <= now - timedelta(minutes=14)
    else:
        # Without settling, run 1 exported the late event's time before it was recorded, and
        # run 2 starts after it: it is lost. This is what the default prevents.
        assert sorted(first_ids + second_ids) == ["late-early", "on-time"]


# -- concurrent export jobs -----------------------------------------------------------------


def test_jobs_run_ahead_while_records_and_state_stay_in_order(sbx, tmp_path):
    sbx.cordial.options.update({"job_base_seconds": 0.4})
    ids = [f"e{h:03d}" for h in range(0, 120, 2)]
    sbx.cordial.add_events(
        [event(i, T0 + timedelta(hours=int(i[1:]), minutes=7)) for i in ids]
    )
    config = sbx.tap_config(start_date=iso(T0), end_date=iso(T0 + timedelta(days=5)),
                              target_events_per_window=0)
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr
    jobs = sorted(sbx.cordial.jobs.values(), key=lambda j: j.created)
    assert len(jobs) == 5
    # Each next job was created before the previous one was reported Done.
    overlapping = [b for a, b in itertools.pairwise(jobs) if b.created < a.finished]
    assert len(overlapping) >= 3, [(j.created, j.finished) for j in jobs]
    running = max(
        sum(1 for j in jobs if j.created <= a.created < j.finished) for a in jobs
    )
    assert running == 3  # max_concurrent_exports default
    assert [r["_id"] for r in run.records] == ids
    assert_window_order(run)
    assert [s["bookmarks"]["activity"]["replication_key_value"] for s in run.states] == [
        iso(T0 + timedelta(days=d)).replace("Z", "+00:00") for d in range(1, 6)
    ]


def test_one_at_a_time_when_asked(sbx, tmp_path):
    sbx.cordial.options.update({"job_base_seconds": 0.2})
    config = sbx.tap_config(start_date=iso(T0), end_date=iso(T0 + timedelta(days=3)),
                              target_events_per_window=0, max_concurrent_exports=1)
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr
    jobs = sorted(sbx.cordial.jobs.values(), key=lambda j: j.created)
    assert len(jobs) == 3
    assert all(b.created >= a.finished for a, b in itertools.pairwise(jobs))


def test_throttled_jobs_hold_back_new_ones_and_429_is_honoured(sbx, tmp_path):
    from sandbox.httpbase import Fault

    sbx.cordial.options.update({"job_base_seconds": 0.3, "max_running_jobs": 1})
    sbx.cordial.inject("/v2/contactactivityexport", Fault(status=429, retry_after=1))
    ids = [f"e{d}" for d in range(4)]
    sbx.cordial.add_events([event(i, T0 + timedelta(days=int(i[1:]), hours=3)) for i in ids])
    config = sbx.tap_config(start_date=iso(T0), end_date=iso(T0 + timedelta(days=4)),
                              target_events_per_window=0)
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr
    assert "HTTP 429" in run.stderr
    assert "Cordial throttles export job" in run.stderr
    assert [r["_id"] for r in run.records] == ids
    assert_window_order(run)


@pytest.mark.parametrize("delete", [False, True], ids=["keep-files", "delete_exported_files"])
def test_failed_job_mid_backfill_keeps_the_bookmark_before_it(sbx, tmp_path, delete):
    sbx.cordial.options.update({"job_base_seconds": 0.3})
    ids = [f"e{h:03d}" for h in range(0, 120, 4)]
    sbx.cordial.add_events([event(i, T0 + timedelta(hours=int(i[1:]), minutes=1)) for i in ids])
    config = sbx.tap_config(start_date=iso(T0), end_date=iso(T0 + timedelta(days=5)),
                            target_events_per_window=0, delete_exported_files=delete)
    original = sbx.cordial.route
    created: list[str] = []

    def third_job_fails(request: Request) -> Response:
        answer = original(request)
        if request.path.startswith("/v2/contactactivityexport") and answer.status == 200:
            job_id = answer.body.decode().split('"')[3]
            created.append(job_id)
            if len(created) == 3:
                # It fails late, once the jobs created after it are Done.
                sbx.cordial.jobs[job_id].options.update(
                    {"fail_jobs": True, "write_delay_seconds": 1.5}
                )
        return answer

    sbx.cordial.route = third_job_fails  # type: ignore[method-assign]
    failed = run_tap(tmp_path, config)
    sbx.cordial.route = original  # type: ignore[method-assign]
    assert failed.returncode == 1
    assert f"Cordial export job {created[2]} failed" in failed.stderr
    assert failed.bookmark["replication_key_value"] == "2024-05-03T00:00:00+00:00"
    assert [r["_id"] for r in failed.records] == [i for i in ids if int(i[1:]) < 48]
    # The jobs created ahead for later windows are named on one line.
    later = [line for line in failed.stderr.splitlines() if "already created for later" in line]
    assert len(later) == 1
    assert created[3:]
    assert all(job_id in later[0] for job_id in created[3:])
    for job_id in created[3:]:
        job = sbx.cordial.jobs[job_id]
        assert job.complete.wait(10)
        on_disk = [p for p in sbx.sftp.root.iterdir() if p.name.startswith(job.request["name"])]
        if delete:
            assert on_disk == [], f"{job_id} was Done: its files are deleted"
            assert f"{job.request['name']}.json.gz (delete_exported_files" in failed.stderr
        else:
            assert on_disk, f"{job_id}'s files are left alone"
    if not delete:
        assert "left in SFTP folder" in later[0]

    rerun = run_tap(tmp_path, config, state=failed.states[-1])
    assert rerun.returncode == 0, rerun.stderr
    emitted = [r["_id"] for r in failed.records + rerun.records]
    assert emitted == ids
    assert_window_order(rerun)


# -- windows sized to the data ---------------------------------------------------------------


def test_quiet_90_day_backfill_takes_a_handful_of_jobs(sbx, tmp_path):
    start = T0
    ids = [f"q{n:04d}" for n in range(90 * 12)]
    sbx.cordial.add_events(
        [event(i, start + timedelta(hours=2 * n, minutes=5)) for n, i in enumerate(ids)]
    )
    config = sbx.tap_config(start_date=iso(start), end_date=iso(start + timedelta(days=90)))
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr
    frames = [window_of(b) for b in sbx.cordial.exports]
    assert len(frames) <= 5, frames
    assert frames[0] == (start, start + timedelta(hours=24))  # export_window_hours
    assert all(e - s <= timedelta(days=31) for s, e in frames)
    assert frames[-1][1] == start + timedelta(days=90)
    assert sorted(r["_id"] for r in run.records) == ids
    assert_window_order(run)
    assert f"{len(frames)} export job(s) created in this run" in run.stderr


def test_busy_windows_shrink_and_fixed_windows_when_asked(sbx, tmp_path):
    # 60 events an hour; aiming at 30 per window gives half-hour spans, kept at 1 hour.
    sbx.cordial.add_events(
        [event(f"b{n:04d}", T0 + timedelta(minutes=n)) for n in range(12 * 60)]
    )
    config = sbx.tap_config(start_date=iso(T0), end_date=iso(T0 + timedelta(hours=12)),
                              export_window_hours=4, target_events_per_window=30,
                              max_concurrent_exports=1)
    sized = run_tap(tmp_path, config)
    assert sized.returncode == 0, sized.stderr
    spans = [e - s for s, e in map(window_of, sbx.cordial.exports)]
    assert spans == [timedelta(hours=4)] + [timedelta(hours=1)] * 8
    assert len(sized.records) == 12 * 60

    sbx.cordial.exports.clear()
    fixed = run_tap(tmp_path, {**config, "target_events_per_window": 0})
    assert fixed.returncode == 0, fixed.stderr
    spans = [e - s for s, e in map(window_of, sbx.cordial.exports)]
    assert spans == [timedelta(hours=4)] * 3


# -- progress while reading ------------------------------------------------------------------


def test_progress_lines_while_reading(sbx, tmp_path):
    sbx.cordial.add_generated(5000, start=T0, end=T0 + timedelta(hours=6))
    config = sbx.tap_config(start_date=iso(T0), end_date=iso(T0 + timedelta(hours=6)),
                              progress_interval_seconds=0.000001)
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if "Reading export" in line]
    assert len(lines) >= 3
    assert re.search(r"\d+ records, [\d.]+ MB, [\d.]+ MB/s, \d+% of the export's bytes",
                     lines[-1]), lines[-1]
    assert "Cordial job" in run.stderr  # the job-status lines stay
