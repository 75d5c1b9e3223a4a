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
import sys
import typing as t
from collections import Counter
from collections.abc import Callable, Iterator

import msgspec
from singer_sdk.contrib import msgspec as sdk_msgspec
from singer_sdk.singerlib.encoding import GenericSingerReader, SingerMessageType
from singer_sdk.singerlib.exceptions import InvalidInputLine
from typing_extensions import override

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
        """Decode one message as singer-sdk's msgspec reader does."""
        try:
            message = _MESSAGE.decode(line)
        except msgspec.DecodeError as exc:
            text = line.decode("utf-8", "replace")
            logger.exception("Unable to parse:\n%s", text)
            raise InvalidInputLine(f"Unable to parse line as JSON: {text}") from exc
        if not isinstance(message, dict):
            raise InvalidInputLine(f"A Singer message must be a JSON object: {line[:200]!r}")
        return message

    @override
    def process_lines(
        self,
        file_input: t.IO[bytes] | None,
        callbacks: dict[str, Callable[[dict], None]],
    ) -> t.Counter[str]:
        """Process every message of the input in order; count them by type."""
        stats: Counter[str] = Counter()
        records_in_runs = 0
        runs = self.record_runs
        run: list[msgspec.Raw] = []
        run_stream = ""
        decode_envelope = _ENVELOPE.decode
        for lines in line_batches(file_input or self.default_input):
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
                    raise ValueError(f"Unknown message type '{message_type}' in message.")
                callback(message)
                stats[message_type] += 1
            if run and runs is not None:
                # The end of what the pipe had: process before waiting for more input.
                runs.process_run(run_stream, run)
                run = []
        if records_in_runs:
            stats[SingerMessageType.RECORD] += records_in_runs
        return stats


def line_batches(source: t.IO[bytes] | t.IO[str]) -> Iterator[t.Iterable[bytes]]:
    """The input's lines (with their newline), a chunk's worth at a time.

    Also reads BATCH files (:mod:`target_lytics.batch_files`).
    """
    if isinstance(source, io.TextIOBase):
        lines = iter(source)
        while batch := [text.encode() for text in itertools.islice(lines, MAX_RUN)]:
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
        # BytesIO finds line ends with memchr; each line keeps its newline (JSON whitespace).
        yield io.BytesIO(whole)
    if rest:
        yield (rest,)
