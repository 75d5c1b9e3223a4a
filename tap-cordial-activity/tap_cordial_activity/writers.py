"""Record writers, one per output: RECORD lines by orjson, singer-sdk's messages, BATCH files.

:func:`write_window` hands each writer a window's records one by one, has it put them out in runs,
and is the one place that reads the export runner's checkpoint marker (``None`` among the records).
A writer only writes.

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

#: Records between two writes of a writer's output (fewer syscalls, bounded memory).
RUN_LENGTH = 1000

Record = dict[str, Any]


class Counter(Protocol):
    """singer-sdk's record / batch counters, as the writers use them."""

    def increment(self, value: int = 1) -> None:
        """Count ``value`` more."""


class RecordWriter(Protocol):
    """One output of the stream's records.

    A record is taken as it is read and encoded at once: a run holds bytes, not dicts (a run of
    1,000 live record dicts made the tap's loop 1.8x slower through the allocator and the GC).
    """

    def add(self, record: Record) -> None:
        """Take one record."""

    def put_out(self) -> Iterable[Record]:
        """Write the records taken since the last call; the records to pass on."""

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
    add = writer.add
    taken = 0
    for record in records:
        if record is None:
            yield from writer.put_out()
            taken = 0
            writer.flush()
            checkpoint()
            continue
        if limit is not None and total >= limit:
            yield from writer.put_out()
            writer.flush()
            stop_at_limit(limit)
        add(record)
        total += 1
        taken += 1
        if taken >= RUN_LENGTH:
            yield from writer.put_out()
            taken = 0
    yield from writer.put_out()
    writer.flush()
    return total


class SdkWriter:
    """Records through singer-sdk (stream maps, type conformance, its message writer)."""

    def __init__(self, write_record: Callable[[Record], None] | None, counter: Counter) -> None:
        """``write_record`` writes one record; None writes nothing (records are only passed on)."""
        self._write_record = write_record
        self._counter = counter
        self._taken: list[Record] = []

    def add(self, record: Record) -> None:
        """Write the record as singer-sdk does, at once."""
        if self._write_record is not None:
            self._write_record(record)
        self._taken.append(record)

    def put_out(self) -> Iterable[Record]:
        """Nothing held back: pass on the records taken since the last call."""
        taken, self._taken = self._taken, []
        self._counter.increment(len(taken))
        return taken

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
        self._lines: list[bytes] = []
        self._end = self._extracted_now()

    @staticmethod
    def _extracted_now() -> bytes:
        """The line's end: the extraction time, stamped once per run rather than per record.

        A run's records are read a few ms apart: the only way these lines differ from the SDK's.
        msgspec (the SDK path's writer) spells UTC as Z; orjson needs OPT_UTC_Z to agree.
        """
        now = datetime.datetime.now(datetime.UTC)
        return b',"time_extracted":' + orjson.dumps(now, option=orjson.OPT_UTC_Z) + b"}\n"

    def add(self, record: Record) -> None:
        """Encode the record's RECORD line (same JSON as RecordMessage.to_dict() via msgspec)."""
        self._lines.append(self._head + orjson.dumps(record) + self._end)

    def put_out(self) -> Iterable[Record]:
        """Write the run's RECORD lines in one call; pass nothing on."""
        lines = self._lines
        if not lines:
            return ()
        self._lines = []
        self._out.write(b"".join(lines))
        self._out.flush()
        self._counter.increment(len(lines))
        self._end = self._extracted_now()
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
        self._lines: list[bytes] = []

    def add(self, record: Record) -> None:
        """Encode the record's line of the file."""
        self._lines.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def put_out(self) -> Iterable[Record]:
        """Add the run to the current file; a full file (``batch_size`` records) goes out."""
        lines, self._lines = self._lines, []
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
        self.put_out()
        message = self.files.write_file()
        if message is not None:
            self._out.write(message)
            self._out.flush()
            # As in the SDK's batch writer: records went out, so STATE is due again.
            self._mark_state_pending()
            self._batches.increment()
