"""Record writers, one per output: RECORD lines by orjson, singer-sdk's messages, BATCH files.

:func:`write_window` hands each writer a window's records in runs and is the one place that reads
the export runner's checkpoint marker (``None`` among the records). A writer only writes.

The fast and the BATCH writer build Singer JSON by hand, mirroring singer-sdk's record and batch
message writers: tests/test_tap_fast_path.py compares their output with the SDK path's.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, BinaryIO, Protocol

import orjson

from tap_cordial_activity.batch_files import BatchFileWriter

__all__ = ["BatchWriter", "FastWriter", "RecordWriter", "SdkWriter", "write_window"]

#: Records are handed to a writer in runs of this many (fewer syscalls, bounded memory).
RUN_LENGTH = 1000

Record = dict[str, Any]


class Counter(Protocol):
    """singer-sdk's record / batch counters, as the writers use them."""

    def increment(self, value: int = 1) -> None:
        """Count ``value`` more."""


class RecordWriter(Protocol):
    """One output of the stream's records."""

    def write(self, records: list[Record]) -> Iterable[Record]:
        """Write a run of records (the list is the writer's); the records to pass on."""

    def flush(self) -> None:
        """Put out everything written so far: a STATE message follows."""


def write_window(
    writer: RecordWriter,
    records: Iterator[Record | None],
    *,
    checkpoint: Callable[[], None],
    total: int,
    limit: int | None,
    stop_at_limit: Callable[[int], None],
) -> Generator[Record, None, int]:
    """Write one window's records through ``writer``; yield what it passes on; return the total.

    ``None`` among ``records`` is a checkpoint: every record read before it is written and put
    out, then ``checkpoint()`` runs (a later run resuming from it skips exactly those records).
    ``total`` counts the run's records so far; at ``limit`` (a dry run) the records before it
    are put out and ``stop_at_limit(limit)`` ends the sync.
    """
    run: list[Record] = []
    append = run.append
    for record in records:
        if record is None:
            yield from writer.write(run)
            run = []
            append = run.append
            writer.flush()
            checkpoint()
            continue
        if limit is not None and total >= limit:
            yield from writer.write(run)
            run = []
            append = run.append
            writer.flush()
            stop_at_limit(limit)
        append(record)
        total += 1
        if len(run) >= RUN_LENGTH:
            yield from writer.write(run)
            run = []
            append = run.append
    yield from writer.write(run)
    writer.flush()
    return total


class SdkWriter:
    """Records through singer-sdk (stream maps, type conformance, its message writer)."""

    def __init__(self, write_record: Callable[[Record], None] | None, counter: Counter) -> None:
        """``write_record`` writes one record; None writes nothing (records are only passed on)."""
        self._write_record = write_record
        self._counter = counter

    def write(self, records: list[Record]) -> Iterable[Record]:
        """Write each record as singer-sdk does; pass them all on."""
        if self._write_record is not None:
            for record in records:
                self._write_record(record)
        self._counter.increment(len(records))
        return records

    def flush(self) -> None:
        """Nothing held back: singer-sdk writes each message at once."""


class FastWriter:
    """RECORD lines written straight to stdout's byte buffer by orjson."""

    def __init__(
        self,
        stream_name: str,
        out: BinaryIO,
        counter: Counter,
        mark_state_pending: Callable[[], None],
    ) -> None:
        """Lines of ``stream_name`` into ``out``."""
        self._head = b'{"type":"RECORD","stream":' + orjson.dumps(stream_name) + b',"record":'
        self._out = out
        self._counter = counter
        self._mark_state_pending = mark_state_pending

    def write(self, records: list[Record]) -> Iterable[Record]:
        """Write the run's RECORD lines in one call; pass nothing on."""
        if not records:
            return ()
        dumps = orjson.dumps
        head = self._head
        # The extraction time is stamped once per run rather than per record (the run's records
        # are read a few ms apart): the only way these lines differ from the SDK's. msgspec (the
        # SDK path's writer) spells UTC as Z; orjson needs OPT_UTC_Z to agree.
        end = (
            b',"time_extracted":'
            + dumps(datetime.datetime.now(datetime.UTC), option=orjson.OPT_UTC_Z)
            + b"}\n"
        )
        # Same JSON as RecordMessage.to_dict() through the msgspec writer.
        self._out.write(b"".join([head + dumps(record) + end for record in records]))
        self._out.flush()
        self._counter.increment(len(records))
        # As in the SDK's record writer: records went out, so STATE is due again.
        self._mark_state_pending()
        return ()

    def flush(self) -> None:
        """Nothing held back: each run is written at once."""


class BatchWriter:
    """Records into BATCH files, each named by a BATCH message line before the next STATE."""

    def __init__(
        self,
        files: BatchFileWriter,
        out: BinaryIO,
        counters: tuple[Counter, Counter],
        mark_state_pending: Callable[[], None],
    ) -> None:
        """``counters``: the record and the batch counter."""
        self.files = files
        self._out = out
        self._records, self._batches = counters
        self._mark_state_pending = mark_state_pending

    def write(self, records: list[Record]) -> Iterable[Record]:
        """Add the run to the current file; a full file (``batch_size`` records) goes out."""
        dumps = orjson.dumps
        newline = orjson.OPT_APPEND_NEWLINE
        lines = [dumps(record, option=newline) for record in records]
        start = 0
        while start < len(lines):
            part = lines[start:start + self.files.room]
            start += len(part)
            self._records.increment(len(part))
            self.files.add(part)
            if self.files.pending >= self.files.batch_size:
                self.flush()
        return ()

    def flush(self) -> None:
        """Write the records collected so far as one file and its BATCH message."""
        message = self.files.write_file()
        if message is not None:
            self._out.write(message)
            self._out.flush()
            # As in the SDK's batch writer: records went out, so STATE is due again.
            self._mark_state_pending()
            self._batches.increment()
