"""target-lytics against the Lytics stand-in: uploads, splitting, retries, errors, STATE."""

from __future__ import annotations

import contextlib
import datetime
import gzip
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from tap_cordial_activity.records import normalize
from tap_cordial_activity.streams import SCHEMA as ACTIVITY_SCHEMA
from target_lytics.client import LyticsClient, RetryPolicy
from target_lytics.errors import LyticsError
from target_lytics.target import TargetLytics

from sandbox.events import generate_events
from sandbox.httpbase import Fault
from sandbox.lytics import LyticsStandIn

COLLECT = "/collect/json/"
FAST_RETRIES = {"retry_initial_delay_seconds": 0.01, "retry_max_delay_seconds": 0.05}
EXPECTED_FIELDS = {
    "cID": "cr_contact_id",
    "first": "cr_first",
    "_id": "cr_system_event_id",
    "mcID": "cr_message_contact_id",
    "message_name": "cr_message_name",
    "message_sent": "cr_message_sent_timestamp",
    "action": "cr_event_action",
    "time": "cr_event_timestamp",
}


# -- helpers ------------------------------------------------------------------------------------


def cordial_records(count: int, seed: int = 3) -> list[dict[str, Any]]:
    """The sandbox generator's events after the tap's own normalization."""
    records = []
    for line, event in enumerate(generate_events(count, seed=seed), start=1):
        normalize(event, "export.json", line)
        records.append(event)
    return records


def schema_message(stream: str, schema: dict, key_properties: list[str] | None = None) -> str:
    message = {"type": "SCHEMA", "stream": stream, "schema": schema}
    message["key_properties"] = key_properties or []
    return json.dumps(message) + "\n"


def record_message(stream: str, record: dict) -> str:
    return json.dumps({"type": "RECORD", "stream": stream, "record": record}) + "\n"


def state_message(value: dict) -> str:
    return json.dumps({"type": "STATE", "value": value}) + "\n"


def activity_lines(records: list[dict], state_every: int | None = None) -> list[str]:
    lines = [schema_message("activity", ACTIVITY_SCHEMA, ["_id"])]
    for i, record in enumerate(records, start=1):
        lines.append(record_message("activity", record))
        if state_every and i % state_every == 0:
            lines.append(state_message({"bookmarks": {"activity": {"upto": i}}}))
    return lines


def config_for(lytics: LyticsStandIn, **overrides: Any) -> dict[str, Any]:
    # Every STATE as soon as it is ready, so tests can follow each one (the default is 1 s apart).
    config = {
        "api_token": lytics.token, "api_url": lytics.url, "min_state_interval_seconds": 0,
        **FAST_RETRIES,
    }
    config.update(overrides)
    return config


def run_target(
    config: dict[str, Any], lines: list[str], target_class: type[TargetLytics] = TargetLytics
) -> tuple[list[dict], BaseException | None]:
    """Run the target in-process on ``lines``; return its STATE output and the error, if any."""
    target = target_class(config=config)
    out = io.StringIO()
    error: BaseException | None = None
    with contextlib.redirect_stdout(out):
        try:
            target.listen(io.StringIO("".join(lines)))
        except Exception as exc:
            error = exc
    states = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    return states, error


def uploaded_ids(lytics: LyticsStandIn, stream: str = "cordial_activity") -> list[str]:
    return [event["cr_system_event_id"] for event in lytics.events.get(stream, [])]


# -- mapping of real Cordial records ------------------------------------------------------------


def test_cordial_records_are_mapped_and_converted(lytics):
    records = cordial_records(300)
    states, error = run_target(
        config_for(lytics), [*activity_lines(records), state_message({"s": 1})]
    )
    assert error is None
    assert states == [{"s": 1}]
    events = lytics.events["cordial_activity"]
    assert len(events) == len(records)
    by_id = {event["cr_system_event_id"]: event for event in events}
    firsts = set()
    for record in records:
        event = by_id[record["_id"]]
        assert set(event) <= set(EXPECTED_FIELDS.values())
        for source, target in EXPECTED_FIELDS.items():
            if record.get(source) is None:
                assert target not in event
        assert event["cr_contact_id"] == record["cID"]
        assert event["cr_event_action"] == record["action"]
        assert event["cr_event_timestamp"].endswith("Z")
        when = datetime.datetime.fromisoformat(event["cr_event_timestamp"])
        assert when == datetime.datetime.fromisoformat(record["time"])
        if "message_sent" in record:
            assert event["cr_message_sent_timestamp"].endswith("Z")
        if "first" in record:
            assert type(event["cr_first"]) is bool
            assert event["cr_first"] is record["first"]
            firsts.add(event["cr_first"])
        if "message_name" in record:
            assert event["cr_message_name"] == record["message_name"]  # unicode kept
    assert firsts == {True, False}
    for request in lytics.requests:
        assert request.stream == "cordial_activity"
        assert request.query == {"timestamp_field": "cr_event_timestamp"}
        assert request.status == 200


def test_raw_cordial_booleans_and_offsets(lytics):
    """A tap that does not normalize: `first` as 1/0/"true", `+0000` offsets, nulls."""
    schema = {
        "type": "object",
        "properties": {
            "_id": {"type": "string"},
            "cID": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
            "first": {"type": ["boolean", "integer", "string", "null"]},
            "mcID": {"type": ["string", "null"]},
        },
    }
    rows: list[dict[str, Any]] = [
        {"_id": "a", "cID": "c", "time": "2017-03-13T22:48:40+0000", "first": 1, "mcID": None},
        {"_id": "b", "cID": "c", "time": "2017-03-13T23:48:40+01:00", "first": "true"},
        {"_id": "c", "cID": "c", "time": "2017-03-13T22:48:40Z", "first": 0},
        {"_id": "d", "cID": "c", "time": "2017-03-13T22:48:40+00:00", "first": "0"},
    ]
    lines = [schema_message("activity", schema)] + [record_message("activity", r) for r in rows]
    _, error = run_target(config_for(lytics), lines)
    assert error is None
    events = {e["cr_system_event_id"]: e for e in lytics.events["cordial_activity"]}
    assert events["a"] == {
        "cr_system_event_id": "a",
        "cr_contact_id": "c",
        "cr_first": True,
        "cr_event_timestamp": "2017-03-13T22:48:40Z",
    }
    assert events["b"]["cr_first"] is True
    assert events["b"]["cr_event_timestamp"] == "2017-03-13T22:48:40Z"
    assert events["c"]["cr_first"] is False
    assert events["d"]["cr_first"] is False


def test_include_unmapped_fields_and_user_mapping(lytics):
    records = cordial_records(40)
    config = config_for(
        lytics,
        include_unmapped_fields=True,
        streams={"other": {"lytics_stream": "misc"}},
    )
    _, error = run_target(config, activity_lines(records))
    assert error is None
    events = lytics.events["cordial_activity"]
    with_email = [e for e in events if "email" in e]
    assert with_email, "unmapped fields are sent when include_unmapped_fields is true"
    assert all("cID" not in e and "time" not in e for e in events)  # mapped ones are renamed
    # Nested objects holding arrays of objects are JSON text, so Lytics accepts every event.
    assert sum(lytics.rejected.values()) == 0


def test_pass_through_stream(lytics):
    schema = {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": ["string", "null"]},
            "price": {"type": ["number", "null"]},
            "active": {"type": ["boolean", "null"]},
            "updated_at": {"type": ["string", "null"], "format": "date-time"},
            "lines": {"type": ["array", "null"], "items": {"type": "object"}},
            "meta": {"type": ["object", "null"]},
        },
    }
    rows: list[dict[str, Any]] = [
        {
            "id": 1,
            "name": "Zoë",
            "price": 19.9,
            "active": True,
            "updated_at": "2024-05-01T10:00:00+02:00",
            "lines": [{"sku": "a", "qty": 2}],
            "meta": {"tags": ["x"], "k": {"v": 1}},
        },
        {"id": 2, "name": None, "price": 5, "active": False},
    ]
    lines = [schema_message("orders", schema, ["id"])] + [record_message("orders", r) for r in rows]
    _, error = run_target(config_for(lytics), lines)
    assert error is None
    assert [r.stream for r in lytics.requests] == ["orders"]
    assert lytics.requests[0].query == {}  # no timestamp_field for an unmapped stream
    first, second = lytics.events["orders"]
    assert first["id"] == 1
    assert first["name"] == "Zoë"
    assert first["price"] == 19.9
    assert b'"price":19.9' in lytics.requests[0].body  # the exact number, not a string
    assert first["active"] is True
    assert first["updated_at"] == "2024-05-01T08:00:00Z"
    assert json.loads(first["lines"]) == [{"sku": "a", "qty": 2}]  # sent as JSON text
    assert first["meta"] == {"tags": ["x"], "k": {"v": 1}}  # plain objects stay objects
    assert second == {"id": 2, "price": 5, "active": False}  # null field left out


def test_configured_stream_with_timestamp_field(lytics):
    schema = {"type": "object", "properties": {"id": {"type": "integer"}, "at": {"type": "string"}}}
    config = config_for(
        lytics,
        streams={
            "orders": {"lytics_stream": "shop", "fields": {"id": "oid"}, "timestamp_field": "at"}
        },
    )
    lines = [schema_message("orders", schema), record_message("orders", {"id": 3, "at": "x"})]
    _, error = run_target(config, lines)
    assert error is None
    assert lytics.events["shop"] == [{"oid": 3}]
    assert lytics.requests[0].query == {"timestamp_field": "at"}


def test_schema_fastjsonschema_cannot_compile_falls_back_to_jsonschema(lytics, caplog):
    schema = {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "odd": {"$ref": "#/definitions/missing"}},
    }
    good = [schema_message("s", schema), record_message("s", {"id": 1})]
    _, error = run_target(config_for(lytics), good)
    assert error is None
    assert lytics.events["s"] == [{"id": 1}]
    assert "validating stream 's' with jsonschema instead" in caplog.text
    bad = [schema_message("s", schema), record_message("s", {"id": "one"})]
    _, error = run_target(config_for(lytics), bad)
    assert error is not None
    assert "'one' is not of type 'integer'" in str(error)


# -- request splitting ----------------------------------------------------------------------------


def test_requests_are_split_by_size(lytics):
    records = cordial_records(500)
    limit = 4_000
    # One upload at a time: the stand-in then sees the bodies in the order they were built.
    config = config_for(lytics, max_request_bytes=limit, max_concurrent_uploads=1)
    _, error = run_target(config, activity_lines(records))
    assert error is None
    bodies = [r.body for r in lytics.requests]
    assert len(bodies) > 10
    assert all(len(body) <= limit for body in bodies)
    arrays = [orjson.loads(body) for body in bodies]
    assert all(isinstance(array, list) and array for array in arrays)
    # Greedy packing: the next request's first event would not have fitted in this one.
    for body, following in zip(bodies, arrays[1:], strict=False):
        assert len(body) + 1 + len(orjson.dumps(following[0])) > limit
    assert sorted(uploaded_ids(lytics)) == sorted(r["_id"] for r in records)


def test_batch_size_rows_drains_without_state(lytics):
    records = cordial_records(120)
    lines = [*activity_lines(records), state_message({"bookmarks": {"activity": {"upto": 120}}})]
    states, error = run_target(config_for(lytics, batch_size_rows=50), lines)
    assert error is None
    assert sorted(len(orjson.loads(r.body)) for r in lytics.requests) == [20, 50, 50]
    assert states == [{"bookmarks": {"activity": {"upto": 120}}}]


def test_batch_messages_are_validated_mapped_and_uploaded(lytics, tmp_path):
    # A singer-sdk tap with batch_config sends BATCH messages naming JSONL files of records.
    records = cordial_records(90)
    files = []
    for part in range(3):
        path = tmp_path / f"activity-{part}.jsonl.gz"
        with gzip.open(path, "wb") as handle:
            handle.writelines(orjson.dumps(r) + b"\n" for r in records[part * 30 : part * 30 + 30])
        files.append(path.as_uri())
    batch = {
        "type": "BATCH",
        "stream": "activity",
        "encoding": {"format": "jsonl", "compression": "gzip"},
        "manifest": files,
    }
    lines = [
        schema_message("activity", ACTIVITY_SCHEMA, ["_id"]),
        json.dumps(batch) + "\n",
        state_message({"bookmarks": {"activity": {"upto": 90}}}),
    ]
    trusted = config_for(lytics, batch_file_roots=[tmp_path.as_uri()])
    states, error = run_target(trusted, lines)
    assert error is None
    assert sorted(uploaded_ids(lytics)) == sorted(r["_id"] for r in records)
    assert states[-1] == {"bookmarks": {"activity": {"upto": 90}}}

    bad = {**records[0], "time": 12}  # not a string: the schema refuses it, nothing is sent
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(orjson.dumps(bad) + b"\n")
    lytics.reset()
    states, error = run_target(
        trusted, [lines[0], json.dumps({**batch, "manifest": [path.as_uri()]}) + "\n"]
    )
    assert error is not None
    assert "time" in str(error)
    assert not uploaded_ids(lytics)


def test_single_event_larger_than_limit_ends_the_run(lytics):
    schema = {"type": "object", "properties": {"blob": {"type": "string"}}}
    lines = [schema_message("big", schema), record_message("big", {"blob": "x" * 600})]
    states, error = run_target(config_for(lytics, max_request_bytes=500), lines)
    assert isinstance(error, LyticsError)
    assert "max_request_bytes" in str(error)
    assert states == []


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param([Fault(status=429)], id="429"),
        pytest.param([Fault(status=500), Fault(status=502), Fault(status=503)], id="5xx"),
        pytest.param([Fault(reset=True)], id="connection-reset"),
        pytest.param([Fault(status=503, after_store=True)], id="503-after-store"),
    ],
)
def test_transient_failures_are_retried(lytics, faults, caplog):
    records = cordial_records(30)
    lytics.inject(COLLECT, *faults)
    states, error = run_target(
        config_for(lytics), [*activity_lines(records), state_message({"s": 2})]
    )
    assert error is None
    assert states == [{"s": 2}]
    assert lytics.pending_faults() == 0
    # At-least-once: a request stored before its 503 is stored again by the retry.
    assert set(uploaded_ids(lytics)) == {r["_id"] for r in records}
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == len(faults)


def test_timeouts_are_retried(lytics):
    records = cordial_records(10)
    lytics.inject(COLLECT, Fault(delay_seconds=1.0))
    _, error = run_target(config_for(lytics, request_timeout_seconds=0.3), activity_lines(records))
    assert error is None
    assert set(uploaded_ids(lytics)) == {r["_id"] for r in records}
    assert len(lytics.requests) >= 1


def test_retry_after_is_honoured(lytics):
    lytics.inject(COLLECT, Fault(status=429, retry_after=0.6))
    client = LyticsClient(
        api_url=lytics.url,
        api_token=lytics.token,
        timeout_seconds=60,
        retry=RetryPolicy(max_retries=8, initial_delay_seconds=0.01, max_delay_seconds=0.01),
    )
    started = time.monotonic()
    result = client.upload("s", b'[{"a":1}]')
    assert time.monotonic() - started >= 0.6
    assert result.message_count == 1
    client.close()


def test_retries_are_bounded(lytics):
    lytics.inject(COLLECT, *[Fault(status=500)] * 4)
    states, error = run_target(
        config_for(lytics, max_retries=3),
        [*activity_lines(cordial_records(5)), state_message({"s": 1})],
    )
    assert isinstance(error, LyticsError)
    assert "after 4 attempts" in str(error)
    assert "HTTP 500" in str(error)
    assert states == []
    assert lytics.events.get("cordial_activity", []) == []


# -- errors that end the run ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "advice"),
    [
        (400, "check the stream mapping"),
        (403, "IP allow-list"),
        (413, "lower max_request_bytes"),
    ],
)
def test_fatal_statuses_end_the_run(lytics, status, advice):
    lytics.inject(COLLECT, Fault(status=status), Fault(status=status))
    states, error = run_target(
        config_for(lytics), [*activity_lines(cordial_records(5)), state_message({"s": 1})]
    )
    assert isinstance(error, LyticsError)
    assert f"HTTP {status}" in str(error)
    assert advice in str(error)
    assert states == []
    assert lytics.pending_faults() == 1  # one request made: not retried


#: A stream whose `p` field may hold an array of objects, which Lytics refuses.
ORDERS_SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "p": {"type": "object"}},
}


def let_arrays_of_objects_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send arrays of objects as they are, as if the mapping's JSON-text safeguard missed one."""
    monkeypatch.setattr(
        "target_lytics.mapping.NestedValueHandler.converter",
        lambda self, name: lambda value: value,
    )


def test_rejected_events_end_the_run(lytics, monkeypatch):
    """If an event Lytics cannot parse ever got through the mapping, it is not sent either."""
    let_arrays_of_objects_through(monkeypatch)
    lines = [
        schema_message("orders", ORDERS_SCHEMA),
        record_message("orders", {"id": 1, "p": {"items": [{"a": 1}]}}),
        record_message("orders", {"id": 2}),
        state_message({"s": 1}),
    ]
    states, error = run_target(config_for(lytics), lines)
    assert isinstance(error, LyticsError)
    assert "was not sent: the event nests objects inside an array" in str(error)
    assert "max_rejected_records" in str(error)
    assert states == []
    assert lytics.requests == []


# -- STATE only after acceptance ------------------------------------------------------------------


def test_state_never_covers_records_not_uploaded(lytics, monkeypatch):
    records = cordial_records(60)
    original_upload = LyticsClient.upload
    calls = {"n": 0}

    def failing_later(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 25:
            # From here on Lytics fails for good (beyond max_retries).
            lytics.inject(COLLECT, *[Fault(status=500)] * 10)
        return original_upload(self, *args, **kwargs)

    monkeypatch.setattr(LyticsClient, "upload", failing_later)
    # One record per drain, so one upload per record.
    config = config_for(lytics, max_retries=2, max_concurrent_uploads=1, batch_size_rows=1)
    states, error = run_target(config, activity_lines(records, state_every=5))
    assert isinstance(error, LyticsError)
    accepted = set(uploaded_ids(lytics))
    assert len(accepted) == 24
    assert states, "STATE messages were emitted before the failure"
    last = states[-1]["bookmarks"]["activity"]["upto"]
    assert last == 20
    # Every record the last STATE covers was accepted by Lytics.
    assert {r["_id"] for r in records[:last]} <= accepted


def test_states_within_the_interval_are_coalesced_and_the_last_is_written(lytics):
    records = cordial_records(200)
    lines = activity_lines(records, state_every=5)
    config = config_for(lytics, batch_size_rows=1, max_concurrent_uploads=1)
    every, error = run_target(config, lines, CheckpointEveryStateTarget)
    assert error is None
    config["min_state_interval_seconds"] = 60
    coalesced, error = run_target(config, lines, CheckpointEveryStateTarget)
    assert error is None
    assert len(every) == 40
    # The first one at once, then nothing for 60 s but the last, written when the input ended.
    assert coalesced == [every[0], every[-1]]
    assert sorted(uploaded_ids(lytics)) == sorted([r["_id"] for r in records] * 2)


class CheckpointEveryStateTarget(TargetLytics):
    """Sends the partial body at every STATE (the default waits while one is in flight, to 1 s)."""

    STATE_CHECKPOINT_SECONDS = 0.0


def record_accepted_at_each_state(
    monkeypatch: pytest.MonkeyPatch, lytics: LyticsStandIn
) -> list[int]:
    """A list that gets, as each STATE is written, how many events Lytics had stored by then."""
    accepted: list[int] = []
    original_write = TargetLytics.write_state

    def recording_write(self: TargetLytics, state: dict) -> None:
        accepted.append(len(uploaded_ids(lytics)))
        original_write(self, state)

    monkeypatch.setattr(TargetLytics, "write_state", recording_write)
    return accepted


def test_changed_state_is_checkpointed_after_its_records_are_accepted(lytics, monkeypatch):
    """A STATE in mid-stream is written once Lytics accepted every record before it."""
    records = cordial_records(90)
    accepted_at_state = record_accepted_at_each_state(monkeypatch, lytics)
    lines = activity_lines(records, state_every=30)
    lines.insert(32, state_message({"bookmarks": {"activity": {"upto": 30}}}))  # unchanged: no-op
    states, error = run_target(config_for(lytics), lines, CheckpointEveryStateTarget)
    assert error is None
    # One STATE per change (30, 60, 90), each once its records were stored (later bodies may
    # have been stored too); the end of the input does not repeat the last one.
    upto = [s["bookmarks"]["activity"]["upto"] for s in states]
    # A STATE whose records were accepted only with the next one's is dropped for the newer one.
    assert upto == sorted(set(upto))
    assert set(upto) <= {30, 60, 90}
    assert upto[-1] == 90
    assert all(accepted >= n for accepted, n in zip(accepted_at_state, upto, strict=True))
    assert len(uploaded_ids(lytics)) == 90


class HourlyCheckpointTarget(TargetLytics):
    """Checkpoints at most once an hour while records are pending."""

    STATE_CHECKPOINT_SECONDS = 3600.0


def test_state_waits_for_the_checkpoint_interval_while_records_are_pending(lytics):
    """A STATE sends the partial body only when none is in flight (or after the interval).

    The first STATE finds the link idle and sends its 30 records; the next two find that body
    still in flight (Lytics answers it slowly) and do not, so their records go out in one body
    at the end of the input.
    """
    lytics.inject(COLLECT, Fault(delay_seconds=1.0))
    states, error = run_target(
        config_for(lytics), activity_lines(cordial_records(90), 30), HourlyCheckpointTarget
    )
    assert error is None
    # Two bodies: 30 records, then the 60 held back. STATE 60 is never written on its own (its
    # records share a body with those up to 90). Usually the slow request is the first body's, so
    # both STATEs become ready at once and only the newer is written; on a busy machine the
    # second body may reach Lytics first and take the delay, and then STATE 30 comes first.
    upto = [s["bookmarks"]["activity"]["upto"] for s in states]
    assert upto in ([90], [30, 90])
    assert sorted(len(orjson.loads(r.body)) for r in lytics.requests) == [30, 60]


def test_background_upload_failure_ends_the_run_without_state(lytics, monkeypatch):
    """Full bodies go out from the upload thread; its failure surfaces and no STATE follows."""
    records = cordial_records(300)
    original_upload = LyticsClient.upload
    calls = {"n": 0}

    def failing_later(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            lytics.inject(COLLECT, Fault(status=400))
        return original_upload(self, *args, **kwargs)

    monkeypatch.setattr(LyticsClient, "upload", failing_later)
    config = config_for(lytics, max_request_bytes=3_000, max_concurrent_uploads=1)
    states, error = run_target(config, activity_lines(records, state_every=20))
    assert isinstance(error, LyticsError)
    assert "HTTP 400" in str(error)
    assert calls["n"] == 4  # nothing was sent after the failed request
    accepted = uploaded_ids(lytics)
    assert 0 < len(accepted) < len(records)
    assert accepted == [r["_id"] for r in records[: len(accepted)]]  # in order, a prefix
    # STATEs only up to the accepted prefix.
    assert all(s["bookmarks"]["activity"]["upto"] <= len(accepted) for s in states)


def test_no_state_when_the_final_drain_fails(lytics):
    records = cordial_records(50)
    # Every upload is refused (with bodies in flight at once, any of them may come first).
    lytics.inject(COLLECT, *[Fault(status=401)] * 10)
    states, error = run_target(config_for(lytics), activity_lines(records, state_every=10))
    assert isinstance(error, LyticsError)
    assert states == []


def test_state_after_successful_upload(lytics):
    records = cordial_records(50)
    states, error = run_target(config_for(lytics), activity_lines(records, state_every=10))
    assert error is None
    upto = [s["bookmarks"]["activity"]["upto"] for s in states]
    assert upto[-1] == 50
    assert upto == sorted(set(upto))  # each written once, in order
    assert len(uploaded_ids(lytics)) == 50


# -- dry run and the connection check -------------------------------------------------------------


def test_dry_run_sends_dryrun_and_stores_nothing(lytics):
    _, error = run_target(config_for(lytics, dry_run=True), activity_lines(cordial_records(10)))
    assert error is None
    assert lytics.requests
    assert all(r.query.get("dryrun") == "true" for r in lytics.requests)
    assert lytics.total() == 0


def _cli(args: list[str], config: dict, tmp_path: Path, stdin: str = "", **env: str):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    return subprocess.run(
        [sys.executable, "-m", "target_lytics.target", "--config", str(config_file), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_cli_test_flag_checks_the_connection(lytics, tmp_path):
    result = _cli(["--test"], config_for(lytics), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Connection check passed" in result.stderr
    # Every default stream: the tap's activity_rejects go to cordial_activity_rejects.
    assert [r.stream for r in lytics.requests] == ["cordial_activity", "cordial_activity_rejects"]
    assert all(r.query["dryrun"] == "true" for r in lytics.requests)
    assert lytics.total() == 0


def test_cli_test_flag_reports_a_bad_token(lytics, tmp_path):
    token = "wrong-token-" + os.urandom(8).hex()
    result = _cli(["--test"], config_for(lytics, api_token=token), tmp_path)
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr
    assert "check api_token" in result.stderr
    assert token not in result.stderr + result.stdout


def test_cli_test_flag_reports_an_unreachable_api(tmp_path):
    with LyticsStandIn() as lytics:
        config = config_for(lytics)  # the port is closed once the stand-in stops
    started = time.monotonic()
    result = _cli(["--test"], config, tmp_path)
    assert result.returncode == 1
    assert "connection error" in result.stderr
    assert "after 3 attempts" in result.stderr
    assert f"Connection check of {lytics.url} failed" in result.stderr
    assert time.monotonic() - started < 20


def test_cli_test_flag_does_not_wait_long_for_a_silent_api(tmp_path):
    """A server that takes the connection but never answers: 3 short timeouts, not 3 minutes."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # never accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        config = {"api_token": "t", "api_url": url, **FAST_RETRIES}  # request timeout: 60 s
        started = time.monotonic()
        result = _cli(["--test"], config, tmp_path)
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert f"Connection check of {url} failed" in result.stderr
    assert "timed out after 5.0s" in result.stderr
    assert "after 3 attempts" in result.stderr
    assert elapsed < 40


def test_cli_run_exits_non_zero_and_keeps_secrets(tmp_path):
    token = "tok-" + os.urandom(12).hex()
    with LyticsStandIn(token=token) as lytics:
        records = cordial_records(20)
        stdin = "".join([*activity_lines(records), state_message({"s": 9})])
        ok = _cli([], config_for(lytics), tmp_path, stdin, LOGLEVEL="DEBUG")
        assert ok.returncode == 0, ok.stderr
        assert "Uploaded 20 events" in ok.stderr  # DEBUG logging was on
        assert ok.stdout.strip().splitlines() == ['{"s": 9}']
        assert len(lytics.events["cordial_activity"]) == 20
        lytics.inject(COLLECT, Fault(status=403))
        failed = _cli([], config_for(lytics), tmp_path, stdin, LOGLEVEL="DEBUG")
        assert failed.returncode != 0
        assert "HTTP 403" in failed.stderr
        assert "IP allow-list" in failed.stderr
        assert "Traceback" not in failed.stderr
        assert "unhandled" not in failed.stderr.lower()  # the error is handled: said once, plainly
        assert failed.stdout.strip() == ""  # no STATE
        for output in (ok.stdout, ok.stderr, failed.stdout, failed.stderr):
            assert token not in output
        assert all(token not in r.query.values() for r in lytics.requests)
