"""target-lytics: the byte reader keeps message order, splits runs, and reads what a pipe has."""

from __future__ import annotations

import io
import os
import re
import threading
from typing import Any

import msgspec
import orjson
import pytest
from singer_sdk.singerlib.exceptions import InvalidInputLine
from target_lytics import reader as reader_module
from target_lytics.errors import input_line_note
from target_lytics.reader import SingerLineReader


class Recorder:
    """Takes runs of the streams it is told to, and notes every call in order."""

    def __init__(self, streams: set[str]) -> None:
        self.streams = streams
        self.calls: list[tuple[str, Any]] = []
        self.seen = threading.Event()

    def takes(self, stream_name: str) -> bool:
        return stream_name in self.streams

    def process_run(self, stream_name: str, records: list[msgspec.Raw]) -> None:
        ids = [orjson.loads(bytes(raw))["id"] for raw in records]
        self.calls.append(("run", (stream_name, ids)))
        self.seen.set()

    def callbacks(self) -> dict:
        def note(kind: str):
            return lambda message: self.calls.append((kind, message))

        return {kind: note(kind) for kind in ("SCHEMA", "RECORD", "STATE", "BATCH")}


def line(message: dict) -> bytes:
    return orjson.dumps(message) + b"\n"


def record(stream: str, number: int, padding: int = 0) -> bytes:
    return line({"type": "RECORD", "stream": stream, "record": {"id": number, "p": "x" * padding}})


MESSAGES = b"".join(
    [
        line({"type": "SCHEMA", "stream": "a", "schema": {}, "key_properties": []}),
        record("a", 1),
        record("a", 2, padding=300),
        record("b", 3),
        record("a", 4),
        line({"type": "STATE", "value": {"n": 4}}),
        record("a", 5),
        record("b", 6),
        record("b", 7),
        line({"type": "STATE", "value": {"n": 7, "ratio": 0.25}}),
    ]
)


def expected_calls() -> list[tuple[str, Any]]:
    return [
        ("SCHEMA", {"type": "SCHEMA", "stream": "a", "schema": {}, "key_properties": []}),
        ("run", ("a", [1, 2])),
        ("RECORD", orjson.loads(record("b", 3))),
        ("run", ("a", [4])),
        ("STATE", {"type": "STATE", "value": {"n": 4}}),
        ("run", ("a", [5])),
        ("RECORD", orjson.loads(record("b", 6))),
        ("RECORD", orjson.loads(record("b", 7))),
        ("STATE", {"type": "STATE", "value": {"n": 7, "ratio": 0.25}}),
    ]


def read(source: Any, streams: set[str]) -> tuple[list, dict]:
    taker = Recorder(streams)
    message_reader = SingerLineReader()
    message_reader.record_runs = taker
    stats = message_reader.process_lines(source, taker.callbacks())
    return taker.calls, dict(stats)


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 64, 7])
def test_messages_keep_their_order_whatever_the_chunk_size(monkeypatch, chunk_bytes):
    monkeypatch.setattr(reader_module, "CHUNK_BYTES", chunk_bytes)
    calls, stats = read(io.BytesIO(MESSAGES), {"a"})
    if chunk_bytes < len(MESSAGES):
        # A run ends where a read ends: the records and other messages keep their order.
        assert [c for c in calls if c[0] != "run"] == [
            c for c in expected_calls() if c[0] != "run"
        ]
        assert [i for c in calls if c[0] == "run" for i in c[1][1]] == [1, 2, 4, 5]
        positions = [i for i, c in enumerate(calls) if c[0] == "STATE"]
        runs_before_state = [i for c in calls[: positions[0]] if c[0] == "run" for i in c[1][1]]
        assert runs_before_state == [1, 2, 4]
    else:
        assert calls == expected_calls()
    assert stats == {"SCHEMA": 1, "RECORD": 7, "STATE": 2}


def test_text_input_reads_the_same():
    calls, stats = read(io.StringIO(MESSAGES.decode()), {"a"})
    assert calls == expected_calls()
    assert stats == {"SCHEMA": 1, "RECORD": 7, "STATE": 2}


def test_floats_outside_records_are_decimals_as_in_the_sdk_reader():
    calls, _ = read(io.BytesIO(MESSAGES), set())
    state = calls[-1][1]
    assert str(state["value"]["ratio"]) == "0.25"
    assert type(state["value"]["ratio"]).__name__ == "Decimal"


def test_runs_are_cut_at_max_run(monkeypatch):
    monkeypatch.setattr(reader_module, "MAX_RUN", 2)
    data = b"".join(record("a", n) for n in range(5))
    calls, _ = read(io.BytesIO(data), {"a"})
    assert calls == [("run", ("a", [0, 1])), ("run", ("a", [2, 3])), ("run", ("a", [4]))]


def test_a_run_is_processed_when_the_pipe_has_nothing_more():
    """A slow tap's records are handled (and its STATE can follow) without a full chunk."""
    read_end, write_end = os.pipe()
    taker = Recorder({"a"})
    message_reader = SingerLineReader()
    message_reader.record_runs = taker
    with open(read_end, "rb") as source, open(write_end, "wb", buffering=0) as sink:
        worker = threading.Thread(
            target=message_reader.process_lines, args=(source, taker.callbacks())
        )
        worker.start()
        try:
            sink.write(record("a", 1) + record("a", 2))
            assert taker.seen.wait(10), "the run waited for more input"
        finally:
            sink.close()
            worker.join(10)
    assert taker.calls == [("run", ("a", [1, 2]))]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\n", "Input line 2: an empty line"),
        (b'{"type": "RECORD", "stream": \n', "Input line 2: not JSON"),
        (b"[1, 2]\n", "Input line 2: a Singer message must be a JSON object"),
        (b'{"stream": "a"}\n', "Input line 2 \\(message of stream 'a'\\): .*missing required type"),
    ],
)
def test_bad_lines_name_their_line(data, says):
    with pytest.raises(InvalidInputLine) as raised:
        read(io.BytesIO(record("a", 1) + data), {"a"})
    assert re.match(says, input_line_note(raised.value) or "")


def test_a_last_line_without_newline_is_read():
    calls, stats = read(io.BytesIO(record("a", 1) + record("a", 2).rstrip(b"\n")), {"a"})
    assert [i for kind, (_, ids) in calls for i in ids] == [1, 2]
    assert stats == {"RECORD": 2}
