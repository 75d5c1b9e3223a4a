"""The Cordial stand-in: auth, validation, jobs, export files, selection, rate limit, faults."""

from __future__ import annotations

import csv
import gzip
import http.client
import io
import json
import threading
import time
import zlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import requests

from sandbox.cordial import CSV_COLUMNS, CordialStandIn
from sandbox.events import RESERVED_ACTIONS, generate_events
from sandbox.httpbase import Fault
from sandbox.sftp import SftpServer

AUTH_FAILURE = {"error": "Access Denied: Authentication Failure"}
# Test events live in 2020, far from the fixture's default events (the last 48 hours).
T0 = datetime(2020, 6, 1, tzinfo=UTC)


def ev(second: int, action: str = "open", _id: str | None = None, **extra: Any) -> dict[str, Any]:
    """A small Cordial event ``second`` seconds after T0."""
    when = T0 + timedelta(seconds=second)
    return {
        "_id": _id or f"{second:024x}",
        "cID": "c" * 24,
        "action": action,
        "time": when.strftime("%Y-%m-%dT%H:%M:%S+0000"),
        **extra,
    }


def body_for(sftp: SftpServer, **overrides: Any) -> dict[str, Any]:
    """A valid export request over T0 .. T0+1h; an override of None removes a key."""
    body: dict[str, Any] = {
        "name": "test-export-1",
        "exportType": "json",
        "destination": {
            "type": "sftp",
            "server": sftp.host,
            "port": sftp.port,
            "username": sftp.username,
            "password": sftp.password,
            "path": sftp.sftp_path,
        },
        "selected_timeframe_start": T0.isoformat().replace("+00:00", "Z"),
        "selected_timeframe_end": (T0 + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
    }
    for key, value in overrides.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


@pytest.fixture
def anon() -> requests.Session:
    """A session without credentials."""
    return requests.Session()


@pytest.fixture
def api(cordial: CordialStandIn) -> requests.Session:
    """An authenticated session (API key as Basic user name, empty password)."""
    session = requests.Session()
    session.auth = (cordial.api_key, "")
    return session


def create(api: requests.Session, cordial: CordialStandIn, body: dict[str, Any]) -> str:
    response = api.post(f"{cordial.url}/contactactivityexport", json=body)
    assert response.status_code == 200, response.text
    job_id = response.json()["jobId"]
    assert len(job_id) == 24
    int(job_id, 16)
    return str(job_id)


def wait_job(
    api: requests.Session, cordial: CordialStandIn, job_id: str, max_polls: int = 200
) -> tuple[dict[str, Any], list[str]]:
    """Poll until Done/Failed; returns the final job and every status seen."""
    statuses = []
    for _ in range(max_polls):
        job = api.get(f"{cordial.url}/jobs/{job_id}").json()
        statuses.append(job["status"])
        if job["status"] in ("Done", "Failed"):
            return job, statuses
        time.sleep(0.01)
    raise AssertionError(f"job never finished: {statuses[-5:]}")


def run_export(
    api: requests.Session, cordial: CordialStandIn, sftp: SftpServer, **overrides: Any
) -> dict[str, Any]:
    job, _ = wait_job(api, cordial, create(api, cordial, body_for(sftp, **overrides)))
    return job


def read_lines(path: Any) -> list[bytes]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        return [line for line in handle.read().split(b"\n") if line]


# -- auth and errors --------------------------------------------------------------------------


def test_health_needs_the_api_key_as_basic_user(
    anon: requests.Session, cordial: CordialStandIn
) -> None:
    ok = anon.get(f"{cordial.url}/health", auth=(cordial.api_key, ""))
    assert ok.status_code == 200
    assert ok.json() == {"status": "ok"}
    for auth in [None, ("wrong-key", ""), ("", cordial.api_key)]:
        response = anon.get(f"{cordial.url}/health", auth=auth)
        assert response.status_code == 401
        assert response.json() == AUTH_FAILURE
    bearer = anon.get(
        f"{cordial.url}/health", headers={"Authorization": f"Bearer {cordial.api_key}"}
    )
    assert bearer.status_code == 401


def test_every_api_route_requires_auth(
    anon: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    export = anon.post(f"{cordial.url}/contactactivityexport", json=body_for(sftp_server))
    job = anon.get(f"{cordial.url}/jobs/0123456789abcdef01234567")
    assert (export.status_code, export.json()) == (401, AUTH_FAILURE)
    assert (job.status_code, job.json()) == (401, AUTH_FAILURE)
    assert cordial.exports == []


def test_wrong_content_type_is_415(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    response = api.post(
        f"{cordial.url}/contactactivityexport",
        data=json.dumps(body_for(sftp_server)),
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 415
    payload = response.json()
    assert payload["error"] is True
    assert payload["errorKey"] == "UNSUPPORTED_MEDIA_TYPE"
    assert payload["message"]
    # A charset parameter is fine.
    ok = api.post(
        f"{cordial.url}/contactactivityexport",
        data=json.dumps(body_for(sftp_server)),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert ok.status_code == 200


def test_malformed_json_is_400(api: requests.Session, cordial: CordialStandIn) -> None:
    response = api.post(
        f"{cordial.url}/contactactivityexport",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["errorKey"] == "INVALID_JSON"


@pytest.mark.parametrize(
    "field",
    ["name", "exportType", "destination", "selected_timeframe_start", "selected_timeframe_end"],
)
def test_missing_required_field_is_406(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer, field: str
) -> None:
    response = api.post(
        f"{cordial.url}/contactactivityexport", json=body_for(sftp_server, **{field: None})
    )
    assert response.status_code == 406
    assert response.json() == {
        "error": True,
        "errorKey": "INVALID_EXPORT_CONFIGURATION",
        "message": f"Field '{field}' should be specified",
    }


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            {"selected_action_name": "open", "selected_action_names": ["click"]},
            "Please use only one from existing filters",
        ),
        (
            {
                "selected_timeframe_start": "2020-06-01T10:00:00Z",
                "selected_timeframe_end": "2020-06-01T09:59:59Z",
            },
            "cannot be in past in comparison with",
        ),
        ({"name": "bad name_with_underscore"}, "letters, digits and dashes"),
        ({"exportType": "xml"}, "exportType"),
        ({"selected_timeframe_start": "yesterday"}, "ISO 8601"),
        ({"limitRecordsPerFile": -1}, "limitRecordsPerFile"),
    ],
)
def test_invalid_export_configuration_is_406(
    api: requests.Session,
    cordial: CordialStandIn,
    sftp_server: SftpServer,
    overrides: dict[str, Any],
    fragment: str,
) -> None:
    response = api.post(
        f"{cordial.url}/contactactivityexport", json=body_for(sftp_server, **overrides)
    )
    assert response.status_code == 406
    payload = response.json()
    assert payload["error"] is True
    assert payload["errorKey"] == "INVALID_EXPORT_CONFIGURATION"
    assert fragment in payload["message"]
    assert cordial.exports == []


def test_equal_start_and_end_is_accepted(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    same = "2020-06-01T00:00:00Z"
    job_id = create(
        api,
        cordial,
        body_for(sftp_server, selected_timeframe_start=same, selected_timeframe_end=same),
    )
    assert job_id in cordial.jobs


@pytest.mark.parametrize("missing", ["server", "username", "path"])
def test_destination_without_server_username_or_path_is_400(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer, missing: str
) -> None:
    body = body_for(sftp_server)
    del body["destination"][missing]
    response = api.post(f"{cordial.url}/contactactivityexport", json=body)
    assert response.status_code == 400
    assert response.json() == {
        "error": True,
        "errorKey": "INVALID_DESTINATION",
        "message": f"The destination.{missing} field is required.",
    }


def test_destination_needs_password_or_saved_key(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    body = body_for(sftp_server)
    del body["destination"]["password"]
    response = api.post(f"{cordial.url}/contactactivityexport", json=body)
    assert response.status_code == 400
    assert "savedKey" in response.json()["message"]
    body["destination"]["type"] = "s3"
    body["destination"]["password"] = "x"
    assert api.post(f"{cordial.url}/contactactivityexport", json=body).status_code == 400


def test_unknown_job_is_404_record_not_found(
    api: requests.Session, cordial: CordialStandIn
) -> None:
    response = api.get(f"{cordial.url}/jobs/ffffffffffffffffffffffff")
    assert response.status_code == 404
    payload = response.json()
    assert payload["error"] is True
    assert payload["errorKey"] == "RECORD_NOT_FOUND"
    assert "ffffffffffffffffffffffff" in payload["message"]


def test_unknown_route_is_404(api: requests.Session, cordial: CordialStandIn) -> None:
    response = api.get(f"{cordial.url}/contacts")
    assert response.status_code == 404
    assert response.json()["errorKey"] == "NOT_FOUND"


# -- jobs ---------------------------------------------------------------------------------------


def test_job_moves_pending_processing_done_with_counts(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.add_events([ev(i) for i in range(30)])
    cordial.options.pending_polls = 2
    cordial.options.processing_polls = 3
    job_id = create(api, cordial, body_for(sftp_server))
    cordial.jobs[job_id].written.wait(5)
    jobs = [api.get(f"{cordial.url}/jobs/{job_id}").json() for _ in range(7)]
    assert [j["status"] for j in jobs] == ["Pending"] * 2 + ["Processing"] * 3 + ["Done"] * 2
    assert all(j["totalItems"] == 30 for j in jobs)
    assert [j["completedItems"] for j in jobs[:2]] == [0, 0]
    assert jobs[-1]["completedItems"] == 30
    done = jobs[-1]
    assert done["_id"] == job_id
    assert done["result"] == {"totalRecords": 30}
    assert done["metadata"]["name"] == "test-export-1"
    assert done["metadata"]["exportType"] == "json"
    assert done["metadata"]["fileName"] == "test-export-1.json"
    assert "fileName" not in jobs[0]["metadata"]
    assert done["times"]["start"].endswith("+0000")
    assert done["times"]["end"].endswith("+0000")
    assert jobs[0]["times"]["end"] is None


def test_job_can_fail_with_a_result_message(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.options.fail_jobs = True
    cordial.options.fail_message = "Export failed: disk full"
    job, statuses = wait_job(api, cordial, create(api, cordial, body_for(sftp_server)))
    assert statuses == ["Pending", "Processing", "Failed"]
    assert job["result"]["message"] == "Export failed: disk full"
    assert "fileName" not in job["metadata"]
    assert list(sftp_server.root.iterdir()) == []


def test_job_can_never_finish(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.options.never_finish = True
    job_id = create(api, cordial, body_for(sftp_server))
    cordial.jobs[job_id].written.wait(5)
    statuses = {api.get(f"{cordial.url}/jobs/{job_id}").json()["status"] for _ in range(20)}
    assert statuses == {"Pending", "Processing"}


def test_options_are_copied_when_the_job_is_created(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    job_id = create(api, cordial, body_for(sftp_server))
    cordial.options.fail_jobs = True
    job, _ = wait_job(api, cordial, job_id)
    assert job["status"] == "Done"


def test_done_waits_for_the_files_to_be_written(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.options.pending_polls = 0
    cordial.options.processing_polls = 0
    cordial.options.write_delay_seconds = 0.3
    job_id = create(api, cordial, body_for(sftp_server))
    first = api.get(f"{cordial.url}/jobs/{job_id}").json()
    assert first["status"] == "Processing"
    job, _ = wait_job(api, cordial, job_id)
    assert job["status"] == "Done"
    assert (sftp_server.root / job["metadata"]["fileName"]).exists()


def test_wrong_destination_password_fails_the_job(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    body = body_for(sftp_server)
    body["destination"]["password"] = "not-the-password"
    job, _ = wait_job(api, cordial, create(api, cordial, body))
    assert job["status"] == "Failed"
    assert "authentication failed" in job["result"]["message"]
    assert list(sftp_server.root.iterdir()) == []


def test_saved_key_destination(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    body = body_for(sftp_server)
    del body["destination"]["password"]
    body["destination"]["savedKey"] = "sandbox-sftp-key"
    assert wait_job(api, cordial, create(api, cordial, body))[0]["status"] == "Done"
    body["destination"]["savedKey"] = "unknown-key"
    body["name"] = "test-export-2"
    assert wait_job(api, cordial, create(api, cordial, body))[0]["status"] == "Failed"


def test_destination_elsewhere_fails_the_job(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    body = body_for(sftp_server)
    body["destination"]["path"] = "/nonexistent/folder"
    job, _ = wait_job(api, cordial, create(api, cordial, body))
    assert job["status"] == "Failed"
    assert "/nonexistent/folder" in job["result"]["message"]
    body["destination"]["port"] = 1
    job, _ = wait_job(api, cordial, create(api, cordial, body))
    assert "could not connect" in job["result"]["message"]


def test_subfolder_destination(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.add_events([ev(1)])
    (sftp_server.root / "sub").mkdir()
    body = body_for(sftp_server)
    body["destination"]["path"] = sftp_server.sftp_path + "/sub/"
    job, _ = wait_job(api, cordial, create(api, cordial, body))
    assert job["status"] == "Done"
    assert len(read_lines(sftp_server.root / "sub" / "test-export-1.json")) == 1


# -- files ----------------------------------------------------------------------------------------


def test_json_lines_export_holds_the_selected_events_in_time_order(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    events = [ev(s, subject="Ünïcödé ✓ 🎉") for s in (30, 10, 20)]
    cordial.add_events(events)
    job = run_export(api, cordial, sftp_server)
    assert job["metadata"]["fileName"] == "test-export-1.json"
    lines = read_lines(sftp_server.root / "test-export-1.json")
    assert [orjson.loads(line) for line in lines] == sorted(events, key=lambda e: e["time"])
    assert sorted(p.name for p in sftp_server.root.iterdir()) == ["test-export-1.json"]


def test_json_array_export(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    events = [ev(s) for s in range(5)]
    cordial.add_events(events)
    cordial.options.json_array = True
    job = run_export(api, cordial, sftp_server)
    data = json.loads((sftp_server.root / job["metadata"]["fileName"]).read_text())
    assert data == events


def test_empty_exports_are_valid_files(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    assert run_export(api, cordial, sftp_server)["totalItems"] == 0
    assert (sftp_server.root / "test-export-1.json").read_bytes() == b""
    cordial.options.json_array = True
    run_export(api, cordial, sftp_server, name="array-empty")
    assert json.loads((sftp_server.root / "array-empty.json").read_text()) == []


@pytest.mark.parametrize("header", [True, False])
def test_csv_export_with_and_without_header(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer, header: bool
) -> None:
    events = [
        ev(1, "open", first=True, d={"type": "mobile", "robot": False}, mTags=["a", "b"]),
        ev(2, "click", first=0, subject='Quote " and, comma', extra_field="x"),
        ev(3, "purchase"),
    ]
    cordial.add_events(events)
    job = run_export(api, cordial, sftp_server, exportType="csv", showHeader=header)
    assert job["metadata"]["fileName"] == "test-export-1.csv"
    rows = list(csv.reader(io.StringIO((sftp_server.root / "test-export-1.csv").read_text())))
    columns = [*CSV_COLUMNS, "extra_field"]
    if header:
        assert rows[0] == columns
        rows = rows[1:]
    assert len(rows) == 3
    by_name = [dict(zip(columns, row, strict=True)) for row in rows]
    assert by_name[0]["first"] == "true"
    assert json.loads(by_name[0]["d"]) == {"type": "mobile", "robot": False}
    assert json.loads(by_name[0]["mTags"]) == ["a", "b"]
    assert by_name[1]["first"] == "0"
    assert by_name[1]["subject"] == 'Quote " and, comma'
    assert by_name[1]["extra_field"] == "x"
    assert by_name[2]["first"] == ""  # missing is empty
    assert by_name[2]["time"] == "2020-06-01T00:00:03+0000"


@pytest.mark.parametrize("export_type", ["json", "csv"])
def test_gzip_and_split_files(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer, export_type: str
) -> None:
    cordial.add_events([ev(s) for s in range(25)])
    job = run_export(
        api,
        cordial,
        sftp_server,
        exportType=export_type,
        compress=True,
        limitRecordsPerFile=10,
        showHeader=True,
    )
    names = [f"test-export-1-{n}.{export_type}.gz" for n in (1, 2, 3)]
    assert sorted(p.name for p in sftp_server.root.iterdir()) == names
    assert job["metadata"]["fileName"] == names[0]
    assert job["totalItems"] == 25
    sizes = []
    for name in names:
        with gzip.open(sftp_server.root / name, "rt") as handle:
            lines = handle.read().splitlines()
        sizes.append(len(lines) - (1 if export_type == "csv" else 0))
    assert sizes == [10, 10, 5]


@pytest.mark.parametrize("level", [0, 1, 3, 6])
def test_gzip_level_changes_the_compression_only(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer, level: int
) -> None:
    # Levels 1-3 are ISA-L's where it is installed, the others zlib's: one gzip member that
    # names the file and holds the plain export's bytes either way.
    cordial.add_events([ev(s, subject=f"subject {s % 7}") for s in range(300)])
    cordial.options.gzip_level = level
    run_export(api, cordial, sftp_server, name="plain")
    run_export(api, cordial, sftp_server, name="packed", compress=True)
    plain = (sftp_server.root / "plain.json").read_bytes()
    packed = (sftp_server.root / "packed.json.gz").read_bytes()
    assert packed[3] & 0x08  # FNAME flag, then the name
    assert packed[10 : packed.index(b"\0", 10)] == b"packed.json"
    inflater = zlib.decompressobj(wbits=31)
    assert inflater.decompress(packed) == plain
    assert inflater.eof
    assert inflater.unused_data == b""
    # zlib's level 0 stores (the file grows); every other level compresses.
    assert (len(packed) > len(plain)) == (level == 0)


def test_split_with_fewer_records_than_the_limit_still_numbers_the_file(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.add_events([ev(1)])
    job = run_export(api, cordial, sftp_server, limitRecordsPerFile=100)
    assert job["metadata"]["fileName"] == "test-export-1-1.json"


def test_file_name_can_be_omitted(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.options.omit_file_name = True
    job = run_export(api, cordial, sftp_server)
    assert job["status"] == "Done"
    assert "fileName" not in job["metadata"]
    assert (sftp_server.root / "test-export-1.json").exists()


def test_truncated_gzip(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.add_events([ev(s) for s in range(200)])
    cordial.options.truncate_gzip = True
    job = run_export(api, cordial, sftp_server, compress=True)
    with (
        pytest.raises((EOFError, zlib.error, gzip.BadGzipFile)),
        gzip.open(sftp_server.root / job["metadata"]["fileName"]) as handle,
    ):
        handle.read()


def test_corrupt_line_in_json_and_csv(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.add_events([ev(s) for s in range(6)])
    cordial.options.corrupt_line = 5
    run_export(api, cordial, sftp_server, limitRecordsPerFile=4)
    second = read_lines(sftp_server.root / "test-export-1-2.json")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(second[0])
    orjson.loads(second[1])
    assert all(orjson.loads(line) for line in read_lines(sftp_server.root / "test-export-1-1.json"))
    run_export(api, cordial, sftp_server, name="csv-export", exportType="csv")
    rows = list(csv.reader(io.StringIO((sftp_server.root / "csv-export.csv").read_text())))
    times = [row[CSV_COLUMNS.index("time")] for row in rows]
    assert times[4] == "not-a-time"
    assert times.count("not-a-time") == 1


def test_events_without_a_usable_time_go_into_every_export(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    bad = [{"_id": "a" * 24, "action": "open"}, {"_id": "b" * 24, "time": "soon", "action": "open"}]
    cordial.add_events([ev(1), *bad])
    run_export(api, cordial, sftp_server)
    lines = [orjson.loads(x) for x in read_lines(sftp_server.root / "test-export-1.json")]
    assert lines[1:] == bad


# -- selection -------------------------------------------------------------------------------------


def test_timeframe_includes_both_ends(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.add_events([ev(s, _id=f"{s:024x}") for s in (99, 100, 150, 200, 201)])
    run_export(
        api,
        cordial,
        sftp_server,
        selected_timeframe_start=(T0 + timedelta(seconds=100)).isoformat(),
        selected_timeframe_end=(T0 + timedelta(seconds=200)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    )
    ids = [orjson.loads(x)["_id"] for x in read_lines(sftp_server.root / "test-export-1.json")]
    assert ids == [f"{s:024x}" for s in (100, 150, 200)]


def test_timeframe_selection_with_unsorted_events(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.add_events([ev(s, _id=f"{s:024x}") for s in (500, 5, 300, 7, 4000)])
    job = run_export(
        api,
        cordial,
        sftp_server,
        selected_timeframe_start="2020-06-01T00:00:05+00:00",
        selected_timeframe_end="2020-06-01T00:05:00",  # naive: UTC
    )
    ids = [orjson.loads(x)["_id"] for x in read_lines(sftp_server.root / "test-export-1.json")]
    assert ids == [f"{s:024x}" for s in (5, 7, 300)]
    assert job["totalItems"] == 3


def test_action_selection_custom_means_every_non_reserved_action(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    actions = [*RESERVED_ACTIONS, "purchase", "page-view", "my-event"]
    cordial.add_events([ev(i, action, _id=f"{i:024x}") for i, action in enumerate(actions)])

    def exported(name: str, **selection: Any) -> Counter[str]:
        run_export(api, cordial, sftp_server, name=name, **selection)
        return Counter(
            orjson.loads(x)["action"] for x in read_lines(sftp_server.root / f"{name}.json")
        )

    assert set(exported("custom-only", selected_action_names=["custom"])) == {
        "purchase",
        "page-view",
        "my-event",
    }
    assert set(exported("mixed", selected_action_names=["open", "custom", "pageview"])) == {
        "open",
        "pageview",
        "purchase",
        "page-view",
        "my-event",
    }
    assert set(exported("single", selected_action_name="message-stopped")) == {"message-stopped"}
    assert set(exported("by-name", selected_action_names=["purchase"])) == {"purchase"}
    assert set(exported("all")) == set(actions)


# -- rate limit, faults, connections ------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(
    api: requests.Session, cordial: CordialStandIn
) -> None:
    cordial.options.rate_limit_per_second = 3
    statuses = [api.get(f"{cordial.url}/health") for _ in range(5)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
    limited = statuses[3]
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["X-Rate-Limit-Limit"] == "3"
    assert limited.headers["X-Rate-Limit-Remaining"] == "0"
    assert limited.json()["errorKey"] == "RATE_LIMIT_EXCEEDED"
    time.sleep(1.05)
    assert api.get(f"{cordial.url}/health").status_code == 200


def test_injected_faults(api: requests.Session, cordial: CordialStandIn) -> None:
    url = f"{cordial.url}/health"
    cordial.inject("/v2/health", Fault(status=429, retry_after=2), Fault(status=500))
    first = api.get(url)
    assert first.status_code == 429
    assert first.headers["Retry-After"] == "2"
    assert first.json()["error"] is True
    assert api.get(url).status_code == 500
    assert api.get(url).status_code == 200
    cordial.inject("/v2/health", Fault(delay_seconds=0.3))
    started = time.monotonic()
    assert api.get(url).status_code == 200
    assert time.monotonic() - started >= 0.3
    cordial.inject("/v2/health", Fault(reset=True))
    with pytest.raises(requests.ConnectionError):
        api.get(url)
    assert api.get(url).status_code == 200


def test_fault_prefix_only_matches_its_path(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.inject("/v2/jobs", Fault(status=503))
    job_id = create(api, cordial, body_for(sftp_server))
    assert api.get(f"{cordial.url}/jobs/{job_id}").status_code == 503
    assert api.get(f"{cordial.url}/jobs/{job_id}").status_code == 200


def test_keep_alive_and_clean_stop_with_an_idle_connection(sftp_server: SftpServer) -> None:
    stand_in = CordialStandIn(
        sftp_root=sftp_server.root, sftp_path=sftp_server.sftp_path, events=[]
    )
    stand_in.start()
    conn = http.client.HTTPConnection("127.0.0.1", stand_in.port, timeout=5)
    for _ in range(3):  # three requests on one TCP connection
        conn.request("GET", "/v2/health")
        response = conn.getresponse()
        response.read()
        assert response.status == 401
        assert response.getheader("Connection") != "close"
    threads_before = threading.active_count()
    started = time.monotonic()
    stand_in.stop()  # the idle keep-alive connection must not block it
    assert time.monotonic() - started < 2
    assert threading.active_count() < threads_before
    conn.close()


# -- events and admin ------------------------------------------------------------------------------


def test_default_events_and_add_events(cordial: CordialStandIn) -> None:
    assert len(cordial.events) == 500
    times = [e["time"] for e in cordial.events]
    assert min(times) >= cordial.default_start.strftime("%Y-%m-%dT%H:%M:%S+0000")
    assert max(times) <= cordial.default_end.strftime("%Y-%m-%dT%H:%M:%S+0000")
    assert cordial.add_events([ev(1), ev(2)]) == 2
    assert cordial.events[-1] == ev(2)
    assert len(cordial.events[:3]) == 3


def test_add_generated_falls_after_everything_exported(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    end = datetime.now(UTC) - timedelta(seconds=30)
    body = body_for(
        sftp_server,
        selected_timeframe_start=cordial.default_start.isoformat(),
        selected_timeframe_end=end.isoformat(),
    )
    create(api, cordial, body)
    before = len(cordial.events)
    start, stop = cordial.add_generated(50)
    assert start > end
    new = cordial.events[before:]
    assert len(new) == 50
    assert all(start <= datetime.fromisoformat(e["time"]) <= stop for e in new)
    assert stop <= datetime.now(UTC)


def test_admin_endpoints(anon: requests.Session, cordial: CordialStandIn) -> None:
    admin = f"{cordial.base_url}/_sandbox"
    summary = anon.get(f"{admin}/summary").json()
    assert summary["events"] == 500
    assert summary["options"]["pending_polls"] == 1
    options = anon.post(f"{admin}/options", json={"pending_polls": 4, "fail_jobs": True})
    assert options.json()["pending_polls"] == 4
    assert cordial.options.fail_jobs is True
    assert anon.post(f"{admin}/options", json={"nope": 1}).status_code == 400
    added = anon.post(f"{admin}/events", json=[ev(1), ev(2)]).json()
    assert added == {"added": 2}
    generated = anon.post(f"{admin}/events", json={"generate": 10, "seed": 3}).json()
    assert generated["added"] == 10
    assert len(cordial.events) == 512
    faults = {"path_prefix": "/v2/health", "faults": [{"status": 500}]}
    assert anon.post(f"{admin}/faults", json=faults).json() == {"pending_faults": 1}
    assert anon.get(f"{cordial.url}/health", auth=(cordial.api_key, "")).status_code == 500
    anon.post(f"{admin}/faults", json=faults)
    assert anon.delete(f"{admin}/faults").json() == {"pending_faults": 0}
    assert anon.get(f"{cordial.url}/health", auth=(cordial.api_key, "")).status_code == 200
    assert anon.get(f"{admin}/nothing").status_code == 404


def test_large_export_streams_quickly(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    start = datetime(2021, 1, 1, tzinfo=UTC)
    cordial.add_events(
        generate_events(50_000, seed=11, start=start, end=start + timedelta(hours=6))
    )
    started = time.monotonic()
    job = run_export(
        api,
        cordial,
        sftp_server,
        compress=True,
        selected_timeframe_start=start.isoformat(),
        selected_timeframe_end=(start + timedelta(hours=6)).isoformat(),
    )
    elapsed = time.monotonic() - started
    assert job["totalItems"] == 50_000
    with gzip.open(sftp_server.root / job["metadata"]["fileName"]) as handle:
        assert sum(1 for _ in handle) == 50_000
    assert elapsed < 10, f"export of 50,000 events took {elapsed:.1f}s"
