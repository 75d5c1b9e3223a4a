"""The Cordial stand-in's timing: job work time, running-job limit, create rate limit, late jobs."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from test_sandbox_cordial import body_for, create, ev, read_lines, wait_job

from sandbox.cordial import RECORDING_DELAY_KEY, CordialOptions, CordialStandIn
from sandbox.sftp import SftpServer


def poll_until_done(
    api: requests.Session, cordial: CordialStandIn, job_id: str, timeout: float = 10
) -> list[tuple[float, dict[str, Any]]]:
    """Poll every 20 ms until Done/Failed; returns (seconds since the first poll, job) per poll."""
    started = time.monotonic()
    seen = []
    while time.monotonic() - started < timeout:
        job = api.get(f"{cordial.url}/jobs/{job_id}").json()
        seen.append((time.monotonic() - started, job))
        if job["status"] in ("Done", "Failed"):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} not done after {timeout}s: {seen[-1][1]['status']}")


def test_a_job_takes_base_plus_per_event_time(
    cordial_api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.add_events([ev(i) for i in range(30)])
    cordial.options.job_base_seconds = 0.3
    cordial.options.job_seconds_per_event = 0.01  # 30 events: 0.6 s in all
    created = time.monotonic()
    job_id = create(cordial_api, cordial, body_for(sftp_server))
    polls = poll_until_done(cordial_api, cordial, job_id)
    assert time.monotonic() - created >= 0.6
    statuses = [job["status"] for _, job in polls]
    assert statuses[0] == "Pending"
    assert statuses[-1] == "Done"
    assert set(statuses[1:-1]) == {"Processing"}
    assert len(statuses) > 5  # Processing while the work time lasts, not for a fixed poll count
    progress = [job["completedItems"] for _, job in polls]
    assert progress == sorted(progress)
    assert any(0 < p < 30 for p in progress), progress
    assert progress[-1] == 30
    assert all(job["totalItems"] == 30 for _, job in polls)
    assert polls[-1][1]["result"] == {"totalRecords": 30}
    assert all(job["result"] == {} for _, job in polls[:-1])
    assert len(read_lines(sftp_server.root / polls[-1][1]["metadata"]["fileName"])) == 30


def test_files_appear_when_the_work_is_done(
    cordial_api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.add_events([ev(1)])
    cordial.options.job_base_seconds = 0.5
    job_id = create(cordial_api, cordial, body_for(sftp_server))
    assert cordial_api.get(f"{cordial.url}/jobs/{job_id}").json()["status"] == "Pending"
    assert list(sftp_server.root.iterdir()) == []
    job, _ = wait_job(cordial_api, cordial, job_id)
    assert job["status"] == "Done"
    assert (sftp_server.root / "test-export-1.json").exists()


def test_timing_as_constructor_options(sftp_server: SftpServer) -> None:
    options = CordialOptions(job_base_seconds=0.4, pending_polls=0, processing_polls=0)
    with CordialStandIn(
        sftp_root=sftp_server.root,
        sftp_path=sftp_server.sftp_path,
        events=[ev(1)],
        sftp=sftp_server,
        options=options,
    ) as stand_in:
        assert stand_in.options is options
        session = requests.Session()
        session.auth = (stand_in.api_key, "")
        started = time.monotonic()
        job_id = create(session, stand_in, body_for(sftp_server))
        assert session.get(f"{stand_in.url}/jobs/{job_id}").json()["status"] == "Processing"
        job, _ = wait_job(session, stand_in, job_id, max_polls=1000)
        assert job["status"] == "Done"
        assert time.monotonic() - started >= 0.4
    for path in sftp_server.root.iterdir():
        path.unlink()


def test_jobs_beyond_the_running_limit_are_throttled_until_others_finish(
    cordial_api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.add_events([ev(i) for i in range(10)])
    cordial.options.max_running_jobs = 2
    cordial.options.job_base_seconds = 0.4
    bodies = [body_for(sftp_server, name=f"throttled-{n}") for n in range(3)]
    ids = [create(cordial_api, cordial, body) for body in bodies]
    first = [cordial_api.get(f"{cordial.url}/jobs/{i}").json() for i in ids]
    assert [j["status"] for j in first] == ["Pending", "Pending", "Throttled"]
    assert first[2]["completedItems"] == 0
    assert cordial_api.get(f"{cordial.base_url}/_sandbox/summary").json()["running_jobs"] == 2
    done_at: dict[str, float] = {}
    running: list[int] = []
    started = time.monotonic()
    while len(done_at) < 3 and time.monotonic() - started < 10:
        for job_id in ids:
            if cordial_api.get(f"{cordial.url}/jobs/{job_id}").json()["status"] == "Done":
                done_at.setdefault(job_id, time.monotonic() - started)
        summary = cordial_api.get(f"{cordial.base_url}/_sandbox/summary").json()
        running.append(summary["running_jobs"])
        time.sleep(0.02)
    assert len(done_at) == 3
    assert max(running) <= 2
    # The third job got a slot only when one of the first two had worked its 0.4 s.
    jobs = [cordial.jobs[job_id] for job_id in ids]
    assert jobs[2].admitted_at is not None
    assert jobs[0].admitted_at is not None
    assert jobs[2].admitted_at - jobs[0].admitted_at >= 0.4
    assert done_at[ids[2]] - min(done_at[ids[0]], done_at[ids[1]]) >= 0.3


def test_raising_the_running_limit_at_runtime_admits_waiting_jobs(
    cordial_api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    admin = f"{cordial.base_url}/_sandbox"
    assert cordial_api.post(f"{admin}/options", json={"max_running_jobs": 0}).status_code == 200
    job_id = create(cordial_api, cordial, body_for(sftp_server))
    time.sleep(0.2)
    assert {cordial_api.get(f"{cordial.url}/jobs/{job_id}").json()["status"] for _ in range(3)} == {
        "Throttled"
    }
    assert cordial_api.post(f"{admin}/options", json={"max_running_jobs": None}).status_code == 200
    _, statuses = wait_job(cordial_api, cordial, job_id)
    assert statuses == ["Pending", "Processing", "Done"]


def test_create_rate_limit_answers_429_with_rate_limit_headers(
    cordial_api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    admin = f"{cordial.base_url}/_sandbox"
    limits = {"create_rate_limit": 2, "create_rate_window_seconds": 1}
    assert cordial_api.post(f"{admin}/options", json=limits).status_code == 200
    url = f"{cordial.url}/contactactivityexport"
    bodies = [body_for(sftp_server, name=f"rate-{n}") for n in range(3)]
    answers = [cordial_api.post(url, json=body) for body in bodies]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert [a.headers["X-Rate-Limit-Remaining"] for a in answers] == ["1", "0", "0"]
    assert all(a.headers["X-Rate-Limit-Limit"] == "2" for a in answers)
    limited = answers[2]
    assert limited.headers["Retry-After"] == "1"
    assert int(limited.headers["X-Rate-Limit-Reset"]) >= int(time.time())
    assert limited.json() == {
        "error": True,
        "errorKey": "RATE_LIMIT_EXCEEDED",
        "message": "Too many requests: rate limit exceeded",
    }
    assert [b["name"] for b in cordial.exports] == ["rate-0", "rate-1"]
    # Only creation is limited: polls and health go on.
    job_id = answers[0].json()["jobId"]
    assert all(cordial_api.get(f"{cordial.url}/jobs/{job_id}").status_code == 200 for _ in range(5))
    assert cordial_api.get(f"{cordial.url}/health").status_code == 200
    time.sleep(1.05)
    assert cordial_api.post(url, json=body_for(sftp_server, name="rate-3")).status_code == 200


def test_the_create_rate_window_defaults_to_a_minute(
    cordial_api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    assert cordial.options.create_rate_window_seconds == 60
    cordial.options.create_rate_limit = 1
    url = f"{cordial.url}/contactactivityexport"
    assert cordial_api.post(url, json=body_for(sftp_server, name="minute-0")).status_code == 200
    limited = cordial_api.post(url, json=body_for(sftp_server, name="minute-1"))
    assert limited.status_code == 429
    assert 58 <= int(limited.headers["Retry-After"]) <= 60


def near_now(seconds_ago: int, _id: str, **extra: Any) -> dict[str, Any]:
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=seconds_ago)
    return {"_id": _id, "action": "open", "time": when.strftime("%Y-%m-%dT%H:%M:%S+0000"), **extra}


def exported_ids(
    api: requests.Session, cordial: CordialStandIn, sftp: SftpServer, name: str
) -> list[str]:
    now = datetime.now(UTC)
    body = body_for(
        sftp,
        name=name,
        selected_timeframe_start=(now - timedelta(minutes=5)).isoformat(),
        selected_timeframe_end=now.isoformat(),
    )
    job, _ = wait_job(api, cordial, create(api, cordial, body))
    lines = read_lines(sftp.root / job["metadata"]["fileName"])
    assert job["totalItems"] == len(lines)
    return [line.split(b'"_id":"')[1].split(b'"')[0].decode() for line in lines]


def test_late_events_exist_only_for_exports_created_after_time_plus_delay(
    cordial_api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    on_time = near_now(20, "a" * 24)
    late = near_now(20, "b" * 24, **{RECORDING_DELAY_KEY: 21.5})  # recorded 1.5 s from now
    cordial.add_events([on_time, late])
    assert RECORDING_DELAY_KEY not in cordial.events[-1]
    assert exported_ids(cordial_api, cordial, sftp_server, "before") == ["a" * 24]
    time.sleep(2)
    assert exported_ids(cordial_api, cordial, sftp_server, "after") == ["a" * 24, "b" * 24]
    assert RECORDING_DELAY_KEY.encode() not in (sftp_server.root / "after.json").read_bytes()


def test_late_events_over_the_admin_endpoint(
    cordial_api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    admin = f"{cordial.base_url}/_sandbox/events"
    late = near_now(5, "c" * 24, **{RECORDING_DELAY_KEY: 3600})
    assert cordial_api.post(admin, json=[late]).json() == {"added": 1}
    assert exported_ids(cordial_api, cordial, sftp_server, "admin-late") == []
    bad = near_now(5, "d" * 24, **{RECORDING_DELAY_KEY: -1})
    refused = cordial_api.post(admin, json=[bad])
    assert refused.status_code == 400
    assert RECORDING_DELAY_KEY in refused.json()["error"]
    with pytest.raises(ValueError, match=RECORDING_DELAY_KEY):
        cordial.add_events([near_now(5, "e" * 24, **{RECORDING_DELAY_KEY: "soon"})])


def test_timing_options_are_checked(cordial_api: requests.Session, cordial: CordialStandIn) -> None:
    admin = f"{cordial.base_url}/_sandbox/options"
    for bad in ({"job_base_seconds": -1}, {"max_running_jobs": "two"}, {"create_rate_limit": True}):
        response = cordial_api.post(admin, json=bad)
        assert response.status_code == 400, bad
        assert next(iter(bad)) in response.json()["error"]
    summary = cordial_api.get(f"{cordial.base_url}/_sandbox/summary").json()["options"]
    assert summary["job_base_seconds"] == 0
    assert summary["max_running_jobs"] is None
