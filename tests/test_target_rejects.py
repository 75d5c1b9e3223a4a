"""max_rejected_records: events Lytics cannot take or refuses, set aside into <stream>_rejects.

Issue 27 (target part): one oversized event and one refused for no stated reason. By default the
run fails naming the setting; with a limit every other event is stored exactly once, both are
named in ``cordial_activity_rejects`` and the final STATE is written; the dry-run bisection sends
nothing twice for real (the stand-in's stored events and real requests are counted).
"""

from __future__ import annotations

import collections
import json
import logging
from typing import Any

import orjson
import pytest
from tap_cordial_activity.schema import REJECTS_SCHEMA
from target_lytics.errors import LyticsError
from target_lytics.rejects import (
    MAX_EVENT_BYTES_IN_BATCH,
    MAX_REJECT_EVENT_BYTES,
    RejectBudget,
    fit_reject_event,
    unsendable_reason,
)
from target_lytics.settings import rejects_stream
from test_target_lytics import (
    ORDERS_SCHEMA,
    CheckpointEveryStateTarget,
    _cli,
    activity_lines,
    config_for,
    cordial_records,
    let_arrays_of_objects_through,
    record_message,
    run_target,
    schema_message,
    state_message,
    uploaded_ids,
)
from test_target_uploads import metric_counts, upto

from sandbox.lytics import LyticsStandIn

REJECTS = "cordial_activity_rejects"
OVERSIZED_AT = 50
REFUSED_AT = 120


def two_bad_records(count: int = 200) -> tuple[list[dict[str, Any]], str, str]:
    """``count`` records: one with a 20 KB property (index 50), one Lytics will refuse (120)."""
    records = cordial_records(count)
    records[OVERSIZED_AT]["properties"] = {"note": "x" * 20_000}
    return records, records[OVERSIZED_AT]["_id"], records[min(REFUSED_AT, count - 1)]["_id"]


def refuse(lytics: LyticsStandIn, event_id: str) -> None:
    """Lytics refuses this event for a reason it does not state."""
    lytics.set_options(refuse_where={"field": "cr_system_event_id", "equals": event_id})


def real_requests(lytics: LyticsStandIn, stream: str = "cordial_activity") -> list[Any]:
    return [r for r in lytics.requests if r.stream == stream and not r.dryrun]


def ids_sent_for_real(lytics: LyticsStandIn) -> collections.Counter[str]:
    """How often each event id was in a real (not dry-run) request body."""
    sent: collections.Counter[str] = collections.Counter()
    for request in real_requests(lytics):
        sent.update(event["cr_system_event_id"] for event in orjson.loads(request.body))
    return sent


def config(lytics: LyticsStandIn, **overrides: Any) -> dict[str, Any]:
    # Several bodies, so the refused one is one of many; unmapped fields carry the 20 KB property.
    return config_for(
        lytics, **{"include_unmapped_fields": True, "max_request_bytes": 30_000, **overrides}
    )


# -- default: strict, the message names the setting ---------------------------------------------


def test_by_default_a_refused_event_fails_the_run_naming_the_setting(lytics):
    records = cordial_records(200)
    refused = records[REFUSED_AT]["_id"]
    refuse(lytics, refused)
    states, error = run_target(config(lytics), activity_lines(records, state_every=25))
    assert isinstance(error, LyticsError)
    message = str(error)
    assert "rejected 1 of" in message
    assert "max_rejected_records" in message
    assert REJECTS in message
    # STATE never passes the refused event (record 121).
    assert max(upto(states), default=0) <= REFUSED_AT
    assert REJECTS not in lytics.counts
    # With 0 nothing is found by dry runs: the events go out as before the setting existed.
    assert not any(r.dryrun for r in lytics.requests)


def test_by_default_an_event_lytics_cannot_take_fails_the_run_before_its_body_is_sent(lytics):
    """Before, its body was sent: the others stored, the run failed, a rerun stored them again."""
    records, oversized, _ = two_bad_records(100)
    for _ in range(2):  # the run, then a rerun of the same input
        states, error = run_target(
            config(lytics, max_request_bytes=1_000_000), activity_lines(records)
        )
        assert isinstance(error, LyticsError)
        message = str(error)
        assert (
            f"One event of stream 'activity' (key {{'_id': '{oversized}'}}) was not sent" in message
        )
        assert "16,000 bytes" in message
        assert "set max_rejected_records (default 0: none)" in message
        assert REJECTS in message
        assert states == []
        # Nothing of its body reached Lytics: no request, nothing stored.
        assert real_requests(lytics) == []
        assert lytics.counts.get("cordial_activity", 0) == 0


# -- with a limit: set aside, everything else once, final STATE ------------------------------------


def test_with_a_limit_both_are_set_aside_and_every_other_event_is_stored_once(lytics, caplog):
    caplog.set_level(logging.INFO)
    records, oversized, refused = two_bad_records()
    refuse(lytics, refused)
    states, error = run_target(
        config(lytics, max_rejected_records=2), activity_lines(records, state_every=25)
    )
    assert error is None
    good = {r["_id"] for r in records} - {oversized, refused}
    stored = collections.Counter(uploaded_ids(lytics))
    assert set(stored) == good
    assert set(stored.values()) == {1}
    # Nothing was sent twice for real: each event in at most one real request; the oversized
    # one in none (not sent), the refused one in exactly one (refused there, stored nowhere).
    sent = ids_sent_for_real(lytics)
    assert oversized not in sent
    assert sent[refused] == 1
    assert set(sent.values()) == {1}
    # The bisection's dry runs stored nothing: the stand-in holds 198 events.
    assert lytics.counts["cordial_activity"] == len(good)
    assert any(r.dryrun for r in lytics.requests)
    # Both are named in cordial_activity_rejects, with the fields clarifications.md lists.
    rejects = {event["key"]["_id"]: event for event in lytics.events[REJECTS]}
    assert set(rejects) == {oversized, refused}
    for event in rejects.values():
        assert event["stream"] == "activity"
        assert {"reason", "bytes", "head", "rejected_at"} <= set(event)
        assert len(event["head"].encode()) <= 1_000
        assert event["rejected_at"].endswith("Z")
    assert rejects[oversized]["bytes"] > MAX_EVENT_BYTES_IN_BATCH
    assert "16,000 bytes" in rejects[oversized]["reason"]
    assert "without saying why" in rejects[refused]["reason"]
    assert rejects[refused]["head"].startswith("{")
    # The reject events were sent with their time as the timestamp field.
    reject_requests = [r for r in lytics.requests if r.stream == REJECTS]
    assert {r.timestamp_field for r in reject_requests} == {"rejected_at"}
    # The final STATE is written.
    assert upto(states)[-1] == len(records)
    counts = metric_counts(caplog)
    assert counts[("activity", "set_aside")] == 2
    assert counts[("activity", "accepted")] == len(good)
    assert counts[("activity", "received")] == len(records)
    assert "2 set aside into Lytics stream 'cordial_activity_rejects'" in caplog.text
    summary = next(r.getMessage() for r in caplog.records if "upload summary" in r.getMessage())
    assert "(2 set aside)" in summary


def test_more_than_the_limit_fails_the_run_and_state_stops_before(lytics):
    records, oversized, refused = two_bad_records()
    refuse(lytics, refused)
    # One body per STATE, one at a time, every STATE at once: the bodies before the one holding
    # the second event are answered before it fails. (With the default a STATE sends no body while
    # one is in flight, so under load the records 51-200 could share the failing body.)
    states, error = run_target(
        config(lytics, max_rejected_records=1, max_concurrent_uploads=1,
               min_state_interval_seconds=0),
        activity_lines(records, state_every=25),
        CheckpointEveryStateTarget,
    )
    assert isinstance(error, LyticsError)
    message = str(error)
    assert "max_rejected_records (1) allows no more" in message
    assert "rejected 1 of" in message
    # The first one (oversized, not sent) was set aside: STATE moved past it, not past the second.
    assert [e["key"]["_id"] for e in lytics.events[REJECTS]] == [oversized]
    assert upto(states) == [25, 50, 75, 100]  # past the first (index 50), not past the second (120)


def test_several_refused_events_in_one_body_are_isolated_by_dry_runs(lytics):
    records = cordial_records(300)
    refused = [records[i]["_id"] for i in (7, 8, 150, 299)]
    lytics.set_options(refuse_where=None)
    # Four refusals by one field value: give them the same action.
    for index in (7, 8, 150, 299):
        records[index]["action"] = "refused-by-lytics"
    lytics.set_options(refuse_where={"field": "cr_event_action", "equals": "refused-by-lytics"})
    states, error = run_target(
        config_for(lytics, max_rejected_records=4), activity_lines(records, state_every=100)
    )
    assert error is None
    # Each event went out in one real request, never again; Lytics refused the four there.
    assert set(ids_sent_for_real(lytics).values()) == {1}
    assert sum(r.rejected_count for r in real_requests(lytics)) == 4
    stored = collections.Counter(uploaded_ids(lytics))
    assert set(stored) == {r["_id"] for r in records} - set(refused)
    assert set(stored.values()) == {1}
    assert sorted(e["key"]["_id"] for e in lytics.events[REJECTS]) == sorted(refused)
    # Bisection: a few dry runs per refused event (log2(300) ~ 9 levels, two halves each).
    dry_runs = [r for r in lytics.requests if r.dryrun]
    assert 0 < len(dry_runs) <= 4 * 2 * 9
    assert upto(states)[-1] == 300


def test_a_short_count_the_dry_runs_cannot_explain_sets_nothing_aside(lytics):
    """Lytics counts one event fewer than each body, dry runs too: which one is lost is unknown."""
    lytics.set_options(wrong_answer="short_count")
    records = cordial_records(20)
    states, error = run_target(
        config_for(lytics, max_rejected_records=5), activity_lines(records, state_every=5)
    )
    assert isinstance(error, LyticsError)
    assert "cannot be told" in str(error)
    assert REJECTS not in lytics.counts
    assert states == []


def test_an_event_nesting_objects_in_an_array_is_not_sent(lytics, monkeypatch):
    let_arrays_of_objects_through(monkeypatch)
    lines = [
        schema_message("orders", ORDERS_SCHEMA, ["id"]),
        record_message("orders", {"id": 1, "p": {"items": [{"a": 1}]}}),
        record_message("orders", {"id": 2}),
        state_message({"s": 1}),
    ]
    states, error = run_target(config_for(lytics, max_rejected_records=1), lines)
    assert error is None
    assert [orjson.loads(r.body) for r in real_requests(lytics, "orders")] == [[{"id": 2}]]
    (reject,) = lytics.events["orders_rejects"]
    assert reject["key"] == {"id": 1}
    assert "objects inside an array" in reject["reason"]
    assert states == [{"s": 1}]


def test_a_failed_reject_upload_fails_the_run_without_state(lytics, monkeypatch):
    records, _, _ = two_bad_records(60)
    from target_lytics.client import LyticsClient

    original = LyticsClient.upload

    def no_rejects_stream(self, stream, *args, **kwargs):
        if stream == REJECTS:
            raise LyticsError("upload to the rejects stream failed with HTTP 403")
        return original(self, stream, *args, **kwargs)

    monkeypatch.setattr(LyticsClient, "upload", no_rejects_stream)
    states, error = run_target(
        config(lytics, max_rejected_records=3), activity_lines(records, state_every=10)
    )
    assert isinstance(error, LyticsError)
    assert "cordial_activity_rejects" in str(error)
    assert max(upto(states), default=0) <= OVERSIZED_AT


def test_an_event_over_max_request_bytes_after_others_ends_the_run(lytics):
    """Before, it was dropped without a word when the body already held events."""
    records, oversized, _ = two_bad_records()
    # Under Lytics' 16,000 bytes (an event over that ends the run naming max_rejected_records).
    records[OVERSIZED_AT]["properties"] = {"note": "x" * 10_000}
    states, error = run_target(
        config(lytics, max_request_bytes=8_000), activity_lines(records, state_every=25)
    )
    assert isinstance(error, LyticsError)
    assert "max_request_bytes" in str(error)
    assert oversized not in uploaded_ids(lytics)
    assert max(upto(states), default=0) <= OVERSIZED_AT


# -- the tap's activity_rejects go to the same place ----------------------------------------------


def test_the_taps_activity_rejects_go_to_cordial_activity_rejects(lytics):
    schema = {
        "type": "object",
        "properties": {
            name: {"type": ["string", "integer", "null"]}
            for name in ("file", "line", "error", "raw", "export_name", "window_start")
        },
    }
    record = {"file": "a.json", "line": 500, "error": "bad", "raw": "{oops", "export_name": "x"}
    lines = [
        schema_message("activity_rejects", schema, ["export_name", "file", "line"]),
        record_message("activity_rejects", record),
    ]
    _, error = run_target(config_for(lytics), lines)
    assert error is None
    assert lytics.events[REJECTS] == [record]


def a_tap_reject(raw: str) -> dict[str, Any]:
    """An ``activity_rejects`` record as the tap writes it (raw under its 64 KB cap)."""
    size = len(raw.encode())
    return {
        "export_name": "x", "file": "a.json", "line": 500, "error": "not JSON", "raw": raw,
        "raw_bytes": size, "raw_truncated": False, "job_id": "j1",
        "window_start": "2026-11-20T00:00:00Z", "window_end": "2026-11-20T06:00:00Z",
        "rejected_at": "2026-11-20T06:01:00Z",
    }  # fmt: skip


def test_a_taps_20_kb_raw_is_cut_to_fit_and_the_run_succeeds(lytics, tmp_path):
    """Lytics takes at most 16 KB per event in a batch: the tap's 64 KB raw could not be stored."""
    raw = "é" * 10_000  # 20,000 bytes of two-byte characters: a cut can fall inside one
    lines = [
        schema_message("activity_rejects", REJECTS_SCHEMA, ["export_name", "file", "line"]),
        record_message("activity_rejects", a_tap_reject(raw)),
        state_message({"s": 1}),
    ]
    result = _cli([], config_for(lytics), tmp_path, "".join(lines))  # max_rejected_records 0
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [{"s": 1}]
    (stored,) = lytics.events[REJECTS]
    assert len(orjson.dumps(stored)) <= MAX_REJECT_EVENT_BYTES
    assert stored["raw_truncated"] is True
    assert stored["raw_bytes"] == 20_000
    assert stored["raw"]
    assert raw.startswith(stored["raw"])  # cut between characters
    assert {k: v for k, v in stored.items() if not k.startswith("raw")} == {
        k: v for k, v in a_tap_reject(raw).items() if not k.startswith("raw")
    }


@pytest.mark.parametrize(
    "raw",
    ["é" * 10_000, '"' * 20_000, "\x01" * 5_000, "a" * 65_536, "🙂" * 5_000, "a\u0000" * 4_000],
)
def test_fit_reject_event_cuts_raw_at_a_character_and_notes_it(raw):
    event = orjson.dumps(a_tap_reject(raw) | {"raw_bytes": 70_000})
    fitted = orjson.loads(fit_reject_event(event))
    assert len(orjson.dumps(fitted)) <= MAX_REJECT_EVENT_BYTES
    assert raw.startswith(fitted["raw"])
    assert len(fitted["raw"].encode()) > MAX_REJECT_EVENT_BYTES // 8  # no more cut than needed
    assert fitted["raw_truncated"] is True
    assert fitted["raw_bytes"] == 70_000  # the tap's count of the line, before its own cap


def test_fit_reject_event_leaves_small_events_and_others_alone():
    small = orjson.dumps(a_tap_reject("{oops"))
    assert fit_reject_event(small) is small
    no_raw = orjson.dumps({"head": "x" * 20_000})
    assert fit_reject_event(no_raw) is no_raw
    # Without the tap's raw_bytes the original length is counted here.
    bare = orjson.loads(fit_reject_event(orjson.dumps({"raw": "y" * 20_000})))
    assert (bare["raw_truncated"], bare["raw_bytes"]) == (True, 20_000)


# -- pieces ---------------------------------------------------------------------------------------


def test_rejects_stream_names_and_the_budget():
    assert rejects_stream("cordial_activity") == REJECTS
    assert rejects_stream(REJECTS) == REJECTS
    budget = RejectBudget(3)
    assert budget.take(2)
    assert not budget.take(2)
    assert budget.take(1)
    assert not budget.take(1)
    assert unsendable_reason(b'{"a":"' + b"y" * MAX_EVENT_BYTES_IN_BATCH + b'"}')
    assert unsendable_reason(b'{"a":[{"b":1}]}')
    assert unsendable_reason(b'{"a":"[{ inside text"}') is None


@pytest.mark.parametrize("dryrun", [False, True])
def test_stand_in_refuses_oversized_and_matching_events_in_both_modes(lytics, dryrun):
    import requests

    big = {"id": 1, "pad": "z" * 17_000}
    body = orjson.dumps([big, {"id": 2}, {"id": 3, "flag": "no"}])
    lytics.set_options(refuse_where={"field": "flag", "equals": "no"})
    answer = requests.post(
        f"{lytics.url}/collect/json/s",
        data=body,
        headers={"Authorization": lytics.token},
        params={"dryrun": "true"} if dryrun else {},
        timeout=10,
    ).json()
    assert answer["data"]["rejected_count"] == 2
    assert answer["data"]["message_count"] == 3
    assert lytics.events.get("s", []) == ([] if dryrun else [{"id": 2}])
    # The other reading of the limits page: no per-event size limit.
    lytics.set_options(max_event_bytes_in_batch=None, refuse_where=None)
    answer = requests.post(
        f"{lytics.url}/collect/json/s",
        data=body,
        headers={"Authorization": lytics.token},
        params={"dryrun": "true"},
        timeout=10,
    ).json()
    assert answer["data"]["rejected_count"] == 0
