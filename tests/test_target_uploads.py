"""Concurrent uploads against the Lytics stand-in: overlap, exactly-once, STATE, 429, summaries."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

import pytest
import requests
from target_lytics.checkpoints import StateCheckpoints
from target_lytics.client import AdaptiveLimit
from target_lytics.errors import LyticsError
from target_lytics.target import TargetLytics
from test_target_lytics import (
    COLLECT,
    ORDERS_SCHEMA,
    _cli,
    activity_lines,
    config_for,
    cordial_records,
    record_message,
    run_target,
    schema_message,
    state_message,
    uploaded_ids,
)

from sandbox.httpbase import Fault
from sandbox.lytics import LyticsStandIn

#: About 15 events per body: many bodies from few records.
SMALL_BODIES = {"max_request_bytes": 3_000}


class RequestClock:
    """Wraps ``requests.Session.post`` to note when each request started and ended."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.spans: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        original = requests.Session.post

        def timed_post(session: requests.Session, *args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return original(session, *args, **kwargs)
            finally:
                with self._lock:
                    self.spans.append((started, time.monotonic()))

        monkeypatch.setattr(requests.Session, "post", timed_post)

    def most_at_once(self) -> int:
        """The largest number of requests that were open at the same moment."""
        events = sorted(
            [(start, 1) for start, _ in self.spans] + [(end, -1) for _, end in self.spans]
        )
        open_now = most = 0
        for _, change in events:
            open_now += change
            most = max(most, open_now)
        return most


def upto(states: list[dict]) -> list[int]:
    return [s["bookmarks"]["activity"]["upto"] for s in states]


def metric_counts(caplog: pytest.LogCaptureFixture) -> dict[tuple[str, str], int]:
    """The target's reconciliation METRIC lines: (stream, count) -> value."""
    found = {}
    for record in caplog.records:
        message = record.getMessage()
        if not message.startswith("METRIC: "):
            continue
        point = json.loads(message.removeprefix("METRIC: "))
        tags = point["tags"]
        if point["metric"] == "record_count" and "count" in tags and "lytics_stream" in tags:
            found[(tags["stream"], tags["count"])] = point["value"]
    return found


# -- concurrency ----------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
def test_requests_overlap_up_to_max_concurrent_uploads(lytics, monkeypatch, concurrency):
    """Lytics answers slowly: with 4 allowed, 4 requests are open at once; with 1, never two."""
    clock = RequestClock(monkeypatch)
    lytics.inject(COLLECT, *[Fault(delay_seconds=0.3)] * 8)
    records = cordial_records(150)
    config = config_for(lytics, max_concurrent_uploads=concurrency, **SMALL_BODIES)
    _, error = run_target(config, activity_lines(records))
    assert error is None
    assert len(clock.spans) >= 8
    assert clock.most_at_once() == concurrency
    assert sorted(uploaded_ids(lytics)) == sorted(r["_id"] for r in records)


def test_exactly_once_with_concurrent_uploads(lytics):
    """Many bodies, answered out of order: every record arrives once, STATE ends at the last."""
    records = cordial_records(3000)
    lytics.inject(COLLECT, *[Fault(delay_seconds=d) for d in (0.2, 0.05, 0.15, 0.01, 0.1)])
    config = config_for(lytics, max_concurrent_uploads=4, max_request_bytes=20_000)
    states, error = run_target(config, activity_lines(records, state_every=250))
    assert error is None
    ids = uploaded_ids(lytics)
    assert len(ids) == len(set(ids)) == 3000
    assert set(ids) == {r["_id"] for r in records}
    assert len(lytics.requests) > 20
    assert upto(states)[-1] == 3000
    assert upto(states) == sorted(set(upto(states)))


def test_body_refused_in_the_middle_while_later_ones_succeed(lytics, caplog):
    """The 2nd request is refused (slowly); later bodies succeed; no STATE passes its records."""
    caplog.set_level(logging.INFO)
    records = cordial_records(400)
    lytics.inject(COLLECT, Fault(delay_seconds=0.01), Fault(status=400, delay_seconds=0.8))
    config = config_for(lytics, max_concurrent_uploads=4, **SMALL_BODIES)
    states, error = run_target(config, activity_lines(records, state_every=10))
    assert isinstance(error, LyticsError)
    assert "HTTP 400" in str(error)
    stored = set(uploaded_ids(lytics))
    index = {r["_id"]: i for i, r in enumerate(records)}
    first_missing = min(i for i, r in enumerate(records) if r["_id"] not in stored)
    later_stored = [index[i] for i in stored if index[i] > first_missing]
    assert later_stored, "bodies after the refused one were accepted while it was in flight"
    assert all(n <= first_missing for n in upto(states))
    assert "the run failed" in caplog.text


def test_refused_body_exits_non_zero_from_the_command_line(tmp_path):
    records = cordial_records(300)
    with LyticsStandIn() as lytics:
        lytics.inject(COLLECT, Fault(delay_seconds=0.01), Fault(status=400, delay_seconds=0.5))
        stdin = "".join(activity_lines(records, state_every=10))
        result = _cli([], config_for(lytics, **SMALL_BODIES), tmp_path, stdin)
        stored = set(uploaded_ids(lytics))
    assert result.returncode == 1
    assert "HTTP 400" in result.stderr
    assert "Traceback" not in result.stderr
    first_missing = min(i for i, r in enumerate(records) if r["_id"] not in stored)
    written = [
        json.loads(line)["bookmarks"]["activity"]["upto"] for line in result.stdout.splitlines()
    ]
    assert all(n <= first_missing for n in written)


def test_state_is_written_while_later_uploads_are_in_flight(lytics, monkeypatch):
    """The 8th request is slow: STATEs covered by the first bodies are written before it ends."""
    in_flight_at_write: list[int] = []
    original_write = TargetLytics.write_state

    def recording_write(self, state):
        in_flight_at_write.append(self.progress.total().in_flight)
        original_write(self, state)

    monkeypatch.setattr(TargetLytics, "write_state", recording_write)
    lytics.inject(COLLECT, *[Fault(delay_seconds=0.01)] * 7, Fault(delay_seconds=1.5))
    records = cordial_records(200)
    config = config_for(lytics, max_concurrent_uploads=4, **SMALL_BODIES)
    started = time.monotonic()
    states, error = run_target(config, activity_lines(records, state_every=10))
    assert error is None
    assert time.monotonic() - started >= 1.5
    assert upto(states)[0] < 200
    assert in_flight_at_write[0] >= 1, "the first STATE waited for every upload"
    assert upto(states)[-1] == 200


def test_429_with_concurrency_lowers_the_limit_and_delivers_once(lytics, caplog):
    caplog.set_level(logging.INFO)
    records = cordial_records(600)
    lytics.inject(COLLECT, *[Fault(status=429, retry_after=0.2)] * 6)
    config = config_for(lytics, max_concurrent_uploads=4, **SMALL_BODIES)
    states, error = run_target(config, activity_lines(records, state_every=50))
    assert error is None
    ids = uploaded_ids(lytics)
    assert sorted(ids) == sorted(r["_id"] for r in records)
    assert upto(states)[-1] == 600
    assert "Lytics is rate limiting: at most 2 upload requests in flight" in caplog.text
    summary = next(r.getMessage() for r in caplog.records if "upload summary" in r.getMessage())
    assert " 0 retried" not in summary


def test_adaptive_limit_halves_after_429_and_grows_back(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    limit = AdaptiveLimit(8)
    limit.throttled()
    assert limit.limit == 4
    limit.throttled()  # the same burst: within the cooldown
    assert limit.limit == 4
    for _ in range(10):
        limit.succeeded()
    assert limit.limit == 4  # no growth during the cooldown
    now[0] += AdaptiveLimit.COOLDOWN_SECONDS
    for _ in range(4):
        limit.succeeded()
    assert limit.limit == 5
    limit.throttled()
    assert limit.limit == 2
    limit.throttled()
    now[0] += AdaptiveLimit.COOLDOWN_SECONDS
    limit.throttled()
    assert limit.limit == 1  # never below one


def test_state_checkpoints_wait_for_out_of_order_bodies():
    written: list[dict] = []
    checkpoints = StateCheckpoints(written.append)
    ledger = checkpoints.new_ledger()
    ledger.received = 10
    checkpoints.add({"n": 10})
    ledger.received = 20
    checkpoints.add({"n": 20})
    ledger.received = 30
    checkpoints.add({"n": 30})
    ledger.body_accepted(15, 30)  # a later body first: nothing may be written
    assert written == []
    ledger.body_accepted(0, 15)
    assert written == [{"n": 30}]  # the newest ready STATE only
    checkpoints.add({"n": 30})
    assert written == [{"n": 30}]  # not written twice


def test_state_checkpoints_keep_the_interval_and_flush_the_held_one():
    written: list[dict] = []
    checkpoints = StateCheckpoints(written.append, min_interval_seconds=0.3)
    ledger = checkpoints.new_ledger()
    for n in (10, 20, 30):
        ledger.received = n
        checkpoints.add({"n": n})
        ledger.body_accepted(n - 10, n)
    # The first is written at once; the next two came within the interval: only the newest waits.
    assert written == [{"n": 10}]
    time.sleep(0.8)
    assert written == [{"n": 10}, {"n": 30}]  # written by the timer, about 0.3 s after the first
    ledger.received = 40
    checkpoints.add({"n": 40})
    ledger.body_accepted(30, 40)
    ledger.received = 50
    checkpoints.add({"n": 50})
    ledger.body_accepted(40, 50)
    assert written[-1] == {"n": 40}  # the interval had passed: at once; 50 waits
    checkpoints.flush()  # the input ended: no waiting
    assert written == [{"n": 10}, {"n": 30}, {"n": 40}, {"n": 50}]
    time.sleep(0.4)
    assert len(written) == 4  # the cancelled timer wrote nothing more


# -- errors that say where, and the quiet-day check ----------------------------------------------


def test_connection_error_names_the_host_and_api_url():
    with LyticsStandIn() as lytics:
        config = config_for(lytics, max_retries=1)  # the port is closed once the stand-in stops
    host = lytics.url.removeprefix("http://")
    _, error = run_target(config, activity_lines(cordial_records(5)))
    assert isinstance(error, LyticsError)
    assert "connection error" in str(error)
    assert f"from {host} (api_url setting: {lytics.url})" in str(error)


def test_timeout_names_the_host_and_api_url():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes connections, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        config = {
            "api_token": "t",
            "api_url": url,
            "max_retries": 0,
            "request_timeout_seconds": 0.3,
        }
        _, error = run_target(config, activity_lines(cordial_records(3)))
    assert isinstance(error, LyticsError)
    assert "timed out after 0.3s" in str(error)
    assert f"api_url setting: {url}" in str(error)


def test_unexpected_status_names_the_host_and_api_url(lytics):
    lytics.inject(COLLECT, *[Fault(status=418)] * 3)
    _, error = run_target(config_for(lytics), activity_lines(cordial_records(3)))
    assert isinstance(error, LyticsError)
    assert "HTTP 418" in str(error)
    assert "unexpected response from Lytics" in str(error)
    assert f"api_url setting: {lytics.url}" in str(error)


def quiet_day_lines() -> list[str]:
    """A run with no new records: the tap sends its SCHEMA and an unchanged bookmark."""
    from tap_cordial_activity.streams import SCHEMA

    return [schema_message("activity", SCHEMA, ["_id"]), state_message({"bookmark": "same"})]


def test_quiet_day_checks_the_endpoint_with_an_empty_dry_run(lytics, caplog):
    caplog.set_level(logging.INFO)
    states, error = run_target(config_for(lytics), quiet_day_lines())
    assert error is None
    assert states == [{"bookmark": "same"}]
    assert [(r.stream, r.body, r.query.get("dryrun")) for r in lytics.requests] == [
        ("cordial_activity", b"[]", "true")
    ]
    assert lytics.total() == 0
    assert "Nothing to upload; Lytics accepted an empty dry-run request" in caplog.text


def test_quiet_day_with_a_wrong_token_fails(lytics):
    _, error = run_target(config_for(lytics, api_token="wrong"), quiet_day_lines())
    assert isinstance(error, LyticsError)
    assert "Nothing to upload, and the check of the Lytics endpoint failed" in str(error)
    assert "HTTP 401" in str(error)
    assert "check api_token" in str(error)


def test_quiet_day_with_a_wrong_api_url_fails_the_command(tmp_path):
    with LyticsStandIn() as lytics:
        config = config_for(lytics, max_retries=0)
    result = _cli([], config, tmp_path, "".join(quiet_day_lines()))
    assert result.returncode == 1
    assert "the check of the Lytics endpoint failed" in result.stderr
    assert f"api_url setting: {lytics.url}" in result.stderr


def test_no_check_when_the_tap_sent_nothing(lytics):
    """A tap that failed before any message (a wrong setting): the run fails anyway."""
    states, error = run_target(config_for(lytics), [])
    assert error is None
    assert states == []
    assert lytics.requests == []


def test_no_check_when_something_was_uploaded(lytics):
    _, error = run_target(config_for(lytics), activity_lines(cordial_records(5)))
    assert error is None
    assert [r.query.get("dryrun") for r in lytics.requests] == [None]


# -- progress and the summary ---------------------------------------------------------------------


def test_progress_lines_while_uploading(lytics, caplog):
    caplog.set_level(logging.INFO)
    lytics.inject(COLLECT, *[Fault(delay_seconds=0.4)] * 4)
    config = config_for(lytics, progress_interval_seconds=0.1, max_concurrent_uploads=2)
    _, error = run_target(config, activity_lines(cordial_records(100)))
    assert error is None
    lines = [r.getMessage() for r in caplog.records if "upload progress" in r.getMessage()]
    assert lines
    assert any(" 1 requests in flight" in line or " 2 requests in flight" in line for line in lines)
    assert all("events/s" in line and "MB sent" in line for line in lines)


def test_summary_and_metric_counts_in_a_normal_run(lytics, caplog):
    caplog.set_level(logging.INFO)
    records = cordial_records(2000)
    _, error = run_target(config_for(lytics, max_request_bytes=100_000), activity_lines(records))
    assert error is None
    requests_made = len(lytics.requests)
    assert requests_made > 1
    assert metric_counts(caplog) == {
        ("activity", "received"): 2000,
        ("activity", "accepted"): 2000,
        ("activity", "rejected"): 0,
        ("activity", "set_aside"): 0,
        ("activity", "requests"): requests_made,
    }
    assert (
        "Stream 'activity' -> Lytics stream 'cordial_activity': 2000 records received, "
        f"2000 events accepted, 0 rejected, {requests_made} requests"
    ) in caplog.text
    summary = next(r.getMessage() for r in caplog.records if "upload summary" in r.getMessage())
    assert f"2,000 events accepted by Lytics in {requests_made} requests" in summary
    assert "0 requests in flight, 0 retried" in summary


def test_summary_and_metric_counts_after_a_lytics_rejection(lytics, caplog):
    caplog.set_level(logging.INFO)
    # Refused for a reason Lytics does not state (one it could state is not sent at all).
    lytics.set_options(refuse_where={"field": "flag", "equals": "refused"})
    lines = [
        schema_message("orders", ORDERS_SCHEMA),
        record_message("orders", {"id": 1, "flag": "refused"}),
        record_message("orders", {"id": 2}),
        record_message("orders", {"id": 3}),
        state_message({"s": 1}),
    ]
    states, error = run_target(config_for(lytics), lines)
    assert isinstance(error, LyticsError)
    assert states == []
    assert metric_counts(caplog) == {
        ("orders", "received"): 3,
        ("orders", "accepted"): 2,
        ("orders", "rejected"): 1,
        ("orders", "set_aside"): 0,
        ("orders", "requests"): 1,
    }
    summary = next(r.getMessage() for r in caplog.records if "upload summary" in r.getMessage())
    assert "(the run failed)" in summary
