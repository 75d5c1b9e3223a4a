"""target-lytics: typed decoding gives the general way's events, and refuses what it must."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import fastjsonschema
import orjson
import pytest
from tap_cordial_activity.records import normalize
from tap_cordial_activity.streams import SCHEMA as TAP_SCHEMA
from target_lytics.errors import ValueConversionError
from target_lytics.mapping import RecordMapper, StreamMapping, json_default
from target_lytics.settings import DEFAULT_STREAMS
from target_lytics.typed_records import TypedRecordEncoder, decode_record

from sandbox.events import generate_events

LOG = logging.getLogger("test")
END = datetime.datetime(2026, 11, 20, 6, tzinfo=datetime.UTC)


def mapper(schema: dict, entry: dict | None = None, **kwargs: Any) -> RecordMapper:
    return RecordMapper(
        stream_name="activity",
        schema=schema,
        mapping=StreamMapping.from_setting("activity", entry or DEFAULT_STREAMS["activity"]),
        include_unmapped_fields=kwargs.get("include_unmapped_fields", False),
        logger=LOG,
    )


def encoder(schema: dict = TAP_SCHEMA, entry: dict | None = None) -> TypedRecordEncoder:
    found = TypedRecordEncoder.for_stream(schema, ["_id"], mapper(schema, entry))
    assert found is not None
    return found


def general_way(schema: dict, raws: list[bytes]) -> list[bytes]:
    """What the sink sends for each record without typed decoding (validation passed)."""
    validate = fastjsonschema.compile(schema, use_formats=False)
    record_mapper = mapper(schema)
    events = []
    for raw in raws:
        record = decode_record(raw)
        validate(record)
        events.append(orjson.dumps(record_mapper.map(record), default=json_default))
    return events


def tap_records(count: int) -> list[bytes]:
    records = []
    for line, event in enumerate(generate_events(count, seed=5, end=END), start=1):
        normalize(event, "export.json", line)
        records.append(orjson.dumps(event))
    return records


def test_the_tap_schema_and_default_mapping_are_typed():
    assert encoder() is not None


def test_typed_events_equal_the_general_way():
    typed = encoder()
    records = tap_records(3000)
    for raw, expected in zip(records, general_way(TAP_SCHEMA, records), strict=True):
        event = typed.encode(raw)
        assert event is not None, raw
        assert orjson.loads(event) == orjson.loads(expected)


@pytest.mark.parametrize(
    "record",
    [
        # Arrays of objects inside an object field: sent as JSON text, like the general way.
        {"properties": {"items": [{"sku": "a", "price": 1.5}], "n": 2}},
        {"properties": {"tags": ["a", "b"], "total": 261.52}},
        {"sp": {"campaign": "c1", "variants": [[{"x": 1}]]}},
        {"properties": {"note": "a [bracket] in text"}},
        {"properties": None, "first": False, "message_sent": None},
        {"properties": {}, "mTags": []},
        {"time": "2026-11-20T05:00:00.123+02:00", "message_sent": "2026-11-20T05:00:00"},
    ],
)
def test_odd_values_equal_the_general_way(record):
    raw = orjson.dumps(
        {"_id": "e1", "cID": "c1", "time": "2026-11-20T05:00:00+00:00", **record},
        option=orjson.OPT_PASSTHROUGH_DATETIME,
    )
    event = encoder().encode(raw)
    assert event is not None
    assert orjson.loads(event) == orjson.loads(general_way(TAP_SCHEMA, [raw])[0])


@pytest.mark.parametrize(
    "raw",
    [
        b'{"_id":"e1","time":"2026-11-20T05:00:00+00:00","extra":1}',  # outside the schema
        b'{"_id":"e1","time":"2026-11-20T05:00:00+00:00","_sdc_extracted_at":"x"}',
        b'{"_id":"e1","time":"2026-11-20T05:00:00+00:00","cID":5}',  # wrong type
        b'{"_id":"e1","time":"2026-11-20T05:00:00+00:00","first":1}',
        b'{"time":"2026-11-20T05:00:00+00:00"}',  # key property missing
        b'{"_id":"e1"}',  # required field missing
        b'{"_id":null,"time":"2026-11-20T05:00:00+00:00"}',
        b'{"_id":"e1","time":"2026-11-20T05:00:00+00:00","properties":"text"}',
        b'{"_id":"e1","time":"2026-11-20T05:00:00+00:00","properties":[{"a":1}]}',
        b'{"_id":"e1","time":"2026-11-20T05:00:00+00:00","mTags":[1]}',
        b"[1, 2]",
    ],
)
def test_records_outside_the_typed_check_go_the_general_way(raw):
    assert encoder().encode(raw) is None


def test_an_integer_written_as_float_goes_the_general_way():
    schema = {
        "type": "object",
        "properties": {"_id": {"type": "string"}, "n": {"type": ["integer", "null"]}},
    }
    typed = encoder(schema, {"fields": {"_id": "id", "n": "n"}})
    assert typed.encode(b'{"_id":"a","n":3}') == b'{"id":"a","n":3}'
    # JSON schema calls 1.0 an integer; msgspec does not: the general way decides.
    assert typed.encode(b'{"_id":"a","n":1.0}') is None


def test_a_bad_date_time_names_the_field_as_the_general_way_does():
    raw = b'{"_id":"e1","time":"2026-11-20T05:00:00+00:00","message_sent":"yesterday"}'
    with pytest.raises(ValueConversionError) as typed_error:
        encoder().encode(raw)
    with pytest.raises(ValueConversionError) as general_error:
        general_way(TAP_SCHEMA, [raw])
    assert str(typed_error.value) == str(general_error.value)
    assert "field 'message_sent'" in str(typed_error.value)


@pytest.mark.parametrize(
    "change",
    [
        {"n": {"type": "number"}},  # Decimal exactness: left to the general way
        {"action": {"type": "string", "enum": ["open"]}},
        {"action": {"type": "string", "maxLength": 3}},
        {"action": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
        {"sp": {"type": "object", "properties": {"a": {"type": "string"}}}},
        {"sp": {"type": "object", "additionalProperties": False}},
        {"mTags": {"type": "array"}},
        {"mTags": {"type": "array", "items": {"type": "object"}}},
    ],
)
def test_schemas_beyond_the_typed_subset_go_the_general_way(change):
    schema = {**TAP_SCHEMA, "properties": {**TAP_SCHEMA["properties"], **change}}
    assert TypedRecordEncoder.for_stream(schema, ["_id"], mapper(schema)) is None


def test_mappings_that_depend_on_the_record_go_the_general_way():
    passthrough = mapper(TAP_SCHEMA, {"lytics_stream": "activity"})
    assert TypedRecordEncoder.for_stream(TAP_SCHEMA, ["_id"], passthrough) is None
    unmapped = mapper(TAP_SCHEMA, include_unmapped_fields=True)
    assert TypedRecordEncoder.for_stream(TAP_SCHEMA, ["_id"], unmapped) is None
    # A mapped field the schema does not declare.
    entry = {"fields": {"_id": "id", "undeclared": "u"}}
    assert TypedRecordEncoder.for_stream(TAP_SCHEMA, ["_id"], mapper(TAP_SCHEMA, entry)) is None
