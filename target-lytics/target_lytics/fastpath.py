"""The record fast path: runs of RECORDs go straight to the sink when nothing would change them.

For a stream with no stream maps, no flattening and no record metadata, singer-sdk's per-record work
that changes nothing (record copy, identity transform, context, the date-time-to-object parsing the
mapping does itself, ``preprocess_record``, debug hook) is skipped. Kept: line checks, removal of
``_sdc_*`` columns, validation, key-property check, tallies, the record counter, draining a full
sink and the max-record-age drain. Records come in runs from :mod:`target_lytics.reader` and go
to the sink's one way in for raw records (``LyticsSink.add_raws``, singer-sdk's checks): a stream
with a :class:`~target_lytics.typed_records.TypedRecordEncoder` has its records checked and mapped
by it, the others (and records it refuses) take the checks above. Tallies and the record counter
are added per run part (cut where the sink fills, so drains fall where the SDK's would), and the
max-record-age check runs once per run. Checked against singer-sdk 0.54.9's
``Target._process_record_message``; tests/test_target_fastpath.py checks both paths upload the same
events. One difference: an unparseable date-time in a field that is not sent fails the SDK path only
(the fast path parses date-times only when it sends them).
"""

from __future__ import annotations

import dataclasses
import typing as t

from singer_sdk.mapper import SameRecordTransform
from singer_sdk.sinks import Sink

from target_lytics.errors import RunRecordError
from target_lytics.sinks import LyticsSink

if t.TYPE_CHECKING:
    import msgspec

    from target_lytics.sdk_private import HookedTarget


@dataclasses.dataclass(frozen=True)
class RunPart:
    """Part of a run of RECORD lines, as a record source of ``LyticsSink.add_raws``."""

    #: Index of the part's first record in the run.
    first: int
    #: RECORD messages take singer-sdk's per-record checks.
    sdk_checks: t.ClassVar[bool] = True

    def error(self, error: Exception, index: int) -> Exception:
        """The failing record's index in the run (the reader turns it into its line number)."""
        return RunRecordError(error, self.first + index)


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
        done = 0
        while done < len(records):
            room = max(1, sink.max_size - sink.current_size)
            part = records[done : done + room]
            sink.add_raws(part, RunPart(done))
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
