"""target-lytics: field mapping, value conversion, settings and body building (no server needed)."""

from __future__ import annotations

import datetime
import decimal
import logging

import orjson
import pytest
import requests
from singer_sdk.exceptions import ConfigValidationError
from tap_cordial_activity.records import normalize
from target_lytics.client import LyticsClient, RetryPolicy, UploadResult, parse_retry_after
from target_lytics.errors import InputError, LyticsError, ValueConversionError
from target_lytics.mapping import (
    RecordMapper,
    StreamMapping,
    json_default,
    to_bool,
    to_rfc3339_utc,
)
from target_lytics.settings import DEFAULT_STREAMS
from target_lytics.sinks import BodyBuilder
from target_lytics.target import TargetLytics

from sandbox.events import generate_events

LOG = logging.getLogger("test")

# The activity stream's schema as the tap declares it (the fields the mapping reads are typed).
ACTIVITY_SCHEMA = {
    "type": "object",
    "properties": {
        "_id": {"type": "string"},
        "cID": {"type": "string"},
        "mcID": {"type": ["string", "null"]},
        "action": {"type": "string"},
        "time": {"type": "string", "format": "date-time"},
        "first": {"type": ["boolean", "null"]},
        "message_name": {"type": ["string", "null"]},
        "message_sent": {"type": ["string", "null"], "format": "date-time"},
        "properties": {"type": ["object", "null"]},
        "mTags": {"type": ["array", "null"], "items": {"type": "string"}},
    },
    "additionalProperties": True,
}


def activity_mapper(**kwargs) -> RecordMapper:
    return RecordMapper(
        stream_name="activity",
        schema=ACTIVITY_SCHEMA,
        mapping=StreamMapping.from_setting("activity", DEFAULT_STREAMS["activity"]),
        include_unmapped_fields=kwargs.pop("include_unmapped_fields", False),
        logger=LOG,
    )


def tap_records(count: int, seed: int = 11) -> list[dict]:
    """Generator output passed through the tap's own normalization."""
    records = []
    for line, event in enumerate(generate_events(count, seed=seed), start=1):
        normalize(event, "export.json", line)
        records.append(event)
    return records


def test_default_mapping_of_real_cordial_records():
    mapper = activity_mapper()
    records = tap_records(400)
    seen_first = set()
    for record in records:
        event = mapper.map(record)
        assert set(event) <= {
            "cr_contact_id",
            "cr_first",
            "cr_system_event_id",
            "cr_message_contact_id",
            "cr_message_name",
            "cr_message_sent_timestamp",
            "cr_event_action",
            "cr_event_timestamp",
        }
        assert event["cr_contact_id"] == record["cID"]
        assert event["cr_system_event_id"] == record["_id"]
        assert event["cr_event_action"] == record["action"]
        assert event["cr_event_timestamp"].endswith("Z")
        assert "+" not in event["cr_event_timestamp"]
        expected_time = datetime.datetime.fromisoformat(record["time"]).astimezone(datetime.UTC)
        assert datetime.datetime.fromisoformat(event["cr_event_timestamp"]) == expected_time
        if "message_sent" in record:
            assert event["cr_message_sent_timestamp"].endswith("Z")
        else:
            assert "cr_message_sent_timestamp" not in event
        if "first" in record:
            assert type(event["cr_first"]) is bool
            seen_first.add(event["cr_first"])
        else:
            assert "cr_first" not in event
        for absent in ("mcID", "message_name"):
            if record.get(absent) is None:
                assert {"mcID": "cr_message_contact_id", "message_name": "cr_message_name"}[
                    absent
                ] not in event
    assert seen_first == {True, False}


def test_cordial_offsets_become_utc_z():
    mapper = activity_mapper()
    event = mapper.map(
        {
            "_id": "e1",
            "cID": "c1",
            "action": "open",
            "time": "2017-03-13T22:48:40+00:00",
            "message_sent": "2017-03-13T23:48:40+01:00",
            "first": True,
            "mcID": None,
        }
    )
    assert event == {
        "cr_system_event_id": "e1",
        "cr_contact_id": "c1",
        "cr_event_action": "open",
        "cr_event_timestamp": "2017-03-13T22:48:40Z",
        "cr_message_sent_timestamp": "2017-03-13T22:48:40Z",
        "cr_first": True,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2017-03-13T22:48:40+0000", "2017-03-13T22:48:40Z"),
        ("2017-03-13T22:48:40+00:00", "2017-03-13T22:48:40Z"),
        ("2017-03-13T22:48:40Z", "2017-03-13T22:48:40Z"),
        ("2017-03-13T22:48:40.250-05:00", "2017-03-14T03:48:40.250000Z"),
        ("2017-03-13T22:48:40", "2017-03-13T22:48:40Z"),
        (
            datetime.datetime(2017, 3, 13, 22, 48, 40, tzinfo=datetime.UTC),
            "2017-03-13T22:48:40Z",
        ),
    ],
)
def test_rfc3339_utc(value, expected):
    assert to_rfc3339_utc(value) == expected


def test_bad_date_time_names_the_field():
    mapper = activity_mapper()
    with pytest.raises(ValueConversionError, match=r"field 'time'.*not-a-date"):
        mapper.map({"_id": "e", "cID": "c", "action": "open", "time": "not-a-date"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("true", True),
        ("1", True),
        ("false", False),
        ("0", False),
        ("TRUE", True),
        (decimal.Decimal("1"), True),
    ],
)
def test_booleans(value, expected):
    assert to_bool(value) is expected
    event = activity_mapper().map({"first": value, "time": "2020-01-01T00:00:00Z"})
    assert event["cr_first"] is expected


def test_bad_boolean_is_an_error():
    with pytest.raises(ValueConversionError, match="not a boolean"):
        activity_mapper().map({"first": "maybe"})


def test_user_mapping_and_include_unmapped():
    mapping = StreamMapping.from_setting(
        "activity", {"lytics_stream": "x", "fields": {"cID": "uid", "time": "ts"}}
    )
    record = {"cID": "c", "time": "2020-01-01T00:00:00+00:00", "email": "a@b", "action": None}
    only_mapped = RecordMapper(
        stream_name="activity",
        schema=ACTIVITY_SCHEMA,
        mapping=mapping,
        include_unmapped_fields=False,
        logger=LOG,
    )
    assert only_mapped.map(record) == {"uid": "c", "ts": "2020-01-01T00:00:00Z"}
    with_unmapped = RecordMapper(
        stream_name="activity",
        schema=ACTIVITY_SCHEMA,
        mapping=mapping,
        include_unmapped_fields=True,
        logger=LOG,
    )
    assert with_unmapped.map(record) == {"uid": "c", "ts": "2020-01-01T00:00:00Z", "email": "a@b"}


@pytest.mark.parametrize("name", ["b", "B"])
def test_an_unmapped_field_outside_the_schema_named_like_a_mapped_one_is_refused(name):
    """Before, {"id": "x", "b": "y"} became {"b": "x"}: the record's "b" dropped without a word."""
    mapper = RecordMapper(
        stream_name="orders",
        schema={"type": "object", "properties": {"id": {"type": "string"}}},
        mapping=StreamMapping.from_setting("orders", {"fields": {"id": "b"}}),
        include_unmapped_fields=True,
        logger=LOG,
    )
    assert mapper.map({"id": "x", "c": "z", name: None}) == {"b": "x", "c": "z"}
    with pytest.raises(InputError) as refused:
        mapper.map({"id": "x", name: "y"})
    message = str(refused.value)
    assert message.startswith(f"stream 'orders': field {name!r} is not in the stream's schema")
    assert "'id' is mapped onto" in message
    assert "include_unmapped_fields" in message


def test_pass_through_keeps_fields_and_encodes_arrays_of_objects(caplog):
    schema = {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "props": {"type": "object"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "lines": {"type": "array", "items": {"type": "object"}},
            "at": {"type": "string", "format": "date-time"},
            "gone": {"type": ["string", "null"]},
        },
    }
    mapper = RecordMapper(
        stream_name="orders",
        schema=schema,
        mapping=StreamMapping.from_setting("orders", None),
        include_unmapped_fields=False,
        logger=logging.getLogger("test.orders"),
    )
    assert mapper.mapping.lytics_stream == "orders"
    record = {
        "id": 7,
        "props": {"k": "v", "items": [{"sku": "a", "qty": 1}], "nums": [1, 2]},
        "tags": ["a", "b"],
        "lines": [{"n": 1}],
        "at": "2020-01-01T01:00:00+01:00",
        "gone": None,
        "extra": {"deep": {"list": [[{"x": 1}]]}},
    }
    with caplog.at_level(logging.WARNING):
        event = mapper.map(record)
        mapper.map(record)
    assert event["id"] == 7
    assert event["tags"] == ["a", "b"]
    assert event["at"] == "2020-01-01T00:00:00Z"
    assert "gone" not in event
    # Arrays of objects are sent as JSON text, never dropped.
    assert orjson.loads(event["props"]) == record["props"]
    assert orjson.loads(event["lines"]) == record["lines"]
    assert orjson.loads(event["extra"]) == record["extra"]
    warnings = [r.getMessage() for r in caplog.records if "array of objects" in r.getMessage()]
    assert len(warnings) == 3  # once per field, not once per record
    # Objects without arrays of objects stay objects.
    assert mapper.map({"props": {"a": {"b": [1, 2]}}}) == {"props": {"a": {"b": [1, 2]}}}


def test_decimals_are_written_exactly():
    data = orjson.dumps({"price": decimal.Decimal("19.90"), "n": 1}, default=json_default)
    assert data == b'{"price":19.90,"n":1}'


def test_body_builder_respects_limit():
    builder = BodyBuilder(20)
    events = [b'{"a":1}', b'{"b":22}', b'{"c":333}']
    assert builder.add(events[0])
    assert builder.add(events[1])
    assert builder.size == len(b'[{"a":1},{"b":22}]') == 18
    assert not builder.add(events[2])  # 18 + 1 + 9 > 20: refused, nothing added
    assert builder.size == 18
    body, count = builder.take()
    assert body == b'[{"a":1},{"b":22}]'
    assert count == 2
    assert orjson.loads(body) == [{"a": 1}, {"b": 22}]
    assert builder.count == 0
    assert builder.size == 2
    assert not builder.add(b'{"x":"' + b"y" * 20 + b'"}')  # alone it would not fit either
    assert builder.add(b'{"x":"yyyyyyyyyy"}')  # exactly 20 bytes with the brackets
    assert builder.take() == (b'[{"x":"yyyyyyyyyy"}]', 1)


def test_settings_defaults_and_merge():
    target = TargetLytics(config={"api_token": "t"})
    assert target.max_request_bytes == 5_000_000
    assert target.config["api_url"] == "https://api.lytics.io"
    assert target.config["max_retries"] == 8
    assert target.config["request_timeout_seconds"] == 60
    assert target.stream_mapping("activity").lytics_stream == "cordial_activity"
    assert target.stream_mapping("activity").timestamp_field == "cr_event_timestamp"
    assert target.stream_mapping("other").lytics_stream == "other"
    assert target.stream_mapping("other").fields is None

    merged = TargetLytics(
        config={
            "api_token": "t",
            "streams": {
                "activity": {"lytics_stream": "mine", "fields": {"cID": "id"}},
                "orders": {"lytics_stream": "shop_orders", "timestamp_field": "at"},
            },
        }
    )
    activity = merged.stream_mapping("activity")
    assert activity.lytics_stream == "mine"
    assert activity.fields == {"cID": "id"}
    assert activity.timestamp_field is None  # the user's entry replaces the default one
    assert merged.stream_mapping("orders").lytics_stream == "shop_orders"


def test_max_request_bytes_above_10mb_is_rejected():
    with pytest.raises(ConfigValidationError) as info:
        TargetLytics(config={"api_token": "t", "max_request_bytes": 10_000_001})
    assert info.value.errors == [
        "`max_request_bytes` is 10000001; Lytics accepts at most 10000000 bytes per request."
    ]
    TargetLytics(config={"api_token": "t", "max_request_bytes": 10_000_000})


def test_api_token_is_required_and_secret():
    with pytest.raises(ConfigValidationError):
        TargetLytics(config={})
    prop = TargetLytics.config_jsonschema["properties"]["api_token"]
    assert prop["secret"] is True
    assert prop["writeOnly"] is True


def test_retry_after_and_backoff():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    policy = RetryPolicy(max_retries=8, initial_delay_seconds=1, max_delay_seconds=5)
    assert policy.backoff(1, rng=lambda: 1.0) == 1
    assert policy.backoff(3, rng=lambda: 1.0) == 4
    assert policy.backoff(10, rng=lambda: 1.0) == 5
    assert policy.backoff(3, rng=lambda: 0.5) == 2


@pytest.mark.parametrize(
    "text",
    [
        "2017-03-13T22:48:40+00:00",
        "2017-03-13T22:48:40+01:00",
        "2017-03-13T22:48:40.5+00:00",
        "2017-03-13 22:48:40+00:00",
        "2017-W11-1T22:48:40+00:00",
    ],
)
def test_string_shortcut_matches_datetime_path(text):
    parsed = datetime.datetime.fromisoformat(text)
    assert to_rfc3339_utc(text) == to_rfc3339_utc(parsed)


def _response(payload: dict) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response.headers["Content-Type"] = "application/json"
    response._content = orjson.dumps(payload)
    return response


def _accepted(payload: dict, count: int) -> UploadResult:
    client = LyticsClient(
        api_url="https://api.lytics.io",
        api_token="t",
        timeout_seconds=1,
        retry=RetryPolicy(max_retries=0, initial_delay_seconds=0, max_delay_seconds=0),
    )
    url = client.collect_url("s")
    return client._accepted(_response(payload), url, "s", count, f"upload of {count} events")


def test_success_envelope_with_string_status_and_counts():
    counts = {"message_count": "3", "rejected_count": "0"}
    result = _accepted({"status": "success", "data": counts}, 3)
    assert result.message_count == 3
    assert result.rejected_count == 0
    assert result.status == "success"


def test_counts_typed_number_may_come_as_whole_floats():
    # The published DataUploadModel types message_count as "number".
    result = _accepted({"status": 200, "data": {"message_count": 3.0, "rejected_count": 0.0}}, 3)
    assert (result.message_count, result.rejected_count) == (3, 0)


def test_rejected_count_as_text_still_ends_the_run():
    with pytest.raises(LyticsError, match="rejected 2 of 5 events"):
        _accepted({"status": "200", "data": {"message_count": 5, "rejected_count": "2"}}, 5)
