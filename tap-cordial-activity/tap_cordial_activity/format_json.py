"""The ``json`` export format: JSON Lines or one JSON array, streamed record by record."""

from __future__ import annotations

import codecs
import io
import itertools
import json
from collections.abc import Iterator

import orjson

from tap_cordial_activity.errors import CutLineError, ExportDataError
from tap_cordial_activity.file_chunks import prepend
from tap_cordial_activity.normalize import (
    TIMESTAMP_CACHE,
    Parsed,
    bad,
    first_flag,
    normalize,
    time_field,
)

#: A single JSON array element larger than this is treated as corrupt rather than buffered forever.
MAX_ELEMENT_BYTES = 64 << 20


def read_jsonl(chunks: Iterator[bytes], file_name: str) -> Iterator[Parsed]:
    """Records of a JSON Lines chunk stream; blank lines are skipped.

    The per-record loop of the tap: lines are split and parsed here (no generator per line), and
    a record whose times were seen before is normalized inline, as :func:`normalize` would.
    """
    loads = orjson.loads
    cached = TIMESTAMP_CACHE.get
    line_no = 0
    rest = b""
    # The closing newline ends a last line that has none.
    final = False
    for next_chunk in itertools.chain(chunks, (None,)):
        # The closing newline ends a last line that has none.
        chunk, final = (b"\n", True) if next_chunk is None else (next_chunk, False)
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            rest += chunk  # a line longer than the chunks so far
            continue
        whole = rest + chunk[:cut] if rest else chunk[:cut]
        rest = chunk[cut:]
        # BytesIO finds line ends with memchr (bytes.split scans byte by byte); each line keeps
        # its newline, which JSON allows as trailing whitespace.
        for line in io.BytesIO(whole):
            line_no += 1
            try:
                record = loads(line)
            except orjson.JSONDecodeError as exc:
                if not line.strip():
                    continue
                error = ExportDataError(file_name, line_no, f"not JSON ({exc})")
                if final:
                    # A last line without its newline is a cut file (still being written, or
                    # truncated): not set aside unless the file holds still (the runner).
                    raise CutLineError(file_name, line_no, error.problem, line) from exc
                yield bad(error, line, line_no)
                continue
            if record.__class__ is not dict:
                yield bad(ExportDataError(
                    file_name, line_no, "a JSON value that is not an object"), line, line_no)
                continue
            try:
                raw_time = record.get("time")
                hit = cached(raw_time) if raw_time.__class__ is str else None
                if hit is None or not record.get("_id"):
                    yield record, normalize(record, file_name, line_no), line_no
                    continue
                record["time"] = hit[0]
                sent = record.get("message_sent")
                if sent is not None:
                    sent_hit = cached(sent) if sent.__class__ is str else None
                    if sent_hit is not None:
                        record["message_sent"] = sent_hit[0]
                    elif sent == "":
                        del record["message_sent"]
                    else:
                        record["message_sent"] = time_field(
                            sent, "message_sent", file_name, line_no)[0]
                first = record.get("first")
                if first is not None and first.__class__ is not bool:
                    record["first"] = first_flag(first, file_name, line_no)
            except ExportDataError as exc:
                yield bad(exc, line, line_no)
                continue
            yield record, hit[1], line_no


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
        start, pos = pos, end
        expect_value = False
        if not isinstance(record, dict):
            yield bad(ExportDataError(
                file_name, element_line, "an array element that is not an object"
            ), buffer[start:end].encode(), element_line)
            continue
        try:
            moment = normalize(record, file_name, element_line)
        except ExportDataError as exc:
            yield bad(exc, buffer[start:end].encode(), element_line)
            continue
        yield record, moment, element_line
    skip_blank()
    if pos < len(buffer):
        raise ExportDataError(file_name, line_no, "data after the end of the JSON array")




def read_json(chunks: Iterator[bytes], file_name: str) -> Iterator[Parsed]:
    """Records of a ``json`` export file: one JSON array or JSON Lines.

    The two are told apart by the first non-blank character.
    """
    first = b""
    for chunk in chunks:
        first += chunk  # blank leading chunks are kept so line numbers stay exact
        if first.strip():
            break
    if not first.strip():
        return
    rest = prepend(first, chunks)
    if first.lstrip()[:1] == b"[":
        yield from read_json_array(rest, file_name)
    else:
        yield from read_jsonl(rest, file_name)
