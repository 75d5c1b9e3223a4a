"""The record fast path: runs of RECORDs go straight to the sink when nothing would change them.

For a stream with no stream maps, no flattening and no record metadata, singer-sdk's per-record work
that changes nothing (record copy, identity transform, context, the date-time-to-object parsing the
mapping does itself, ``preprocess_record``, debug hook) is skipped. Kept: line checks, removal of
``_sdc_*`` columns, validation, key-property check, tallies, the record counter, draining a full
sink and the max-record-age drain. Records come in runs from :mod:`target_lytics.reader`; a stream
with a :class:`~target_lytics.typed_records.TypedRecordEncoder` has its records checked and mapped
by it, the others (and records it refuses) take the checks above. Tallies and the record counter
are added per run part (cut where the sink fills, so drains fall where the SDK's would), and the
max-record-age check runs once per run. Checked against singer-sdk 0.54.9's
``Target._process_record_message``; tests/test_target_fastpath.py checks both paths upload the same
events. One difference: an unparseable date-time in a field that is not sent fails the SDK path only
(the fast path parses date-times only when it sends them).
"""

from __future__ import annotations

import typing as t

import msgspec
from singer_sdk.exceptions import InvalidRecord
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.sinks import Sink

from target_lytics.errors import LyticsError, RunRecordError
from target_lytics.sdk_private import (
    HookedTarget,
    check_key_properties,
    record_validator,
    remove_sdc_metadata,
)
from target_lytics.sinks import LyticsSink
from target_lytics.typed_records import decode_record

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

    def takes(self, stream_name: str) -> bool:
        """Whether the stream's records may come as runs (see :mod:`target_lytics.reader`)."""
        sink = self.sinks.get(stream_name)
        return sink is not None and self.target.active_sink(stream_name) is sink

    def process_run(self, stream_name: str, records: list[msgspec.Raw]) -> None:
        """Process consecutive records of a qualifying stream, given as raw JSON.

        Tallies, the record counter and the full-sink check are done once per part of the run
        that fits in the sink, so a drain happens where the SDK's record loop would drain.
        """
        sink = self.sinks[stream_name]
        typed = sink.typed_encoder
        done = 0
        while done < len(records):
            room = max(1, sink.max_size - sink.current_size)
            part = records[done : done + room]
            raw: msgspec.Raw | None = None
            try:
                if typed is None:
                    for raw in part:
                        self._check_and_add(sink, decode_record(raw))
                else:
                    encode, add_event = typed.encode, sink.add_event
                    for raw in part:
                        event = encode(raw)
                        if event is None:
                            self._check_and_add(sink, decode_record(raw))
                        else:
                            add_event(event)
            except LyticsError:
                raise
            except Exception as exc:
                # The error path only: which record of the run failed, for its line number.
                index = next((i for i, item in enumerate(part) if item is raw), 0)
                raise RunRecordError(exc, done + index) from exc
            done += len(part)
            sink.tally_record_read(len(part))
            sink.record_counter_metric.increment(len(part))
            if sink.is_full:
                self.target.logger.info(
                    "Target sink for '%s' is full. Current size is '%s'. Draining...",
                    sink.stream_name,
                    sink.current_size,
                )
                self.target.drain_one(sink)
        self.target.drain_if_records_too_old()

    @staticmethod
    def _check_and_add(sink: LyticsSink, record: t.Any) -> None:
        """The SDK's per-record checks (without its record copy and transforms), then the sink."""
        if not isinstance(record, dict):
            raise InvalidRecord(
                f"A RECORD of stream '{sink.stream_name}' holds a {type(record).__name__}, "
                "not a JSON object",
                record,
            )
        if not _SDC_COLUMNS.isdisjoint(record):
            remove_sdc_metadata(sink, record)
        validator = record_validator(sink)
        if validator is not None:
            try:
                validator.validate(record)
            except InvalidRecord as exc:
                # The error ends the run in one line (no traceback); a warning when it does not.
                if sink.fail_on_record_validation_exception:
                    raise
                sink.logger.warning("Record validation failed: %s", exc.error_message)
        for key in sink.key_properties:
            if key not in record:
                check_key_properties(sink, record)  # raises the SDK's error
        sink.process_record(record, {})
