"""`max_bad_records` and the `activity_rejects` stream (issue 27, the tap part).

Each kind of bad record (a line that is not JSON, a JSON value that is not an object, a CSV row
of the wrong width, an event without `_id` or `time`) against the Cordial stand-in and a real
sshd: by default the run fails naming the setting with the bookmark held; with a limit every good
event arrives once, the bad line is an `activity_rejects` record and the bookmark moves on; over
the limit the run fails before the window's STATE.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from tap_cordial_activity.errors import ExportCountError, S3Error
from tap_cordial_activity.export import MAX_RAW_BYTES, ExportRunner
from tap_cordial_activity.records import BadRecord, read_records
from tap_cordial_activity.windows import Window
from test_tap_helpers import TapRun, event, iso, run_tap

from sandbox.cordial import CordialStandIn
from sandbox.pytest_plugin import Sandbox

T0 = datetime(2024, 5, 1, tzinfo=UTC)
END = T0 + timedelta(days=1)


@pytest.fixture
def quiet(sftp_server, lytics) -> Iterator[Sandbox]:
    """A Cordial stand-in with 20 events in one day (one window)."""
    from sandbox.pytest_plugin import empty_folder

    empty_folder(sftp_server.root)
    events = [event(f"e{i:02d}", T0 + timedelta(minutes=10 * i + 1)) for i in range(20)]
    with CordialStandIn(
        sftp_root=sftp_server.root, sftp_path=sftp_server.sftp_path, events=events,
        sftp=sftp_server,
    ) as cordial:
        yield Sandbox(sftp=sftp_server, cordial=cordial, lytics=lytics)


def config(sandbox: Sandbox, **overrides: Any) -> dict[str, Any]:
    return sandbox.tap_config(
        start_date=iso(T0), end_date=iso(END), export_window_hours=24, compress=False,
        short_export_wait_seconds=0.1, **overrides,
    )


def of(run: TapRun, stream: str) -> list[dict[str, Any]]:
    return [m["record"] for m in run.messages if m["type"] == "RECORD" and m["stream"] == stream]


def all_ids(sandbox: Sandbox) -> set[str]:
    return {e["_id"] for e in sandbox.cordial.events if "_id" in e}


def metrics(run: TapRun) -> dict[str, int]:
    """The per-window ``record_count`` METRIC values by their ``count`` tag."""
    found = {}
    for line in run.stderr.splitlines():
        if "METRIC: " in line and '"count"' in line:
            point = orjson.loads(line.split("METRIC: ", 1)[1])
            found[point["tags"]["count"]] = point["value"]
    return found


def assert_failed_holding_bookmark(run: TapRun, pattern: str) -> None:
    assert run.returncode != 0
    assert re.search(pattern, run.stderr), run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert all("replication_key_value" not in s["bookmarks"].get("activity", {})
               for s in run.states)


def test_by_default_an_undecodable_line_fails_naming_the_setting(quiet, tmp_path):
    quiet.cordial.options.corrupt_line = 7
    run = run_tap(tmp_path, config(quiet))
    assert_failed_holding_bookmark(run, r"\.json line 7: not JSON .*`max_bad_records` is 0")
    assert of(run, "activity_rejects") == []
    # Limit 0: nothing of the new stream goes out, not even its SCHEMA.
    assert not [m for m in run.messages if m.get("stream") == "activity_rejects"]


def test_with_a_limit_the_bad_line_is_set_aside_and_the_bookmark_moves_on(quiet, tmp_path):
    quiet.cordial.options.corrupt_line = 7
    run = run_tap(tmp_path, config(quiet, max_bad_records=1))
    assert run.returncode == 0, run.stderr[-3000:]
    ids = [r["_id"] for r in of(run, "activity")]
    assert len(ids) == len(set(ids)) == 19
    (missing,) = all_ids(quiet) - set(ids)
    (reject,) = of(run, "activity_rejects")
    assert reject["line"] == 7
    assert reject["file"].startswith(reject["export_name"])
    assert reject["export_name"].startswith("singer-activity-")
    assert reject["error"].startswith("not JSON")
    # The raw text is the damaged line: the first half of the missing event's JSON.
    original = next(e for e in quiet.cordial.events if e["_id"] == missing)
    assert reject["raw"]
    assert orjson.dumps(original).decode().startswith(reject["raw"])
    assert reject["raw_truncated"] is False
    assert reject["raw_bytes"] == len(reject["raw"])
    assert reject["window_start"] == "2024-05-01T00:00:00+00:00"
    assert reject["window_end"] == "2024-05-02T00:00:00+00:00"
    assert run.bookmark["replication_key_value"] == "2024-05-02T00:00:00+00:00"
    # The SCHEMA comes first, the reject before the window's STATE.
    kinds = [(m["type"], m.get("stream")) for m in run.messages]
    schema_at = kinds.index(("SCHEMA", "activity_rejects"))
    reject_at = kinds.index(("RECORD", "activity_rejects"))
    state_at = max(i for i, m in enumerate(run.messages) if m["type"] == "STATE"
                   and "replication_key_value" in m["value"]["bookmarks"]["activity"])
    assert schema_at < reject_at < state_at
    assert "read 20, emitted 19" in run.stderr
    assert "set aside 1 bad record(s) in `activity_rejects`" in run.stderr
    assert metrics(run)["rejected"] == 1
    assert "1 bad record(s) set aside in `activity_rejects` (`max_bad_records` 1)" in run.stderr


def test_over_the_limit_the_run_fails_before_the_window_state(quiet, tmp_path):
    quiet.cordial.options.corrupt_line = 7
    quiet.cordial.add_events([{"_id": "no-time", "action": "open"}])
    run = run_tap(tmp_path, config(quiet, max_bad_records=1))
    assert_failed_holding_bookmark(
        run, r"That is bad record 2 of this run, over `max_bad_records` \(1\)"
    )
    assert len(re.findall(r"ERROR.*max_bad_records", run.stderr)) == 1


@pytest.mark.parametrize(
    ("kind", "overrides", "error"),
    [
        pytest.param("not_object", {}, "a JSON value that is not an object", id="json-not-object"),
        pytest.param("no_id", {}, "record without `_id`", id="json-no-id"),
        pytest.param("not_object", {"json_array": True}, "an array element that is not an object",
                     id="json-array-not-object"),
        pytest.param("wide_row", {"export_format": "csv"}, "21 columns where the header has 20",
                     id="csv-wide-row"),
        pytest.param("cut", {"export_format": "csv"}, "`time` 'not-a-time' is not an ISO 8601",
                     id="csv-bad-time"),
        pytest.param("no_id", {"export_format": "csv"}, "record without `_id`", id="csv-no-id"),
    ],
)
def test_each_kind_of_bad_record(quiet, tmp_path, kind, overrides, error):
    quiet.cordial.options.corrupt_line = 5
    quiet.cordial.options.corrupt_kind = kind
    quiet.cordial.options.json_array = bool(overrides.pop("json_array", False))
    strict = run_tap(tmp_path, config(quiet, **overrides))
    assert_failed_holding_bookmark(strict, re.escape(error) + ".*`max_bad_records` is 0")
    run = run_tap(tmp_path, config(quiet, max_bad_records=3, **overrides))
    assert run.returncode == 0, run.stderr[-3000:]
    ids = [r["_id"] for r in of(run, "activity")]
    assert len(ids) == len(set(ids)) == 19
    (reject,) = of(run, "activity_rejects")
    assert reject["error"].startswith(error.split(" is not")[0]), reject
    assert reject["raw"]
    assert run.bookmark["replication_key_value"] == "2024-05-02T00:00:00+00:00"


def test_an_event_without_time_is_set_aside(quiet, tmp_path):
    quiet.cordial.add_events([{"_id": "no-time", "cID": "c", "action": "open"}])
    run = run_tap(tmp_path, config(quiet, max_bad_records=1))
    assert run.returncode == 0, run.stderr[-3000:]
    (reject,) = of(run, "activity_rejects")
    assert reject["error"] == "record no-time without `time`"
    assert orjson.loads(reject["raw"])["_id"] == "no-time"
    assert len(of(run, "activity")) == 20


def test_a_huge_bad_line_is_capped_and_the_cap_noted(quiet, tmp_path):
    quiet.cordial.add_events([{"_id": "big", "action": "open", "pad": "x" * (MAX_RAW_BYTES * 2)}])
    run = run_tap(tmp_path, config(quiet, max_bad_records=1))
    assert run.returncode == 0, run.stderr[-3000:]
    (reject,) = of(run, "activity_rejects")
    assert len(reject["raw"].encode()) == MAX_RAW_BYTES
    assert reject["raw_truncated"] is True
    assert reject["raw_bytes"] > MAX_RAW_BYTES * 2


@pytest.mark.parametrize("output", ["sdk", "batch"])
def test_rejects_are_plain_records_whatever_the_writer(quiet, tmp_path, output):
    quiet.cordial.options.corrupt_line = 7
    overrides: dict[str, Any] = {"max_bad_records": 1}
    if output == "sdk":
        overrides["stream_maps"] = {"activity": {"extra": "'x'"}}
    else:
        overrides["batch_config"] = {
            "encoding": {"format": "jsonl", "compression": "none"},
            "storage": {"root": f"file://{tmp_path}/batches", "prefix": "b-"},
        }
        (tmp_path / "batches").mkdir()
    run = run_tap(tmp_path, config(quiet, **overrides))
    assert run.returncode == 0, run.stderr[-3000:]
    (reject,) = of(run, "activity_rejects")
    assert reject["line"] == 7
    assert run.bookmark["replication_key_value"] == "2024-05-02T00:00:00+00:00"


def test_deselected_rejects_stream_keeps_the_strict_behaviour(quiet, tmp_path):
    quiet.cordial.options.corrupt_line = 7
    catalog = tmp_path / "catalog.json"
    discovered = orjson.loads(run_tap(tmp_path, config(quiet), "--discover").stdout)
    for stream in discovered["streams"]:
        for entry in stream["metadata"]:
            if entry["breadcrumb"] == []:
                entry["metadata"]["selected"] = stream["tap_stream_id"] == "activity"
    catalog.write_bytes(orjson.dumps(discovered))
    run = run_tap(tmp_path, config(quiet, max_bad_records=5), "--catalog", str(catalog))
    assert "the `activity_rejects` stream is not selected" in run.stderr
    assert_failed_holding_bookmark(run, r"line 7: not JSON")


def test_a_resumed_window_neither_repeats_nor_loses_a_reject(quiet, tmp_path):
    # Four files of five records: a checkpoint STATE after each of the first three files.
    quiet.cordial.options.corrupt_line = 7
    settings = config(quiet, max_bad_records=1, limit_records_per_file=5)
    full = run_tap(tmp_path, settings)
    assert full.returncode == 0, full.stderr[-3000:]
    checkpoints = [s for s in full.states if "progress" in s["bookmarks"]["activity"]]
    by_read = {s["bookmarks"]["activity"]["progress"]["records_read"]: s for s in checkpoints}
    assert {5, 10} <= set(by_read), by_read.keys()
    # Stopped after file 2 (which holds line 7 of the export): its reject is already out.
    after = run_tap(tmp_path, settings, state=by_read[10])
    assert after.returncode == 0, after.stderr[-3000:]
    assert of(after, "activity_rejects") == []
    assert len(of(after, "activity")) == 10
    # Stopped after file 1: the resumed run sets the bad record aside.
    before = run_tap(tmp_path, settings, state=by_read[5])
    assert before.returncode == 0, before.stderr[-3000:]
    (reject,) = of(before, "activity_rejects")
    assert reject == {**of(full, "activity_rejects")[0], "rejected_at": reject["rejected_at"]}
    assert len(of(before, "activity")) == 14


class _GrowingCsvStore:
    """An export store whose one CSV file is cut inside its fourth row when first listed."""

    error = S3Error
    location = "a fake store"
    header = b"_id,time,action\n"
    rows = [f"e{i},2024-05-01T00:{i:02d}:00+0000,open\n".encode() for i in range(1, 6)]

    def __init__(self) -> None:
        self.listings = 0

    def data(self) -> bytes:
        whole = self.header + b"".join(self.rows)
        # Cut inside row 4 ("e4,2024-05"): two of its three columns.
        return whole if self.listings > 1 else whole[: len(self.header) + 3 * 33 + 10]

    def list_files(self) -> dict[str, int]:
        self.listings += 1
        return {"x-1.csv": len(self.data())}

    def open(self, name: str, offset: int = 0) -> io.BytesIO:
        remote = io.BytesIO(self.data())
        remote.offset, remote.reconnects = offset, 0  # type: ignore[attr-defined]
        return remote

    def close(self) -> None:
        """Nothing to close."""


def test_a_csv_row_cut_by_a_file_still_being_written_is_read_again_not_set_aside():
    """A CSV export read while Cordial still writes it ends inside a row: that row is a cut
    (read again once whole), not a bad record, even with a limit."""
    store = _GrowingCsvStore()
    assert not store.data().endswith(b"\n")
    runner = ExportRunner(
        {"export_format": "csv", "max_bad_records": 5, "short_export_wait_seconds": 0,
         "poll_interval_seconds": 0},
        None, store, logging.getLogger("test"), checkpoint_records=5000,  # type: ignore[arg-type]
    )
    window = Window(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 2, tzinfo=UTC))
    window.export, window.job_id, window.job, window.reported = "x", "j", {"status": "Done"}, 5
    emitted = [r["_id"] for r in runner.window_records(window) if r]
    assert emitted == ["e1", "e2", "e3", "e4", "e5"]
    assert window.rejects == []
    assert window.read == 5


def test_a_csv_row_that_is_not_utf8_is_set_aside():
    data = (
        b"_id,time,action\ne1,2024-05-01T00:01:00+0000,open\n"
        b"e2,2024-05-01T00:02:00+0000,op\xff\n"
    )
    parsed = list(read_records(io.BytesIO(data), "f.csv", "csv", bad_records=True))
    assert parsed[0][0]["_id"] == "e1"
    assert isinstance(parsed[1][0], BadRecord)
    assert parsed[1][0].problem.startswith("not UTF-8")
    assert parsed[1][0].raw == b"e2,2024-05-01T00:02:00+0000,op\xff"


def test_progress_lines_count_the_records_set_aside(quiet, tmp_path):
    quiet.cordial.add_events(
        [event(f"p{i:04d}", T0 + timedelta(hours=4, seconds=i)) for i in range(2100)]
    )
    quiet.cordial.options.corrupt_line = 7
    run = run_tap(tmp_path, config(quiet, max_bad_records=1, progress_interval_seconds=0.000001))
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if "Reading export" in line]
    assert lines, run.stderr[-3000:]
    assert all("records (1 set aside as bad records)," in line for line in lines), lines


def test_over_the_limit_keeps_the_checkpoint_and_a_higher_limit_resumes_there(quiet, tmp_path):
    """Bad record 2 fails the run in the last file; the checkpoint before it stays, so the run
    with a higher limit resumes there: nothing delivered or set aside twice."""
    quiet.cordial.options.corrupt_line = 7
    quiet.cordial.add_events([{"_id": "no-time", "action": "open"}])
    settings = config(quiet, max_bad_records=1, limit_records_per_file=5)
    failed = run_tap(tmp_path, settings)
    assert failed.returncode != 0
    assert "over `max_bad_records` (1)" in failed.stderr
    last = failed.states[-1]
    progress = last["bookmarks"]["activity"]["progress"]
    assert progress["records_read"] == 20
    delivered = [r["_id"] for r in of(failed, "activity")]
    (first_reject,) = of(failed, "activity_rejects")

    resumed = run_tap(tmp_path, {**settings, "max_bad_records": 2}, state=last)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming export" in resumed.stderr
    (second_reject,) = of(resumed, "activity_rejects")
    assert second_reject["line"] != first_reject["line"]
    assert not set(delivered) & {r["_id"] for r in of(resumed, "activity")}
    assert len(quiet.cordial.exports) == 1


class _SettledStore(_GrowingCsvStore):
    """A complete export whose last line, as Cordial wrote it, is bad and has no newline."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__()
        self.whole, self.name = data, name

    def data(self) -> bytes:
        return self.whole

    def list_files(self) -> dict[str, int]:
        return {self.name: len(self.whole)}


@pytest.mark.parametrize(
    ("export_format", "data"),
    [
        pytest.param("json", b'{"_id":"e1","time":"2024-05-01T00:01:00+0000","action":"open"}\n'
                     b'{"_id":"e2","time":', id="json-lines"),
        pytest.param("csv", b"_id,time,action\ne1,2024-05-01T00:01:00+0000,open\ne2,2024-05",
                     id="csv"),
    ],
)
@pytest.mark.parametrize("limit", [0, 1])
def test_a_bad_last_line_without_newline_in_a_file_that_holds_still(export_format, data, limit):
    """Not a cut that a re-read would complete: with a limit it is set aside, without one the
    window fails naming `max_bad_records` (instead of failing every run for good)."""
    name = f"x-1.{export_format}"
    runner = ExportRunner(
        {"export_format": export_format, "max_bad_records": limit,
         "short_export_wait_seconds": 0, "poll_interval_seconds": 0},
        None, _SettledStore(data, name), logging.getLogger("test"),  # type: ignore[arg-type]
        checkpoint_records=5000,
    )
    window = Window(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 2, tzinfo=UTC))
    window.export, window.job_id, window.job, window.reported = "x", "j", {"status": "Done"}, 2
    if limit == 0:
        with pytest.raises(ExportCountError, match=r"hold 1 .*set `max_bad_records` to set that "
                                                   r"line aside"):
            list(runner.window_records(window))
        return
    emitted = [r["_id"] for r in runner.window_records(window) if r]
    assert emitted == ["e1"]
    (reject,) = window.rejects
    assert (reject["file"], reject["line"]) == (name, 2 if export_format == "json" else 3)
    assert reject["raw"] == data.rsplit(b"\n", 1)[1].decode()
    assert window.read == 2
