"""The Cordial stand-in's export writer: the files of one export job, as Cordial names them.

JSON Lines (slices of the event store, as they are), a single JSON array, or CSV; gzip when the
export asks; split by ``limitRecordsPerFile``. The job's options can damage the output on purpose
(a record cut in half, a truncated gzip stream) so that the tap's error paths can be tested.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import zlib
from pathlib import Path
from typing import Any, Protocol

import orjson

from sandbox.cordial_events import EventStore
from sandbox.cordial_jobs import Job

#: The gzip writer of levels 1 to 3: ISA-L's deflate, about 3.5x faster than zlib's level 1 and
#: no larger (it has levels 0-3 only, and its 0 is not zlib's "stored"); zlib's for the other
#: levels, or where the ``isal`` package is not installed.
_FAST_GZIP: type[gzip.GzipFile] | None
try:
    from isal import igzip

    _FAST_GZIP = igzip.IGzipFile
except ImportError:  # pragma: no cover - isal has wheels for the usual platforms
    _FAST_GZIP = None

#: CSV column order: the documented fields first, then any other field seen, sorted.
CSV_COLUMNS: tuple[str, ...] = (
    "_id",
    "cID",
    "mcID",
    "bmID",
    "mdtID",
    "msID",
    "action",
    "time",
    "first",
    "email",
    "chnl",
    "chnl-type",
    "mTags",
    "name",
    "subject",
    "message_name",
    "message_sent",
    "properties",
    "sp",
    "d",
)
_BATCH = 5000  # records joined per write call


def export_file_names(
    name: str, export_type: str, compress: bool, parts: int, split: bool
) -> list[str]:
    """``{name}.json`` or ``{name}-{n}.json`` (n from 1) when split, ``.gz`` when compressed."""
    suffix = f".{export_type}" + (".gz" if compress else "")
    if not split:
        return [f"{name}{suffix}"]
    return [f"{name}-{n}{suffix}" for n in range(1, parts + 1)]


def write_export(job: Job, store: EventStore, selected: list[int], folder: Path) -> list[str]:
    """Write the selected events as the job asked; returns the file names (first first).

    ``job.files`` is set before the first byte is written. The options may make the files
    partial while the job still reports every selected event: ``drop_last_events``,
    ``cut_last_line``, and ``grow_after_done_seconds`` (the last file is completed later).
    """
    req, opts = job.request, job.options
    limit = int(req.get("limitRecordsPerFile") or 0)
    split = limit > 0
    parts = max(1, math.ceil(len(selected) / limit)) if split else 1
    compress = bool(req.get("compress"))
    names = export_file_names(req["name"], req["exportType"], compress, parts, split)
    job.files = names
    per_file = limit if split else max(len(selected), 1)
    kept = selected[: max(0, len(selected) - opts.drop_last_events)]
    encoder: _Encoder
    if req["exportType"] == "csv":
        columns = [*CSV_COLUMNS, *sorted(k for k in store.keys if k not in CSV_COLUMNS)]
        encoder = _CsvEncoder(
            store, columns, bool(req.get("showHeader")), opts.corrupt_line, opts.corrupt_kind
        )
    else:
        encoder = _JsonEncoder(store, opts.json_array, opts.corrupt_line, opts.corrupt_kind)
    for number, file_name in enumerate(names):
        first = number * per_file
        last = number == len(names) - 1
        with _open_output(folder / file_name, compress, opts.gzip_level) as out:
            _write_file(out, encoder, kept[first : first + per_file], first, job, last=last)
        job.completed_items = min(first + per_file, job.total_items)
    if compress and opts.truncate_gzip:
        target = folder / names[-1]
        size = target.stat().st_size
        with target.open("r+b") as handle:
            handle.truncate(max(10, size - max(16, size // 4)))
    return names


def _write_file(
    out: io.BufferedIOBase, encoder: _Encoder, chunk: list[int], first: int, job: Job, *, last: bool
) -> None:
    """One file: header, records in batches, footer; the last file may be cut or grow later."""
    opts = job.options
    cut = last and opts.cut_last_line and bool(chunk)
    whole = chunk[:-1] if cut else chunk
    pause_at = len(chunk) // 2 if last and opts.grow_after_done_seconds > 0 else None

    def write(lo: int, hi: int) -> None:
        for start in range(lo, hi, _BATCH):
            batch = whole[start : min(start + _BATCH, hi)]
            out.write(encoder.records(batch, first + start, leading=start == 0))
            job.completed_items = min(first + start + len(batch), job.total_items)

    out.write(encoder.header())
    if pause_at is not None:
        write(0, min(pause_at, len(whole)))
        _wait_while_growing(out, job)
        write(min(pause_at, len(whole)), len(whole))
    else:
        write(0, len(whole))
    if cut:
        line = encoder.records(chunk[-1:], first + len(chunk) - 1, leading=len(chunk) == 1)
        out.write(_cut_last_line(line))  # and no footer: the write stopped here
    else:
        out.write(encoder.footer())


def _wait_while_growing(out: io.BufferedIOBase, job: Job) -> None:
    """Make the first part readable, let the job be Done, and wait before the rest."""
    if isinstance(out, gzip.GzipFile):
        out.flush(zlib.Z_SYNC_FLUSH)  # what is written so far can be decompressed
    else:
        out.flush()
    job.files_ready()
    job.done_reported.wait()
    job.stopping.wait(job.options.grow_after_done_seconds)


def _cut_last_line(encoded: bytes) -> bytes:
    """The encoded text without its newline and without the second half of its last line."""
    text = encoded.rstrip(b"\n")
    line = text.rsplit(b"\n", 1)[-1]
    return text[: len(text) - max(1, len(line) - len(line) // 2)]


def _open_output(path: Path, compress: bool, level: int) -> io.BufferedIOBase:
    """The file, or a gzip stream that owns it (its header names the file without ``.gz``)."""
    if not compress:
        return path.open("wb")
    gzip_file = _FAST_GZIP if _FAST_GZIP is not None and 1 <= level <= 3 else gzip.GzipFile
    return gzip_file(path, "wb", level)


class _Encoder(Protocol):
    """One export format: what opens a file, a batch of records, and what closes a file."""

    def header(self) -> bytes: ...

    def records(self, indices: list[int], position: int, *, leading: bool) -> bytes:
        """Whole lines for the events; ``position`` is the first one's 0-based place in the
        export, ``leading`` whether it is the first record of its file."""
        ...

    def footer(self) -> bytes: ...


def _damaged(blob: bytes, kind: str) -> bytes:
    """A record damaged as ``corrupt_kind`` says: cut in half, not an object, or no ``_id``."""
    if kind == "not_object":
        return orjson.dumps([orjson.loads(blob)])
    if kind == "no_id":
        event = orjson.loads(blob)
        event.pop("_id", None)
        return orjson.dumps(event)
    return blob[: max(1, len(blob) // 2)]


class _JsonEncoder:
    """JSON Lines (slices of the store, as they are), or one JSON array."""

    def __init__(
        self, store: EventStore, array: bool, corrupt_line: int | None, kind: str = "cut"
    ) -> None:
        self._store, self._array, self._corrupt = store, array, corrupt_line
        self._kind = kind

    def header(self) -> bytes:
        """``[`` for an array."""
        return b"[\n" if self._array else b""

    def records(self, indices: list[int], position: int, *, leading: bool) -> bytes:
        """Compact objects, one per line (``,``-separated in an array)."""
        damaged_at = self._corrupt - position - 1 if self._corrupt is not None else -1
        if not self._array and not 0 <= damaged_at < len(indices):
            return self._store.jsonl(indices)  # the fast path
        records = self._store.records(indices)
        if 0 <= damaged_at < len(records):
            records[damaged_at] = _damaged(records[damaged_at], self._kind)
        if self._array:
            return (b"" if leading or not records else b",\n") + b",\n".join(records)
        return b"".join(record + b"\n" for record in records)

    def footer(self) -> bytes:
        """``]`` for an array."""
        return b"\n]\n" if self._array else b""


class _CsvEncoder:
    """CSV rows in the documented column order; a damaged record has ``time`` not-a-time."""

    def __init__(
        self,
        store: EventStore,
        columns: list[str],
        header: bool,
        corrupt_line: int | None,
        kind: str = "cut",
    ) -> None:
        self._store, self._columns, self._header = store, columns, header
        self._corrupt, self._kind = corrupt_line, kind
        self._time_column = columns.index("time")

    def header(self) -> bytes:
        """The column names when ``showHeader`` is on."""
        return self._rows([self._columns]) if self._header else b""

    def records(self, indices: list[int], position: int, *, leading: bool) -> bytes:
        """One row per event."""
        rows = []
        for offset, blob in enumerate(self._store.records(indices), position + 1):
            event = orjson.loads(blob)
            row = [_csv_value(event.get(column)) for column in self._columns]
            if offset == self._corrupt:
                if self._kind == "wide_row":
                    row.append("extra")
                elif self._kind == "no_id":
                    row[self._columns.index("_id")] = ""
                else:
                    row[self._time_column] = "not-a-time"
            rows.append(row)
        return self._rows(rows)

    def footer(self) -> bytes:
        """Nothing."""
        return b""

    @staticmethod
    def _rows(rows: list[list[str]]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue().encode()


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)
