"""Issue 25, tap side: mistaken and hostile settings and STATE.

Each malformed setting or state ends the tap (a subprocess, as in test_faults_settings.py) with one
line, no traceback, a non-zero exit and no STATE; a future `end_date` or bookmark never moves the
bookmark into the future; a checkpoint the files contradict exports its window again; and the
STATE stays small whatever the number of export files.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tap_cordial_activity.timeutil import to_cordial
from tap_cordial_activity.windows import sync_range
from test_faults_helpers import assert_no_secrets
from test_tap_helpers import TapRun, event, iso, run_tap
from test_tap_resume import (  # noqa: F401 (fixtures)
    FIRST_IDS,
    SECOND_IDS,
    START_STATE,
    bookmark,
    quiet_sandbox,
    records_before,
    run_resumable_tap,
    two_windows,
)
from test_tap_sync import quiet, quiet_cordial  # noqa: F401

from sandbox.pytest_plugin import Sandbox

#: (setting changes, the one line expected): each refused by the settings check.
SETTING_CASES = [
    pytest.param({"start_date": "   "}, "`start_date` is blank", id="blank-start-date"),
    pytest.param({"start_date": "9999-12-31T23:59:59-23:59"},
                 "`start_date` '9999-12-31T23:59:59-23:59' lies outside the years 0001 to 9999",
                 id="year-9999-at-minus-23-59"),
    pytest.param({"start_date": "0001-01-01T00:00:00+23:59"},
                 "`start_date` '0001-01-01T00:00:00+23:59' lies outside the years 0001 to 9999",
                 id="year-1-at-plus-23-59"),
    pytest.param({"end_date": "9999-12-31T23:59:59.999999-23:59"},
                 "`end_date` '9999-12-31T23:59:59.999999-23:59' lies outside the years",
                 id="end-year-9999-at-minus-23-59"),
    pytest.param({"start_date": "0001-01-01"},
                 "`start_date` '0001-01-01' is before 2000-01-01: Cordial holds no events",
                 id="start-year-1"),
    pytest.param({"export_window_hours": 1e300}, "`export_window_hours` must be at most 744",
                 id="window-1e300"),
    pytest.param({"job_timeout_seconds": 1e300}, "`job_timeout_seconds` must be at most",
                 id="job-timeout-1e300"),
    pytest.param({"request_timeout_seconds": "1e300"},
                 "`request_timeout_seconds` must be at most 3600", id="request-timeout-1e300"),
    pytest.param({"settle_minutes": 1e300}, "`settle_minutes` must be at most",
                 id="settle-1e300"),
    pytest.param({"poll_interval_seconds": 120, "job_timeout_seconds": 60},
                 "`poll_interval_seconds` (120) must not be longer than `job_timeout_seconds` (60)",
                 id="poll-longer-than-timeout"),
    pytest.param({"api_key": "key-\u20ac-euro"},
                 "`api_key` holds a character outside Latin-1", id="api-key-not-latin-1"),
    pytest.param({"api_key": "key-with\x07bell"}, "`api_key` holds a control character",
                 id="api-key-control-char"),
    pytest.param({"api_url": "http://admin:pw-in-url@127.0.0.1:9/v2"},
                 "`api_url` must not hold a user name or password", id="api-url-userinfo"),
    pytest.param({"api_url": "http://127.0.0.1:9/v2?api_key=key-in-url"},
                 "`api_url` must not hold a query or fragment", id="api-url-query"),
    pytest.param({"export_destination": "s3", "s3_bucket": "b", "s3_prefix": "p",
                  "s3_region": "us-east-1",
                  "s3_endpoint_url": "http://reader:pw-in-url@127.0.0.1:9"},
                 "`s3_endpoint_url` must not hold a user name or password",
                 id="s3-endpoint-userinfo"),
]

BAD_STATE = {"replication_key": "time"}
#: (state file text, the one line expected): each refused before any SFTP or Cordial call.
STATE_CASES = [
    pytest.param("", "is empty: expected a JSON object", id="empty-state-file"),
    pytest.param("{\"bookmarks\": {", "is not valid JSON at line 1", id="malformed-state-file"),
    pytest.param("[]", "must hold a JSON object, not list", id="state-is-a-list"),
    pytest.param(json.dumps({"bookmarks": "activity"}), "`bookmarks` must be an object",
                 id="bookmarks-a-string"),
    pytest.param(json.dumps({"bookmarks": {"activity": "2024-05-01"}}),
                 "`bookmarks.activity` must be an object", id="stream-state-a-string"),
    pytest.param(json.dumps({"bookmarks": {"activity": {
        **BAD_STATE, "replication_key_value": "yesterday"}}}),
                 "`bookmarks.activity.replication_key_value` 'yesterday' is not an ISO 8601",
                 id="bookmark-not-a-date"),
    pytest.param(json.dumps({"bookmarks": {"activity": {
        **BAD_STATE, "replication_key_value": 1714521600}}}),
                 "`bookmarks.activity.replication_key_value` must be a date-time text",
                 id="bookmark-a-number"),
    pytest.param(json.dumps({"bookmarks": {"activity": {
        **BAD_STATE, "replication_key_value": "2999-01-01T00:00:00+00:00"}}}),
                 "`bookmarks.activity.replication_key_value` 2999-01-01T00:00:00+00:00 lies after "
                 "the run's time", id="bookmark-in-the-future"),
    pytest.param(json.dumps({"bookmarks": {"activity": {
        **BAD_STATE, "replication_key_value": "2024-05-01T00:00:00Z", "boundary_ids": "abc"}}}),
                 "`bookmarks.activity.boundary_ids` must be a list of event ids",
                 id="boundary-ids-a-string"),
]


def _one_line_failure(run: TapRun, message: str, state: Any = None) -> None:
    """Exit 1, the message exactly once, no traceback, no STATE but the incoming one."""
    assert run.returncode == 1, run.stderr[-2000:]
    assert run.stderr.count(message) == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert all(s == state for s in run.states), run.states


@pytest.mark.parametrize(("changes", "message"), SETTING_CASES)
def test_malformed_setting_is_one_line_before_any_call(
    sandbox: Sandbox, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    run = run_tap(tmp_path, sandbox.tap_config(**changes))
    _one_line_failure(run, message)
    assert run.stdout == ""
    assert sandbox.cordial.request_log == []
    assert sandbox.cordial.exports == []
    assert_no_secrets([*sandbox.secrets(), "pw-in-url", "key-in-url", "euro", "bell"],
                      stdout=run.stdout, stderr=run.stderr)


@pytest.mark.parametrize(("text", "message"), STATE_CASES)
def test_malformed_state_is_one_line_and_refused_as_corrupt(
    sandbox: Sandbox, tmp_path: Path, text: str, message: str
) -> None:
    state_file = tmp_path / "state.json"
    state_file.write_text(text)
    run = run_tap(tmp_path, sandbox.tap_config(), "--state", str(state_file))
    try:
        incoming = json.loads(text)
    except ValueError:
        incoming = None
    # singer-sdk writes the state it was given back when a sync fails: never a moved one.
    _one_line_failure(run, message, incoming)
    assert "meltano state clear" in run.stderr  # the way out
    assert sandbox.cordial.exports == []


def test_secrets_lose_surrounding_whitespace(sandbox: Sandbox, tmp_path: Path) -> None:
    """A pasted newline or space around a secret is no part of it (and is never printed)."""
    config = sandbox.tap_config(
        api_key=f" {sandbox.cordial.api_key}\n", sftp_password=f"{sandbox.sftp.password}\n",
        sftp_private_key=f"\n{sandbox.sftp.private_key}\n\n",
    )
    run = run_tap(tmp_path, config, "--test")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert_no_secrets(sandbox.secrets(), stdout=run.stdout, stderr=run.stderr)


def test_future_end_date_stops_at_the_run_horizon(
    quiet_sandbox: Sandbox, tmp_path: Path  # noqa: F811
) -> None:
    """`end_date: 3000-01-01`: exported up to now minus `settle_minutes`, with a warning."""
    now = datetime.now(UTC).replace(microsecond=0)
    recent = [event(f"r{i}", now - timedelta(hours=2, minutes=i)) for i in range(5)]
    late = [event("late", now - timedelta(minutes=5))]  # inside the settle margin: next run
    quiet_sandbox.cordial.add_events(recent + late)
    config = quiet_sandbox.tap_config(
        start_date=iso(now - timedelta(hours=6)), end_date="3000-01-01", settle_minutes=15,
        export_window_hours=744,
    )
    run = run_tap(tmp_path, config, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "`end_date` 3000-01-01T00:00:00+00:00 is in the future: exporting up to" in run.stderr
    assert sorted(r["_id"] for r in run.records) == sorted(e["_id"] for e in recent)
    reached = datetime.fromisoformat(run.bookmark["replication_key_value"])
    assert now - timedelta(minutes=16) <= reached <= now - timedelta(minutes=14)
    assert len(quiet_sandbox.cordial.exports) == 1

    again = run_tap(tmp_path, config, state=run.states[-1], timeout=60)
    assert again.returncode == 0, again.stderr[-2000:]
    # The next run goes on from the horizon, so nothing is skipped.
    assert datetime.fromisoformat(again.bookmark.get("replication_key_value") or
                                  run.bookmark["replication_key_value"]) >= reached


@pytest.mark.parametrize(
    ("end_after_horizon", "said"),
    [(timedelta(minutes=13), "inside the settle margin"), (timedelta(days=3), "in the future")],
)
def test_an_end_date_after_the_horizon_is_cut_to_it(end_after_horizon, said) -> None:
    """An `end_date` 2 minutes ago is past now minus `settle_minutes` too: cut, with a warning."""
    started = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    horizon = started - timedelta(minutes=15)
    end_date = (horizon + end_after_horizon).isoformat()
    got = sync_range({}, {"end_date": end_date, "settle_minutes": 15}, started)
    assert got.end == horizon
    [warning] = got.warnings
    assert said in warning
    assert horizon.isoformat() in warning
    inside = sync_range({}, {"end_date": horizon.isoformat(), "settle_minutes": 15}, started)
    assert (inside.end, inside.warnings) == (horizon, ())


def test_cordial_dates_have_four_digit_years() -> None:
    """strftime writes year 1 as "1", which Cordial answers with 406."""
    assert to_cordial(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000Z"
    assert to_cordial(datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC)) == "0999-12-31T23:59:59.000Z"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        pytest.param({"records_read": 999_999_999}, "claims 999999999 records read, but its "
                     "file(s) hold 200", id="records-read-past-the-files"),
        pytest.param({"records_read": -5}, "its `records_read` -5 is not a count",
                     id="negative-records-read"),
        pytest.param({"files": ["../../etc/passwd"]}, "its `files` is not a list of file names",
                     id="files-outside-the-folder"),
        pytest.param({"window_end": "2030-01-01T00:00:00+00:00"}, "after this run's end",
                     id="window-past-the-run-end"),
        pytest.param({"window_start": "2024-04-30T00:00:00+00:00"}, "not at the bookmark",
                     id="window-not-at-the-bookmark"),
    ],
)
def test_contradicted_checkpoint_exports_the_window_again(
    quiet_sandbox: Sandbox, two_windows: dict[str, Any], tmp_path: Path,  # noqa: F811
    changes: dict[str, Any], problem: str,
) -> None:
    failed = run_resumable_tap(tmp_path, two_windows, state=START_STATE, fail_after=120)
    assert failed.returncode != 0
    last = failed.states[-1]
    delivered = records_before(failed, len(failed.states) - 1)
    assert delivered
    bookmark(last)["progress"].update(changes)

    rerun = run_resumable_tap(tmp_path, two_windows, state=last)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert problem in rerun.stderr
    assert "Traceback" not in rerun.stderr
    # Never skipped: every event of both windows is emitted again by this run.
    assert sorted(r["_id"] for r in rerun.records) == sorted(FIRST_IDS + SECOND_IDS)
    assert bookmark(rerun.states[-1])["replication_key_value"] == "2024-05-02T00:00:00+00:00"


def test_state_stays_small_with_many_export_files(
    quiet_sandbox: Sandbox, tmp_path: Path  # noqa: F811
) -> None:
    """`limit_records_per_file: 1`: 300 files, yet each STATE stays under 2 KB; the next run
    deletes exactly the files read, and a checkpoint with a file set is resumed."""
    start = datetime(2024, 5, 1, tzinfo=UTC)
    # 180 events in the first 6 h window, 120 in the second.
    events = [event(f"e{i:03d}", start + timedelta(minutes=2 * i)) for i in range(300)]
    quiet_sandbox.cordial.add_events(events)
    root = quiet_sandbox.sftp.root
    (root / "unrelated.json").write_text("{}")
    config = quiet_sandbox.tap_config(
        start_date=iso(start), end_date=iso(start + timedelta(hours=12)),
        export_window_hours=6, limit_records_per_file=1, delete_exported_files=True,
    )
    failed = run_resumable_tap(tmp_path, config, fail_after=150)
    assert failed.returncode != 0
    checkpoint = failed.states[-1]
    assert "file_set" in bookmark(checkpoint)["progress"]
    largest = max(len(line) for line in failed.stdout.splitlines() if '"STATE"' in line)
    assert largest < 2000, largest

    run = run_resumable_tap(tmp_path, config, state=checkpoint)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Resuming export" in run.stderr
    delivered = records_before(failed, len(failed.states) - 1)
    assert sorted(delivered + [r["_id"] for r in run.records]) == sorted(e["_id"] for e in events)
    largest = max(len(line) for line in run.stdout.splitlines() if '"STATE"' in line)
    assert largest < 2000, largest
    read_exports = run.bookmark["read_exports"]
    assert len(read_exports) == 2
    files = {p.name for p in root.iterdir()} - {"unrelated.json"}
    assert len(files) >= 300

    final = run_tap(tmp_path, config, state=run.states[-1])
    assert final.returncode == 0, final.stderr[-3000:]
    exports = {e["export"] for e in read_exports}
    left = {p.name for p in root.iterdir()}
    assert "unrelated.json" in left
    assert not {f for f in left if f.startswith(tuple(exports))}
    deleted = [line for line in final.stderr.splitlines() if "its window was delivered" in line]
    # 181 + 120 files: the event at 06:00 ends window 1 and opens window 2 (both ends inclusive).
    assert len(deleted) == 301, "\n".join(deleted[:3] + deleted[-3:])


CAPPED_RUNNER = """
import os
from tap_cordial_activity import streams
from tap_cordial_activity.tap import TapCordialActivity

streams.ActivityStream.MAX_PENDING_DELETIONS = int(os.environ["MAX_PENDING_DELETIONS"])
TapCordialActivity.cli()
"""


@pytest.mark.parametrize("listed", ["as a list", "as a string"])
def test_read_files_outside_the_export_folder_are_kept(
    quiet_sandbox: Sandbox, tmp_path: Path, listed: str  # noqa: F811
) -> None:
    """A STATE's `read_files` deletes only files of the export folder: a path below it, a path
    elsewhere or a string (whose letters a loop would walk) deletes nothing."""
    root = quiet_sandbox.sftp.root
    (root / "sub").mkdir()
    for path in (root / "read.json", root / "sub" / "keep.json", root / "k"):
        path.write_text("{}")
    os.chown(root / "sub", root.stat().st_uid, -1)
    inside = f"{quiet_sandbox.sftp.sftp_path}/read.json"
    read_files: Any = (
        [inside, f"{quiet_sandbox.sftp.sftp_path}/sub/keep.json", "k", "/etc/hostname", 7]
        if listed == "as a list" else "k"
    )
    now = datetime.now(UTC).replace(microsecond=0)
    state = {"bookmarks": {"activity": {
        "replication_key": "time", "replication_key_value": iso(now - timedelta(hours=1)),
        "read_files": read_files,
    }}}
    config = quiet_sandbox.tap_config(delete_exported_files=True)
    run = run_tap(tmp_path, config, state=state, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (root / "sub" / "keep.json").exists()
    assert (root / "k").exists()
    assert Path("/etc/hostname").exists()
    if listed == "as a list":
        assert not (root / "read.json").exists()
        assert "names '/etc/hostname', which is not a file of the export folder" in run.stderr
        assert "sub/keep.json', which is not a file of the export folder" in run.stderr
    else:
        assert (root / "read.json").exists()
        assert "`read_files` in the STATE is not a list: no file deleted" in run.stderr
    # The listed paths leave the STATE: the last one lists only this run's file.
    [read] = bookmark(run.states[-1])["read_files"]
    assert read.startswith(f"{quiet_sandbox.sftp.sftp_path}/singer-activity-"), read


def test_pending_deletions_stay_bounded_over_many_windows(
    quiet_sandbox: Sandbox, tmp_path: Path  # noqa: F811
) -> None:
    """24 one-hour windows, at most 5 deletions kept per STATE: each run stops after the windows
    already started; the runs together deliver every event once and delete every file read."""
    start = datetime(2024, 5, 1, tzinfo=UTC)
    events = [event(f"h{i:02d}", start + timedelta(hours=i, minutes=30)) for i in range(24)]
    quiet_sandbox.cordial.add_events(events)
    config = quiet_sandbox.tap_config(
        start_date=iso(start), end_date=iso(start + timedelta(hours=24)), export_window_hours=1,
        target_events_per_window=0, delete_exported_files=True,
    )
    env = {**os.environ, "MAX_PENDING_DELETIONS": "5"}
    delivered: list[str] = []
    state: dict[str, Any] | None = None
    runs: list[TapRun] = []
    for _ in range(8):
        run = run_tap(tmp_path, config, state=state, env=env,
                      command=[sys.executable, "-c", CAPPED_RUNNER])
        assert run.returncode == 0, run.stderr[-3000:]
        runs.append(run)
        delivered += [r["_id"] for r in run.records]
        # 5, plus the windows whose jobs were already running (max_concurrent_exports 3).
        assert all(len(bookmark(s).get("read_files", [])) <= 5 + 2 for s in run.states)
        if run.states:
            state = run.states[-1]
        if bookmark(state)["replication_key_value"] == iso(start + timedelta(hours=24)).replace(
            "Z", "+00:00"
        ):
            break
    else:
        raise AssertionError(f"the backfill did not end: {state}")
    assert sorted(delivered) == sorted(e["_id"] for e in events)
    assert len(runs) >= 3
    assert "this run ends after the windows already started" in runs[0].stderr
    left = {p.name for p in quiet_sandbox.sftp.root.iterdir()}
    # Only the last run's files wait for the next run to delete them.
    assert {path.rsplit("/", 1)[-1] for path in bookmark(state)["read_files"]} == left


def test_settings_objects_keep_their_secrets_out_of_the_repr() -> None:
    """A `%r` of the read settings (a log line, a traceback's locals) shows no secret."""
    from tap_cordial_activity.s3 import S3Settings
    from tap_cordial_activity.sftp_settings import SftpSettings

    s3 = S3Settings(bucket="b", prefix="p", access_key_id="AKIA", secret_access_key="s3-secret")
    sftp = SftpSettings(host="h", port=22, username="u", password="sftp-pw",
                        private_key="-----BEGIN key-----", private_key_passphrase="phrase")
    shown = repr(s3) + repr(sftp)
    assert not [s for s in ("s3-secret", "sftp-pw", "BEGIN key", "phrase") if s in shown]
    assert "bucket='b'" in shown


def test_every_secret_setting_loses_surrounding_whitespace() -> None:
    """Each setting --about marks secret is stripped (a pasted newline is not part of a key)."""
    from tap_cordial_activity.settings import CONFIG_SCHEMA, STRIPPED_SECRETS, strip_secrets

    secret = {n for n, p in CONFIG_SCHEMA["properties"].items() if p.get("secret")}
    assert secret <= set(STRIPPED_SECRETS)
    config = {name: f" value-of-{name}\n" for name in STRIPPED_SECRETS}
    strip_secrets(config)
    assert config == {name: f"value-of-{name}" for name in STRIPPED_SECRETS}


def test_cordial_echoing_a_secret_never_prints_it() -> None:
    """A server that echoes the request's destination password (in a 400, in a 503 retried until
    the retries run out, in a failed job's result) is quoted with the secret hidden."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tap_cordial_activity.client import CordialClient
    from tap_cordial_activity.errors import CordialError
    from tap_cordial_activity.retries import RetryPolicy

    password = "dest-pw-echoed"

    class Echo(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = 503 if self.path.endswith("retry") else 400
            answer = json.dumps({"error": True, "message": f"bad destination {body.decode()}"})
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer.encode())

        def do_GET(self) -> None:
            answer = {"_id": "j1", "status": "Failed",
                      "result": {"message": f"cannot log in with {password}"}}
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(answer).encode())

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = CordialClient(
        f"http://127.0.0.1:{server.server_port}/v2", "the-api-key",
        retry=RetryPolicy(max_retries=1, initial_delay_seconds=0.0, max_delay_seconds=0.0),
        timeout_seconds=5, secrets=(password,),
    )
    seen: list[str] = []
    try:
        for path in ("contactactivityexport", "retry"):
            with pytest.raises(CordialError) as refused:
                client.request("POST", path, json_body={"password": password}, what="creating")
            seen.append(str(refused.value))
        with pytest.raises(CordialError) as failed:
            client.poll_job("j1")
        seen.append(str(failed.value))
    finally:
        server.shutdown()
        client.close()
    assert all("***" in text for text in seen), seen
    assert not [text for text in seen if password in text], seen
