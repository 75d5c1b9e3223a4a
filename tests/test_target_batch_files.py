"""target-lytics reads BATCH files (a tap's batch_config) as it reads RECORD lines, then deletes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from tap_cordial_activity.streams import SCHEMA as ACTIVITY_SCHEMA
from target_lytics.client import LyticsClient
from target_lytics.errors import BatchFileError, LyticsError, input_line_note
from target_lytics.sinks import FastJSONSchemaValidator
from target_lytics.typed_records import TypedRecordEncoder
from test_target_fastpath import RAW_SCHEMA as FASTPATH_RAW_SCHEMA
from test_target_lytics import (
    COLLECT,
    CheckpointEveryStateTarget,
    config_for,
    cordial_records,
    record_accepted_at_each_state,
    record_message,
    run_target,
    schema_message,
    state_message,
    uploaded_ids,
)

from sandbox.events import generate_events
from sandbox.httpbase import Fault
from sandbox.lytics import LyticsStandIn

#: A stream with no `fields` mapping: no typed encoder, every record decoded, validated, mapped.
RAW_SCHEMA = {
    **FASTPATH_RAW_SCHEMA,
    "properties": {**FASTPATH_RAW_SCHEMA["properties"], "ratio": {"type": ["number", "null"]}},
}
STREAMS: dict[str, tuple[dict, list[str]]] = {
    "activity": (ACTIVITY_SCHEMA, ["_id"]),
    "raw_activity": (RAW_SCHEMA, []),
}


def batch_config_for(lytics: LyticsStandIn, root: Path, **overrides: Any) -> dict[str, Any]:
    """The target's settings with ``root`` trusted for BATCH files."""
    return config_for(lytics, batch_file_roots=[root.as_uri()], **overrides)


def batch_file_error(error: BaseException | None) -> str:
    """A BATCH file's error, once checked to carry the input line's note (the run's one line)."""
    assert isinstance(error, BatchFileError), error
    note = input_line_note(error)
    assert note is not None
    assert note.startswith("Input line 2 (BATCH message of stream "), note
    assert str(error) in note
    return str(error)


def raw_records(count: int) -> list[dict[str, Any]]:
    """Cordial events as they come from the export (not normalized), with floats."""
    records = []
    for line, event in enumerate(generate_events(count, seed=5), start=1):
        if line % 3 == 0:
            event["ratio"] = 0.1 + line / 3
        records.append(event)
    return records


def records_for(stream: str, count: int) -> list[dict[str, Any]]:
    return cordial_records(count) if stream == "activity" else raw_records(count)


def write_files(
    directory: Path, records: list[dict], compression: str | None, per_file: int
) -> list[Path]:
    """JSON Lines files as singer-sdk's batch encoder writes them (one record per line)."""
    paths = []
    for start in range(0, len(records), per_file):
        data = b"".join(orjson.dumps(r) + b"\n" for r in records[start : start + per_file])
        path = directory / f"part-{start}.jsonl"
        if compression == "gzip":
            path = path.with_suffix(".jsonl.gz")
            data = gzip.compress(data)
        path.write_bytes(data)
        paths.append(path)
    return paths


def batch_message(stream: str, compression: str | None, paths: list[Path]) -> str:
    message = {
        "type": "BATCH",
        "stream": stream,
        "encoding": {"format": "jsonl", "compression": compression},
        "manifest": [path.as_uri() for path in paths],
    }
    return json.dumps(message) + "\n"


def uploads(lytics: LyticsStandIn) -> list[tuple[str, list, bytes]]:
    """Every event each request carried, with its stream and query, in a stable order."""
    return sorted(
        (r.stream, sorted(r.query.items()), orjson.dumps(e, option=orjson.OPT_SORT_KEYS))
        for r in lytics.requests
        for e in orjson.loads(r.body)
    )


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> dict[str, int]:
    calls = {"n": 0}
    original = getattr(owner, name)

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize("compression", ["gzip", "none", None])
@pytest.mark.parametrize("stream", ["activity", "raw_activity"])
def test_batch_files_upload_what_record_lines_upload(
    lytics, tmp_path, monkeypatch, stream, compression
):
    schema, keys = STREAMS[stream]
    records = records_for(stream, 300)
    end_state = {"bookmarks": {stream: {"upto": 300}}}
    config = batch_config_for(lytics, tmp_path, max_request_bytes=20_000)
    lines = [schema_message(stream, schema, keys)]
    lines += [record_message(stream, r) for r in records]
    states, error = run_target(config, [*lines, state_message(end_state)])
    assert error is None
    assert states == [end_state]
    from_lines = uploads(lytics)
    assert len(from_lines) == 300

    lytics.reset()
    encoded = count_calls(monkeypatch, TypedRecordEncoder, "encode")
    validated = count_calls(monkeypatch, FastJSONSchemaValidator, "validate")
    paths = write_files(tmp_path, records, compression, per_file=70)
    batch = [lines[0], batch_message(stream, compression, paths), state_message(end_state)]
    states, error = run_target(config, batch)
    assert error is None
    assert uploads(lytics) == from_lines
    assert states == [end_state]
    if stream == "activity":  # the typed way, and no validator call for what it accepts
        assert (encoded["n"], validated["n"]) == (300, 0)
    else:  # the general way: decoded and validated
        assert (encoded["n"], validated["n"]) == (0, 300)
    assert not any(path.exists() for path in paths), "read files are deleted by default"


def test_files_are_kept_with_delete_batch_files_false(lytics, tmp_path):
    records = cordial_records(50)
    paths = write_files(tmp_path, records, "gzip", per_file=20)
    lines = [
        schema_message("activity", ACTIVITY_SCHEMA, ["_id"]),
        batch_message("activity", "gzip", paths),
    ]
    _, error = run_target(batch_config_for(lytics, tmp_path, delete_batch_files=False), lines)
    assert error is None
    assert sorted(uploaded_ids(lytics)) == sorted(r["_id"] for r in records)
    assert all(path.exists() for path in paths)


@pytest.mark.parametrize(
    ("stream", "bad_line", "problem"),
    [
        pytest.param("activity", b'{"_id": "x", "time": ]\n', "malformed", id="invalid-json"),
        pytest.param("activity", b"[1, 2]\n", "not a JSON object", id="not-an-object"),
        pytest.param("raw_activity", b'{"time": 12}\n', "time", id="schema-violation"),
        pytest.param("activity", None, "time", id="schema-violation-typed"),
        pytest.param("activity", b'{"_id": "x", "time": "soon"}\n', "time", id="conversion"),
    ],
)
@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_a_failing_record_names_the_file_and_line(
    lytics, tmp_path, stream, bad_line, problem, compression
):
    schema, keys = STREAMS[stream]
    lytics_stream = "cordial_activity" if stream == "activity" else stream
    records = records_for(stream, 80)
    if bad_line is None:
        bad_line = orjson.dumps({**records[0], "time": 12}) + b"\n"
    good = write_files(tmp_path, records[:40], compression, per_file=40)
    data = b"".join(orjson.dumps(r) + b"\n" for r in records[40:]).splitlines(keepends=True)
    data.insert(25, bad_line)  # line 26 of the second file
    bad = tmp_path / f"bad.jsonl{'.gz' if compression == 'gzip' else ''}"
    bad.write_bytes(gzip.compress(b"".join(data)) if compression == "gzip" else b"".join(data))
    lines = [
        schema_message(stream, schema, keys),
        batch_message(stream, compression, [*good, bad]),
        state_message({"bookmarks": {stream: {"upto": 80}}}),
    ]
    # Small bodies: records of the failing file before the bad line go out while it is read.
    states, error = run_target(batch_config_for(lytics, tmp_path, max_request_bytes=2_000), lines)
    message = batch_file_error(error)
    assert bad.as_uri() in message
    assert "line 26 " in message
    assert f"'{stream}'" in message
    assert problem in message
    assert states == []
    # Uploads of what came before may or may not have finished when the run stopped.
    sent = {e.get("cr_system_event_id", e.get("_id")) for e in lytics.events.get(lytics_stream, [])}
    assert sent.isdisjoint(r["_id"] for r in records[65:]), "nothing past the bad line is sent"
    assert bad.exists(), "a file whose record fails is kept"


def test_unreadable_files_name_the_file(lytics, tmp_path):
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"_id": "a"}\n' * 1000)[:-30])
    missing = tmp_path / "missing.jsonl"
    schema = schema_message("activity", ACTIVITY_SCHEMA, ["_id"])
    for path, compression in ((truncated, "gzip"), (missing, "none")):
        lines = [schema, batch_message("activity", compression, [path])]
        _, error = run_target(batch_config_for(lytics, tmp_path), lines)
        assert path.as_uri() in batch_file_error(error)


def test_other_formats_and_compressions(lytics, tmp_path):
    path = write_files(tmp_path, cordial_records(3), None, per_file=3)[0]
    schema = schema_message("activity", ACTIVITY_SCHEMA, ["_id"])
    # A compression it cannot read is named, not decoded as JSON.
    zstd = batch_message("activity", "zstd", [path])
    _, error = run_target(batch_config_for(lytics, tmp_path), [schema, zstd])
    assert "'zstd'" in batch_file_error(error)
    # Parquet is left to singer-sdk's own reader (which needs pyarrow, not installed here).
    parquet = batch_message("activity", None, [path]).replace('"jsonl"', '"parquet"')
    _, error = run_target(batch_config_for(lytics, tmp_path), [schema, parquet])
    assert isinstance(error, NotImplementedError)
    assert "parquet" in str(error)
    assert path.exists()


def batch_lines(
    root: Path, records: list[dict], part: int, compression: str, per_file: int
) -> list[str]:
    """SCHEMA, then per ``part`` records: their files' BATCH message and a STATE ``upto``."""
    lines = [schema_message("activity", ACTIVITY_SCHEMA, ["_id"])]
    for start in range(0, len(records), part):
        directory = root / str(start)
        directory.mkdir()
        paths = write_files(directory, records[start : start + part], compression, per_file)
        state = state_message({"upto": start + part})
        lines += [batch_message("activity", compression, paths), state]
    return lines


def test_state_after_a_batch_waits_for_its_events(lytics, tmp_path, monkeypatch):
    records = cordial_records(120)
    written_with = record_accepted_at_each_state(monkeypatch, lytics)
    lines = batch_lines(tmp_path, records, 30, "gzip", per_file=15)
    config = batch_config_for(lytics, tmp_path, max_request_bytes=3_000)
    states, error = run_target(config, lines, CheckpointEveryStateTarget)
    assert error is None
    upto = [s["upto"] for s in states]
    assert upto == sorted(set(upto))
    assert upto[-1] == 120
    assert all(accepted >= n for accepted, n in zip(written_with, upto, strict=True))


def test_state_after_a_batch_is_not_written_when_its_upload_fails(lytics, tmp_path, monkeypatch):
    records = cordial_records(60)
    original_upload = LyticsClient.upload
    calls = {"n": 0}

    def failing_later(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second BATCH's body: Lytics fails for good from here on
            lytics.inject(COLLECT, *[Fault(status=500)] * 10)
        return original_upload(self, *args, **kwargs)

    monkeypatch.setattr(LyticsClient, "upload", failing_later)
    lines = batch_lines(tmp_path, records, 20, "none", per_file=20)
    config = batch_config_for(lytics, tmp_path, max_retries=2, max_concurrent_uploads=1)
    states, error = run_target(config, lines, CheckpointEveryStateTarget)
    assert isinstance(error, LyticsError)
    assert [s["upto"] for s in states] in ([], [20])
    assert len(uploaded_ids(lytics)) == 20
