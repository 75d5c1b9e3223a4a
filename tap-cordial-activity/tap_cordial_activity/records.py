"""Exported activity files -> normalized records, streaming with flat memory.

A file is JSON Lines, one JSON array, or CSV with a header line, gzip-compressed or plain
(detected by its magic bytes, not its name). Records are normalized to what the ``activity``
schema promises: ``time``/``message_sent`` as RFC 3339, ``first`` as a boolean, empty CSV values
absent, and CSV columns that hold JSON objects or lists decoded. Bad data raises
:class:`ExportDataError` naming the file and line.
"""

from __future__ import annotations

import codecs
import csv
import datetime
import json
import re
import zlib
from collections.abc import Iterator
from typing import Any, Protocol

import orjson

from tap_cordial_activity.errors import ExportDataError

#: Bytes asked of the source per read: large reads keep paramiko's prefetch pipeline busy.
CHUNK_SIZE = 1 << 20
#: A single JSON array element larger than this is treated as corrupt rather than buffered forever.
MAX_ELEMENT_BYTES = 64 << 20

GZIP_MAGIC = b"\x1f\x8b"

#: CSV columns whose text is JSON (an object or a list) in the JSON export.
JSON_COLUMNS = frozenset({"properties", "sp", "d", "mTags"})

#: ``True == 1`` in Python, so the booleans also match the integers 1 and 0.
_TRUE = frozenset({True, "true", "1", "True", "TRUE"})
_FALSE = frozenset({False, "false", "0", "False", "FALSE"})
#: A numeric UTC offset without a colon at the end of a timestamp (``+0000``, ``-0530``).
_COMPACT_OFFSET = re.compile(r"([+-])(\d{2})(\d{2})$")


class BinarySource(Protocol):
    """What the reader needs from a file: ``read(n)`` returning bytes, ``b""`` at the end."""

    def read(self, size: int, /) -> bytes:
        """Read up to ``size`` bytes."""
        ...


def normalize_timestamp(value: str) -> tuple[str, datetime.datetime]:
    """Return ``value`` as RFC 3339 text plus the parsed aware datetime.

    ``+0000`` becomes ``+00:00``; a timestamp without offset is taken as UTC. Raises ``ValueError``
    when the text is not an ISO 8601 date-time.
    """
    if value.endswith("+0000"):
        # The documented Cordial form; handled without a regex because it is nearly every record.
        text = value[:-5] + "+00:00"
    elif value.endswith("Z"):
        text = value
    else:
        text = _COMPACT_OFFSET.sub(r"\1\2:\3", value)
    parsed = datetime.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
        text += "+00:00"
    if "T" not in text:
        raise ValueError("a date without a time")
    return text, parsed


def to_bool(value: Any) -> bool:
    """``first`` as a boolean, from true/false, 1/0 or their text forms; ``ValueError`` else."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false/1/0)")


#: Parsed timestamps by their raw text. Events of one export share many second-precision times
#: (and every event of a message shares its ``message_sent``), so most lookups hit.
_TIMESTAMP_CACHE: dict[str, tuple[str, datetime.datetime]] = {}
_TIMESTAMP_CACHE_LIMIT = 20_000


def _timestamp(value: Any, key: str, file_name: str, line: int) -> tuple[str, datetime.datetime]:
    """:func:`normalize_timestamp` through the cache, with the data error on failure."""
    cached = _TIMESTAMP_CACHE.get(value) if value.__class__ is str else None
    if cached is not None:
        return cached
    try:
        result = normalize_timestamp(str(value))
    except ValueError as exc:
        raise ExportDataError(
            file_name, line, f"`{key}` {value!r} is not an ISO 8601 date-time"
        ) from exc
    if len(_TIMESTAMP_CACHE) >= _TIMESTAMP_CACHE_LIMIT:
        _TIMESTAMP_CACHE.clear()  # bounded memory; the cache refills from the next records
    _TIMESTAMP_CACHE[value] = result
    return result


def normalize(record: dict[str, Any], file_name: str, line: int) -> datetime.datetime:
    """Normalize ``record`` in place; return its event time (aware datetime).

    Raises :class:`ExportDataError` for a missing ``_id``/``time``, an unparseable timestamp or a
    ``first`` that is not a boolean.
    """
    if not record.get("_id"):
        raise ExportDataError(file_name, line, "record without `_id`")
    raw_time = record.get("time")
    if not raw_time:
        raise ExportDataError(file_name, line, f"record {record['_id']} without `time`")
    record["time"], event_time = _timestamp(raw_time, "time", file_name, line)
    sent = record.get("message_sent")
    if sent is not None:
        if sent == "":
            del record["message_sent"]
        else:
            record["message_sent"] = _timestamp(sent, "message_sent", file_name, line)[0]
    first = record.get("first")
    if first is not None and first.__class__ is not bool:
        try:
            record["first"] = to_bool(first)
        except ValueError as exc:
            raise ExportDataError(file_name, line, f"`first` {exc}") from exc
    return event_time


# ---------------------------------------------------------------------------------------------
# Byte level: plain or gzip, as a stream of chunks


def _chunks(source: BinarySource) -> Iterator[bytes]:
    """Raw chunks of ``source`` until its end."""
    while True:
        chunk = source.read(CHUNK_SIZE)
        if not chunk:
            return
        yield chunk


def byte_chunks(source: BinarySource, file_name: str) -> Iterator[bytes]:
    """Decompressed chunks of ``source``; gzip is detected by its first two bytes."""
    raw = _chunks(source)
    first = next(raw, b"")
    if not first:
        return iter(())
    chained = _prepend(first, raw)
    if first[:2] == GZIP_MAGIC:
        return _gunzip(chained, file_name)
    return chained


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _gunzip(chunks: Iterator[bytes], file_name: str) -> Iterator[bytes]:
    """Decompress gzip chunks (several members allowed); a truncated stream is an error."""
    decompressor = zlib.decompressobj(wbits=31)
    in_member = False
    for chunk in chunks:
        data = chunk
        while data:
            in_member = True
            try:
                out = decompressor.decompress(data)
            except zlib.error as exc:
                raise ExportDataError(file_name, None, f"corrupt gzip data ({exc})") from exc
            if out:
                yield out
            if decompressor.eof:
                in_member = False
                data = decompressor.unused_data
                decompressor = zlib.decompressobj(wbits=31)
                if data and not data.startswith(GZIP_MAGIC[: len(data)]):
                    raise ExportDataError(file_name, None, "trailing garbage after gzip data")
            else:
                data = b""
    if in_member:
        raise ExportDataError(
            file_name, None, "truncated gzip file (the stream ends before the gzip end marker)"
        )


# ---------------------------------------------------------------------------------------------
# Line level


def iter_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Lines (without the newline) of a chunk stream, in flat memory."""
    rest = b""
    for chunk in chunks:
        parts = chunk.split(b"\n")
        if rest:
            parts[0] = rest + parts[0]
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest


# ---------------------------------------------------------------------------------------------
# Formats

Record = dict[str, Any]
#: (record, event time, line number)
Parsed = tuple[Record, datetime.datetime, int]


def read_jsonl(lines: Iterator[bytes], file_name: str, first_line: int = 1) -> Iterator[Parsed]:
    """Records of a JSON Lines stream; blank lines are skipped."""
    loads = orjson.loads
    line_no = first_line - 1
    for line in lines:
        line_no += 1
        try:
            record = loads(line)
        except orjson.JSONDecodeError as exc:
            if not line.strip():
                continue
            raise ExportDataError(file_name, line_no, f"not JSON ({exc})") from exc
        if record.__class__ is not dict:
            raise ExportDataError(file_name, line_no, "a JSON value that is not an object")
        yield record, normalize(record, file_name, line_no), line_no


def read_json_array(chunks: Iterator[bytes], file_name: str) -> Iterator[Parsed]:
    """Records of one JSON array, element by element, never holding the whole array."""
    decoder = json.JSONDecoder()
    text_decoder = codecs.getincrementaldecoder("utf-8")()
    buffer = ""
    pos = 0
    line_no = 1
    started = False
    finished = False
    exhausted = False
    chunk_iter = iter(chunks)

    def more() -> bool:
        nonlocal buffer, pos, exhausted
        chunk = next(chunk_iter, None)
        if chunk is None:
            exhausted = True
            buffer = buffer[pos:] + text_decoder.decode(b"", final=True)
            pos = 0
            return False
        buffer = buffer[pos:] + text_decoder.decode(chunk)
        pos = 0
        return True

    def skip_blank() -> None:
        nonlocal pos, line_no
        while True:
            while pos < len(buffer) and buffer[pos] in " \t\r\n":
                if buffer[pos] == "\n":
                    line_no += 1
                pos += 1
            if pos < len(buffer) or not more():
                return

    skip_blank()
    if pos >= len(buffer) or buffer[pos] != "[":
        raise ExportDataError(file_name, line_no, "expected a JSON array")
    pos += 1
    started = True
    expect_value = True
    while started and not finished:
        skip_blank()
        if pos >= len(buffer):
            raise ExportDataError(file_name, line_no, "the JSON array is not closed (truncated)")
        char = buffer[pos]
        if char == "]":
            finished = True
            pos += 1
            break
        if char == ",":
            if expect_value:
                raise ExportDataError(file_name, line_no, "not JSON (unexpected ',')")
            expect_value = True
            pos += 1
            continue
        if not expect_value:
            raise ExportDataError(file_name, line_no, "not JSON (missing ',' between elements)")
        while True:
            try:
                record, end = decoder.raw_decode(buffer, pos)
                break
            except json.JSONDecodeError as exc:
                # An element cut by the chunk boundary fails too: read more and try again.
                if exhausted or len(buffer) - pos > MAX_ELEMENT_BYTES:
                    raise ExportDataError(
                        file_name, line_no + exc.lineno - 1, f"not JSON ({exc.msg})"
                    ) from exc
                more()
        element_line = line_no
        line_no += buffer.count("\n", pos, end)
        pos = end
        expect_value = False
        if not isinstance(record, dict):
            raise ExportDataError(file_name, element_line, "an array element that is not an object")
        yield record, normalize(record, file_name, element_line), element_line
    skip_blank()
    if pos < len(buffer):
        raise ExportDataError(file_name, line_no, "data after the end of the JSON array")


def _csv_value(column: str, value: str, file_name: str, line: int) -> Any:
    """A CSV cell as the JSON export would carry it."""
    if column in JSON_COLUMNS:
        if value[0] in "{[":
            try:
                return orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise ExportDataError(
                    file_name, line, f"column `{column}` holds invalid JSON ({exc})"
                ) from exc
        if column == "mTags":
            # A plain tag list without JSON brackets: keep each tag rather than one odd string.
            return [tag.strip() for tag in value.split(",") if tag.strip()]
    return value


def read_csv(lines: Iterator[bytes], file_name: str) -> Iterator[Parsed]:
    """Records of a CSV stream with a header line; empty values are left out."""
    text_lines = (line.decode("utf-8") + "\n" for line in lines)
    reader = csv.reader(text_lines)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise ExportDataError(file_name, reader.line_num, f"bad CSV header ({exc})") from exc
    header = [name.strip().lstrip("\ufeff") for name in header]
    width = len(header)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ExportDataError(file_name, reader.line_num, f"bad CSV ({exc})") from exc
        line_no = reader.line_num
        if not row:
            continue
        if len(row) != width:
            raise ExportDataError(
                file_name, line_no, f"{len(row)} columns where the header has {width}"
            )
        record = {
            column: _csv_value(column, value, file_name, line_no)
            for column, value in zip(header, row, strict=True)
            if value != ""
        }
        yield record, normalize(record, file_name, line_no), line_no


def read_records(source: BinarySource, file_name: str, export_format: str) -> Iterator[Parsed]:
    """Normalized records of one exported file, with their event time and line number.

    ``export_format`` is ``json`` (JSON Lines or one JSON array, told apart by the first
    non-blank character) or ``csv``.
    """
    chunks = byte_chunks(source, file_name)
    if export_format == "csv":
        yield from read_csv(iter_lines(chunks), file_name)
        return
    first = b""
    for chunk in chunks:
        first += chunk  # blank leading chunks are kept so line numbers stay exact
        if first.strip():
            break
    if not first.strip():
        return
    rest = _prepend(first, chunks)
    if first.lstrip()[:1] == b"[":
        yield from read_json_array(rest, file_name)
    else:
        yield from read_jsonl(iter_lines(rest), file_name)

