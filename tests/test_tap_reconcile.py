"""Reconciliation: the records read per window against the count Cordial reports for its job.

A partial file fails the window (bookmark unchanged) and the next run exports it again; a file
still growing after Done is read whole, once; ``count_mismatch: warn``; more records than
reported; no count reported; and the per-window summary and METRIC lines.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_tap_helpers import TapRun, event, iso, run_tap

# Fixtures: a sandbox whose Cordial stand-in has no default events (tests add their own).
from test_tap_sync import quiet, quiet_cordial  # noqa: F401

from sandbox.httpbase import Request, Response
from sandbox.pytest_plugin import Sandbox

T0 = datetime(2024, 5, 1, tzinfo=UTC)
IDS = [f"r{n:03d}" for n in range(40)]
#: Short waits for a short export (the default is 30 s).
QUICK = {"short_export_wait_seconds": 0.1}


@pytest.fixture
def sbx(quiet: Sandbox) -> Sandbox:  # noqa: F811
    """The sandbox with 40 events in one 12-hour window."""
    quiet.cordial.add_events(
        [event(i, T0 + timedelta(minutes=10 * n + 1)) for n, i in enumerate(IDS)]
    )
    return quiet


def config_of(sbx: Sandbox, **overrides: Any) -> dict[str, Any]:
    """One 12-hour window over the stored events (quick waits for short exports)."""
    settings = {"start_date": iso(T0), "end_date": iso(T0 + timedelta(hours=12)),
                "export_window_hours": 12, **QUICK, **overrides}
    return sbx.tap_config(**settings)


def summary(run: TapRun) -> list[str]:
    """The per-window reconciliation lines."""
    return [line for line in run.stderr.splitlines() if re.search(r"Window .* done \(job", line)]


def metrics(run: TapRun) -> dict[str, int]:
    """The per-window ``record_count`` METRIC values by their ``count`` tag."""
    found = {}
    for line in run.stderr.splitlines():
        if "METRIC: " in line and '"count"' in line:
            point = json.loads(line.split("METRIC: ", 1)[1])
            found[point["tags"]["count"]] = point["value"]
    return found


@pytest.mark.parametrize("damage", [{"drop_last_events": 3}, {"cut_last_line": True}])
def test_partial_file_fails_the_window_and_the_next_run_exports_it_again(sbx, tmp_path, damage):
    sbx.cordial.options.update(damage)
    failed = run_tap(tmp_path, config_of(sbx))
    assert failed.returncode == 1
    job_id = next(iter(sbx.cordial.jobs))
    name = sbx.cordial.exports[0]["name"]
    error = failed.stderr.strip().splitlines()[-1]
    assert f"Cordial job {job_id} reported 40 records" in error
    assert f"its file(s) {name}.json.gz hold" in error
    assert "the next run exports it again" in error
    assert "Traceback" not in failed.stderr
    # The bookmark never moved: no STATE carries a bookmark, nor a progress to resume from.
    assert all("replication_key_value" not in s["bookmarks"].get("activity", {})
               for s in failed.states)
    assert all("progress" not in s["bookmarks"].get("activity", {}) for s in failed.states)

    sbx.cordial.options.update({"drop_last_events": 0, "cut_last_line": False})
    rerun = run_tap(tmp_path, config_of(sbx), state=failed.states[-1] if failed.states else None)
    assert rerun.returncode == 0, rerun.stderr
    assert len(sbx.cordial.exports) == 2  # exported again, not resumed
    assert sorted(r["_id"] for r in rerun.records) == IDS


@pytest.mark.parametrize("compress", [True, False])
def test_growing_file_is_read_whole_exactly_once(sbx, tmp_path, compress):
    sbx.cordial.options.update({"grow_after_done_seconds": 0.5})
    run = run_tap(tmp_path, config_of(sbx, compress=compress, short_export_wait_seconds=1.5))
    assert run.returncode == 0, run.stderr
    assert [r["_id"] for r in run.records] == IDS
    assert "waiting for them to be complete" in run.stderr
    assert "Cordial reported 40, read 40, emitted 40" in summary(run)[0]


def test_count_mismatch_warn_passes_with_a_warning(sbx, tmp_path):
    sbx.cordial.options.update({"drop_last_events": 2})
    run = run_tap(tmp_path, config_of(sbx, count_mismatch="warn"))
    assert run.returncode == 0, run.stderr
    assert re.search(r"WARNING.*reported 40 records .* hold 38; going on \(`count_mismatch`: w",
                     run.stderr)
    assert len(run.records) == 38
    assert run.bookmark["replication_key_value"] == "2024-05-01T12:00:00+00:00"


def rewrite_jobs(sbx: Sandbox, change: Any) -> None:
    """Pass every ``GET /v2/jobs/...`` answer through ``change`` (a dict -> None function)."""
    original = sbx.cordial.route

    def route(request: Request) -> Response:
        answer = original(request)
        if request.path.startswith("/v2/jobs/") and answer.status == 200:
            job = json.loads(answer.body)
            change(job)
            return Response.json(200, job, answer.headers)
        return answer

    sbx.cordial.route = route  # type: ignore[method-assign]


def test_more_records_than_reported_is_a_warning(sbx, tmp_path):
    def fewer(job: dict[str, Any]) -> None:
        if job["status"] == "Done":
            job["result"]["totalRecords"] = 37

    rewrite_jobs(sbx, fewer)
    run = run_tap(tmp_path, config_of(sbx))
    assert run.returncode == 0, run.stderr
    assert re.search(r"WARNING.*reported 37 records for .* but its files hold 40: all were read",
                     run.stderr)
    assert len(run.records) == 40
    assert "Cordial reported 37, read 40, emitted 40" in summary(run)[0]


def test_total_items_is_used_without_total_records_and_no_count_is_noted(sbx, tmp_path):
    def no_result(job: dict[str, Any]) -> None:
        job["result"] = {}

    rewrite_jobs(sbx, no_result)
    run = run_tap(tmp_path, config_of(sbx))
    assert run.returncode == 0, run.stderr
    assert "Cordial reported 40, read 40" in summary(run)[0]

    def no_count(job: dict[str, Any]) -> None:
        job["result"] = {}
        job.pop("totalItems", None)

    rewrite_jobs(sbx, no_count)
    run = run_tap(tmp_path, config_of(sbx))
    assert run.returncode == 0, run.stderr
    assert "could not be reconciled: Cordial reported no record count for job" in run.stderr
    assert "Cordial reported no count, read 40, emitted 40" in summary(run)[0]


def test_summary_and_metric_lines_carry_the_counts(sbx, tmp_path):
    edge = T0 + timedelta(hours=12)
    sbx.cordial.add_events([event("edge-a", edge), event("edge-b", edge),
                            event("after", edge + timedelta(minutes=5))])
    first = run_tap(tmp_path, config_of(sbx))
    assert first.returncode == 0, first.stderr
    job_id = next(iter(sbx.cordial.jobs))
    assert (f"done (job {job_id}): Cordial reported 42, read 42, emitted 42, skipped 0 outside "
            "the window and 0 already delivered") in summary(first)[0]
    assert metrics(first) == {"cordial_reported": 42, "read": 42, "emitted": 42,
                              "skipped_outside": 0, "skipped_delivered": 0,
                              "skipped_action": 0}

    second = run_tap(tmp_path, config_of(sbx, end_date=iso(edge + timedelta(hours=1))),
                     state=first.states[-1])
    assert second.returncode == 0, second.stderr
    assert ("Cordial reported 3, read 3, emitted 1, skipped 0 outside the window and 2 already "
            "delivered") in summary(second)[0]
    assert metrics(second) == {"cordial_reported": 3, "read": 3, "emitted": 1,
                               "skipped_outside": 0, "skipped_delivered": 2,
                               "skipped_action": 0}
    tags = [json.loads(line.split("METRIC: ", 1)[1])["tags"]
            for line in second.stderr.splitlines() if '"count": "emitted"' in line
            or '"count":"emitted"' in line]
    assert tags
    assert tags[0]["stream"] == "activity"
    assert tags[0]["window_end"] == "2024-05-01T13:00:00+00:00"
