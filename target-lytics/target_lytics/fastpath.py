"""The record fast path: RECORD messages straight to the sink when nothing would change them.

For a stream with no stream maps, no flattening and no record metadata, singer-sdk's per-record work
that changes nothing (record copy, identity transform, context, the date-time-to-object parsing the
mapping does itself, ``preprocess_record``, debug hook) is skipped. Kept: line checks, removal of
``_sdc_*`` columns, validation, key-property check, tallies, the record counter, draining a full
sink and the max-record-age drain. Checked against singer-sdk 0.54.9's
``Target._process_record_message``; tests/test_target_fastpath.py checks both paths upload the same
events. One difference: an unparseable date-time in a field that is not sent fails the SDK path only
(the fast path parses date-times only when it sends them).
"""

from __future__ import annotations

from singer_sdk.exceptions import InvalidRecord
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.sinks import Sink

from target_lytics.sdk_private import (
    HookedTarget,
    check_key_properties,
    record_validator,
    remove_sdc_metadata,
)
from target_lytics.sinks import LyticsSink

#: singer-sdk's record metadata columns, removed from records when add_record_metadata is off.
_SDC_COLUMNS = frozenset(
    {
        "_sdc_extracted_at",
        "_sdc_received_at",
        "_sdc_batched_at",
        "_sdc_deleted_at",
        "_sdc_sequence",
        "_sdc_table_version",
        "_sdc_sync_started_at",
    }
)


class FastRecordPath:
    """Sends a qualifying stream's records to its sink without singer-sdk's record loop."""

    def __init__(self, target: HookedTarget) -> None:
        """Start with no stream qualifying."""
        self.target = target
        #: Sinks that take the fast path, by Singer stream name; rebuilt on each SCHEMA.
        self.sinks: dict[str, LyticsSink] = {}

    def stream_registered(self, stream_name: str) -> None:
        """Decide, after its SCHEMA, whether the stream may take the fast path."""
        self.sinks.pop(stream_name, None)
        sink = self._qualifying_sink(stream_name)
        if sink is not None:
            self.sinks[stream_name] = sink

    def _qualifying_sink(self, stream_name: str) -> LyticsSink | None:
        """The sink when nothing between the message and the sink would change the record."""
        maps = self.target.mapper.stream_maps.get(stream_name) or []
        if len(maps) != 1:
            return None
        stream_map = maps[0]
        if (
            type(stream_map) is not SameRecordTransform
            or stream_map.stream_alias != stream_name
            or (stream_map.flattening_options and stream_map.flattening_enabled)
        ):
            return None
        sink = self.target.active_sink(stream_name)
        if (
            not isinstance(sink, LyticsSink)
            or sink.include_sdc_metadata_properties
            or type(sink).preprocess_record is not Sink.preprocess_record
        ):
            return None
        return sink

    def process(self, message_dict: dict) -> bool:
        """Process one RECORD if its stream qualifies; False (nothing done) when it does not."""
        stream_name: str = message_dict.get("stream", "")
        sink = self.sinks.get(stream_name)
        if sink is None or self.target.active_sink(stream_name) is not sink:
            return False
        if "record" not in message_dict:
            self.target.require_fields(message_dict, requires={"stream", "record"})  # raises
        record = message_dict["record"]
        if not _SDC_COLUMNS.isdisjoint(record):
            remove_sdc_metadata(sink, record)
        validator = record_validator(sink)
        if validator is not None:
            try:
                validator.validate(record)
            except InvalidRecord:
                sink.logger.exception("Record validation failed")
                if sink.fail_on_record_validation_exception:
                    raise
        for key in sink.key_properties:
            if key not in record:
                check_key_properties(sink, record)  # raises the SDK's error
        sink.tally_record_read()
        sink.process_record(record, {})
        sink.record_counter_metric.increment()
        if sink.is_full:
            self.target.logger.info(
                "Target sink for '%s' is full. Current size is '%s'. Draining...",
                sink.stream_name,
                sink.current_size,
            )
            self.target.drain_one(sink)
        self.target.drain_if_records_too_old()
        return True
