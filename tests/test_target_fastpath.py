"""The record fast path of TargetLytics uploads exactly what singer-sdk's record path uploads."""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import json
from typing import Any

import orjson
import pytest
from tap_cordial_activity.records import normalize
from tap_cordial_activity.streams import SCHEMA as ACTIVITY_SCHEMA
from target_lytics.target import TargetLytics

from sandbox.events import generate_events
from sandbox.lytics import LyticsStandIn

RAW_SCHEMA = {
    "type": "object",
    "properties": {
        **ACTIVITY_SCHEMA["properties"],
        "first": {"type": ["boolean", "integer", "null"]},
        "time": {"type": "string", "format": "date-time"},
        "message_sent": {"type": ["string", "null"], "format": "date-time"},
        "_sdc_extracted_at": {"type": ["string", "null"], "format": "date-time"},
    },
    "additionalProperties": True,
}


END = datetime.datetime(2026, 11, 20, 6, tzinfo=datetime.UTC)


class PlainPathTarget(TargetLytics):
    """The same target with every record going through singer-sdk's own record path."""

    fast_path_enabled = False


@functools.cache
def singer_input() -> str:
    """Cordial activity as the tap emits it, raw Cordial events, and odd values."""
    lines = [
        {
            "type": "SCHEMA",
            "stream": "activity",
            "schema": ACTIVITY_SCHEMA,
            "key_properties": ["_id"],
        },
        {"type": "SCHEMA", "stream": "raw_activity", "schema": RAW_SCHEMA, "key_properties": []},
    ]
    for line, event in enumerate(generate_events(400, seed=21, end=END), start=1):
        raw = json.loads(json.dumps(event))
        normalize(event, "export.json", line)
        lines.append({"type": "RECORD", "stream": "activity", "record": event})
        if line % 7 == 0:
            raw["_sdc_extracted_at"] = "2024-01-01T00:00:00+00:00"  # removed on both paths
            raw["time"] = raw["time"].replace("+0000", "+02:00")
            raw["ratio"] = 0.1 + line / 3
        lines.append({"type": "RECORD", "stream": "raw_activity", "record": raw})
        if line % 100 == 0:
            lines.append({"type": "STATE", "value": {"n": line}})
    return "".join(json.dumps(message) + "\n" for message in lines)


def run(target_class: type[TargetLytics], config: dict[str, Any], lytics: LyticsStandIn):
    target = target_class(config={"api_token": lytics.token, "api_url": lytics.url, **config})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        target.listen(io.StringIO(singer_input()))
    # Bodies are uploaded concurrently and cut where STATE finds no upload in flight: compare
    # the events each stream received with each query, in any order.
    uploads = sorted(
        (r.stream, sorted(r.query.items()), event)
        for r in lytics.requests
        for event in (orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in orjson.loads(r.body))
    )
    return target, uploads, out.getvalue()


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"include_unmapped_fields": True, "max_request_bytes": 20_000}, id="unmapped"),
        pytest.param({"batch_size_rows": 64}, id="small-batches"),
    ],
)
def test_fast_path_uploads_what_the_sdk_path_uploads(config):
    with LyticsStandIn() as fast_lytics, LyticsStandIn() as plain_lytics:
        fast, fast_uploads, fast_out = run(TargetLytics, config, fast_lytics)
        plain, plain_uploads, plain_out = run(PlainPathTarget, config, plain_lytics)
        assert set(fast.fast_path.sinks) == {"activity", "raw_activity"}
        assert plain.fast_path.sinks == {}
        assert fast_uploads == plain_uploads
        # STATEs are written as their records are accepted: which intermediate ones are written
        # depends on timing, the last one does not.
        for out in (fast_out, plain_out):
            written = [json.loads(line)["n"] for line in out.splitlines()]
            assert written == sorted(set(written))
            assert set(written) <= {100, 200, 300, 400}
            assert written[-1] == 400
        assert fast_lytics.total() == 800
        assert sum(fast_lytics.rejected.values()) == 0


def test_stream_maps_and_record_metadata_use_the_sdk_path(lytics):
    config = {
        "stream_maps": {"raw_activity": {"email": "__NULL__", "source": "'cordial'"}},
        "add_record_metadata": True,
    }
    target, _, _ = run(TargetLytics, config, lytics)
    assert target.fast_path.sinks == {}
    raw = lytics.events["raw_activity"]
    assert len(raw) == 400
    assert all(e["source"] == "cordial" and "email" not in e for e in raw)
    assert all(e["_sdc_received_at"].endswith("Z") for e in raw)


def test_invalid_record_fails_on_both_paths_with_the_field_named(lytics):
    bad = {"_id": "x", "time": "2024-01-01T00:00:00+00:00", "first": "yes please"}
    text = "".join(
        json.dumps(m) + "\n"
        for m in (
            {
                "type": "SCHEMA",
                "stream": "activity",
                "schema": ACTIVITY_SCHEMA,
                "key_properties": ["_id"],
            },
            {"type": "RECORD", "stream": "activity", "record": bad},
        )
    )
    for target_class in (TargetLytics, PlainPathTarget):
        target = target_class(config={"api_token": lytics.token, "api_url": lytics.url})
        with pytest.raises(Exception, match=r"first") as info:
            target.listen(io.StringIO(text))
        assert "activity" in str(info.value)
