"""The Singer message reader: stdin as bytes in large chunks, RECORD runs handed over whole.

singer-sdk's readers take one text line at a time and decode every message into a dict before a
callback. Here stdin is read as bytes (up to :data:`CHUNK_BYTES` at a time, without waiting for a
full chunk, so a slow tap's STATE is not held back), and each line's envelope is decoded with the
record left as raw JSON. Consecutive RECORD lines of a stream that :class:`RecordRuns` takes
(see :mod:`target_lytics.fastpath`) are handed over as one run; every other line is decoded as
singer-sdk's msgspec reader decodes it (floats as Decimal) and goes to the SDK's callbacks, in
input order. Text input (``listen(io.StringIO(...))`` in tests) is read line by line.
"""

from __future__ import annotations

import io
import itertools
import logging
import re
import sys
import typing as t
from collections import Counter
from collections.abc import Callable, Iterator

import msgspec
import orjson
from singer_sdk.contrib import msgspec as sdk_msgspec
from singer_sdk.exceptions import (
    InvalidJSONSchema,
    InvalidRecord,
    MappingError,
    RecordsWithoutSchemaException,
)
from singer_sdk.singerlib.encoding import GenericSingerReader, SingerMessageType
from singer_sdk.singerlib.exceptions import InvalidInputLine
from typing_extensions import override

from target_lytics.errors import (
    INPUT_LINE_NOTE,
    QUOTE_BYTES,
    USER_ERRORS,
    InputError,
    LyticsError,
    RunRecordError,
    quote_line,
)

logger = logging.getLogger(__name__)

#: Bytes read from stdin at a time (at most; a pipe gives what it has).
CHUNK_BYTES = 1 << 20
#: Records handed over in one run at most (bounds the run's list, not the work).
MAX_RUN = 4096


class RecordRuns(t.Protocol):
    """Takes runs of RECORD messages of one stream as raw record JSON."""

    def takes(self, stream_name: str) -> bool:
        """Whether the stream's records may come as runs."""
        ...

    def process_run(self, stream_name: str, records: list[msgspec.Raw]) -> None:
        """Process records of one stream, in order."""
        ...


class _Envelope(msgspec.Struct):
    """What the reader needs of a message: its type, stream, and record still as raw JSON."""

    type: str
    stream: str | None = None
    #: Empty when the message has no record (msgspec takes no union with Raw).
    record: msgspec.Raw = msgspec.Raw()


_ENVELOPE = msgspec.json.Decoder(_Envelope)
#: The decoder of singer-sdk's msgspec reader (floats as Decimal).
_MESSAGE = sdk_msgspec.decoder


class SingerLineReader(GenericSingerReader[bytes]):
    """Reads Singer messages as bytes; hands runs of records to :attr:`record_runs`."""

    def __init__(self) -> None:
        """Start with no run taker: every message goes to the SDK's callbacks."""
        super().__init__()
        self.record_runs: RecordRuns | None = None

    @property
    @override
    def default_input(self) -> t.IO[bytes]:
        """Standard input's byte stream."""
        return sys.stdin.buffer

    @override
    def deserialize_json(self, line: bytes) -> dict:
        """Decode one message as singer-sdk's msgspec reader does (the line quoted, not echoed)."""
        try:
            message = _MESSAGE.decode(line)
        except msgspec.DecodeError as exc:
            raise InvalidInputLine(f"{not_json(exc, line)}: {quote_line(line)}") from exc
        if not isinstance(message, dict):
            raise InvalidInputLine(
                f"a Singer message must be a JSON object, not {quote_line(line)}"
            )
        return message

    @override
    def process_lines(
        self,
        file_input: t.IO[bytes] | None,
        callbacks: dict[str, Callable[[dict], None]],
    ) -> t.Counter[str]:
        """Process every message of the input in order; count them by type.

        Raises:
            Exception: The error a line raised (a run's record: its own error), with a note
                naming the line's number, its stream and what is expected (see
                :func:`line_note`), which ends the run in one line. Upload failures
                (LyticsError) pass unchanged.
        """
        stats: Counter[str] = Counter()
        records_in_runs = 0
        runs = self.record_runs
        run: list[msgspec.Raw] = []
        run_stream = ""
        decode_envelope = _ENVELOPE.decode
        for chunk in line_chunks(file_input or self.default_input):
            lines = io.BytesIO(chunk)
            line = b""
            at_chunk_end = False
            try:
                for line in lines:
                    if runs is not None:
                        try:
                            envelope = decode_envelope(line)
                        except (msgspec.DecodeError, msgspec.ValidationError):
                            envelope = None
                        if (
                            envelope is not None
                            and envelope.type == "RECORD"
                            and envelope.record
                            and envelope.stream is not None
                        ):
                            stream = envelope.stream
                            if stream == run_stream or runs.takes(stream):
                                if stream != run_stream or len(run) >= MAX_RUN:
                                    if run:
                                        runs.process_run(run_stream, run)
                                        run = []
                                    run_stream = stream
                                run.append(envelope.record)
                                records_in_runs += 1
                                continue
                        if run:
                            runs.process_run(run_stream, run)
                            run = []
                        # A SCHEMA may change which streams come as runs.
                        run_stream = ""
                    message = self.deserialize_json(line)
                    self.assert_line_requires(message, requires={"type"})
                    message_type = message["type"]
                    callback = callbacks.get(message_type)
                    if callback is None:
                        raise InputError(
                            f"unknown message type {message_type!r} (expected one of "
                            f"{', '.join(sorted(callbacks))})"
                        )
                    callback(message)
                    stats[message_type] += 1
                if run and runs is not None:
                    # The end of what the pipe had: process before waiting for more input.
                    at_chunk_end = True
                    runs.process_run(run_stream, run)
                    run = []
            except LyticsError:
                raise
            except Exception as exc:
                # Every line taken so far was counted once (in a run or by type): the line
                # number costs nothing until a line fails.
                taken = records_in_runs + sum(stats.values())
                number = taken if at_chunk_end else taken + 1
                if isinstance(exc, RunRecordError):
                    # The run holds the lines just before the current one (or the chunk's last).
                    first = number - len(run) + (1 if at_chunk_end else 0)
                    failure: Exception = exc.error
                    note = line_note(failure, first + exc.index, run_stream, None)
                else:
                    failure, note = exc, line_note(exc, number, None, line)
                failure.add_note(note)
            else:
                continue
            # Raised outside the handler: a run's record error keeps its own chain.
            raise failure
        if records_in_runs:
            stats[SingerMessageType.RECORD] += records_in_runs
        return stats


#: A surrogate escape: msgspec refuses a lone one (and says the input was truncated).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
#: Where a bad line names its stream: decoded lines give it, a line that is not JSON may too.
_STREAM_IN_LINE = re.compile(rb'"stream"\s*:\s*"((?:[^"\\]|\\.){0,200})"')


def line_note(error: Exception, number: int, stream: str | None, line: bytes | None) -> str:
    """One line for a bad input line: its number, its message type and stream, what is expected."""
    message_type = None
    if line is not None:
        try:
            envelope = _ENVELOPE.decode(line)
            message_type, stream = envelope.type, envelope.stream
        except Exception:  # any line: not JSON, too deep, not a message
            found = _STREAM_IN_LINE.search(line[:4096])
            if found:
                stream = found.group(1).decode("utf-8", "backslashreplace")
    else:
        message_type = "RECORD"
    where = f"{INPUT_LINE_NOTE}{number}"
    if message_type or stream is not None:
        what = f"{message_type} message" if message_type else "message"
        where += f" ({what}{f' of stream {stream!r}' if stream is not None else ''})"
    problem = describe_input_error(error, line)
    if len(problem) > _MAX_PROBLEM:
        problem = problem[:_MAX_PROBLEM] + " ..."
    return f"{where}: {problem}"


#: Characters of a problem's description at most (a quoted line, a schema, a record).
_MAX_PROBLEM = 2 * QUOTE_BYTES + 200


def not_json(error: msgspec.DecodeError, line: bytes | None) -> str:
    """Why msgspec could not decode a line (its own words are misleading for two cases)."""
    if "UTF-8" in str(error):
        return "invalid UTF-8; Singer messages are UTF-8 JSON"
    if line is not None and _SURROGATE_ESCAPE.search(line):
        return "a lone UTF-16 surrogate escape (\\ud800 to \\udfff unpaired) is not text"
    return f"not JSON ({error}); expected one JSON object per line (no NaN or Infinity)"


def describe_input_error(error: Exception, line: bytes | None) -> str:
    """What is wrong with a message and what is expected, in a few words (no traceback)."""
    if line is not None and not line.strip():
        return "an empty line; expected one JSON Singer message per line"
    if isinstance(error, InvalidRecord):
        return str(error.error_message)
    if isinstance(error, MappingError):
        return f"stream_maps setting: {error}"
    if isinstance(error, (InputError, InvalidInputLine, USER_ERRORS)):
        return str(error)
    if isinstance(error, InvalidJSONSchema):
        return f"the stream's schema is not a valid JSON Schema: {error}"
    if isinstance(error, msgspec.DecodeError):
        return not_json(error, line)
    if isinstance(error, RecordsWithoutSchemaException):
        return "a record before its stream's SCHEMA message; send the SCHEMA first"
    if isinstance(error, RecursionError):
        return "nested too deeply to decode"
    if isinstance(error, OverflowError):
        return f"a value out of range ({error})"
    if isinstance(error, orjson.JSONEncodeError):
        # orjson: integers beyond 64 bits, nesting deeper than 254, lone surrogates.
        return f"a value Lytics' JSON cannot hold: {error}"
    if isinstance(error, KeyError) and line is not None:
        return f"the message has no {error} key (see the Singer specification)"
    return f"{type(error).__name__}: {error}"


def line_batches(source: t.IO[bytes] | t.IO[str]) -> Iterator[t.Iterable[bytes]]:
    """The input's lines (with their newline), a chunk's worth at a time.

    Also reads BATCH files (:mod:`target_lytics.batch_files`).
    """
    # BytesIO finds line ends with memchr; each line keeps its newline (JSON whitespace).
    return (io.BytesIO(chunk) for chunk in line_chunks(source))


def line_chunks(source: t.IO[bytes] | t.IO[str]) -> Iterator[bytes]:
    """The input in chunks of whole lines (the last line may lack its newline)."""
    if isinstance(source, io.TextIOBase):
        lines = iter(source)
        while batch := b"".join(text.encode() for text in itertools.islice(lines, MAX_RUN)):
            yield batch
        return
    # read1 returns what the pipe has instead of waiting for a full chunk.
    read: Callable[[int], bytes] = getattr(source, "read1", None) or source.read  # type: ignore[assignment]
    rest = b""
    while True:
        chunk = read(CHUNK_BYTES)
        if not chunk:
            break
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            rest += chunk  # a line longer than the chunks so far
            continue
        whole = rest + chunk[:cut] if rest else chunk[:cut]
        rest = chunk[cut:]
        yield whole
    if rest:
        yield rest
