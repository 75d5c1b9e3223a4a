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
from pathlib import Path
from typing import Any

import orjson

from sandbox.cordial_events import EventStore
from sandbox.cordial_jobs import Job

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
    """Write the selected events as the job asked; returns the file names (first first)."""
    req, opts = job.request, job.options
    limit = int(req.get("limitRecordsPerFile") or 0)
    split = limit > 0
    parts = max(1, math.ceil(len(selected) / limit)) if split else 1
    compress = bool(req.get("compress"))
    names = export_file_names(req["name"], req["exportType"], compress, parts, split)
    per_file = limit if split else max(len(selected), 1)
    columns = [*CSV_COLUMNS, *sorted(k for k in store.keys if k not in CSV_COLUMNS)]
    for number, file_name in enumerate(names):
        first = number * per_file
        chunk = selected[first : first + per_file]
        with _open_output(folder / file_name, compress, opts.gzip_level) as out:
            if req["exportType"] == "csv":
                _write_csv(out, store, chunk, first, columns, bool(req.get("showHeader")), job)
            else:
                _write_json(out, store, chunk, first, opts.json_array, job)
        job.completed_items = min(first + len(chunk), job.total_items)
    if compress and opts.truncate_gzip:
        target = folder / names[-1]
        size = target.stat().st_size
        with target.open("r+b") as handle:
            handle.truncate(max(10, size - max(16, size // 4)))
    return names


def _open_output(path: Path, compress: bool, level: int) -> io.BufferedIOBase:
    return _GzipOut(path, level) if compress else path.open("wb")


class _GzipOut(gzip.GzipFile):
    """A GzipFile that owns (and closes) its underlying file."""

    def __init__(self, path: Path, level: int) -> None:
        self._raw = path.open("wb")
        super().__init__(
            filename=path.name.removesuffix(".gz"),
            mode="wb",
            compresslevel=level,
            fileobj=self._raw,
        )

    def close(self) -> None:
        """Finish the gzip stream, then close the file."""
        try:
            super().close()
        finally:
            self._raw.close()


def _damaged(blob: bytes) -> bytes:
    """A record cut in half: no longer JSON."""
    return blob[: max(1, len(blob) // 2)]


def _write_json(
    out: io.BufferedIOBase,
    store: EventStore,
    indices: list[int],
    first: int,
    array: bool,
    job: Job,
) -> None:
    corrupt = job.options.corrupt_line
    if array:
        out.write(b"[\n")
    for start in range(0, len(indices), _BATCH):
        batch = indices[start : start + _BATCH]
        damaged_at = corrupt - first - start - 1 if corrupt is not None else -1
        if not array and not 0 <= damaged_at < len(batch):
            out.write(store.jsonl(batch))  # the fast path: slices of the store, as they are
        else:
            records = store.records(batch)
            if 0 <= damaged_at < len(records):
                records[damaged_at] = _damaged(records[damaged_at])
            if array:
                if start:
                    out.write(b",\n")
                out.write(b",\n".join(records))
            else:
                out.write(b"\n".join(records) + b"\n")
        job.completed_items = min(first + start + len(batch), job.total_items)
    if array:
        out.write(b"\n]\n")


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


def _write_csv(
    out: io.BufferedIOBase,
    store: EventStore,
    indices: list[int],
    first: int,
    columns: list[str],
    header: bool,
    job: Job,
) -> None:
    # Rows go through an in-memory text buffer that is flushed every batch: cheap and bounded.
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(columns)
    corrupt = job.options.corrupt_line
    time_column = columns.index("time")
    for start in range(0, len(indices), _BATCH):
        for offset, blob in enumerate(store.records(indices[start : start + _BATCH]), start + 1):
            event = orjson.loads(blob)
            row = [_csv_value(event.get(column)) for column in columns]
            if corrupt is not None and first + offset == corrupt:
                row[time_column] = "not-a-time"
            writer.writerow(row)
        out.write(buffer.getvalue().encode())
        buffer.seek(0)
        buffer.truncate()
        job.completed_items = min(first + start + _BATCH, job.total_items)
    out.write(buffer.getvalue().encode())
