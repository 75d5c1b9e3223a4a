"""Malformed input ends the target's run in one line naming the input line, stream or setting.

Each case runs the target's command against the Lytics stand-in with a STATE before the bad line
and one after it: exit 1, exactly one ERROR line saying where and what, no traceback, and no
STATE past the bad line (issue 25: "one line instead of a traceback", the BATCH file and stream
name cases, two fields onto one Lytics field, a 20 MB bad line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tap_cordial_activity.streams import SCHEMA as ACTIVITY_SCHEMA
from target_lytics.settings import DEFAULT_STREAMS, input_settings_problems, lytics_stream_problem
from test_target_lytics import config_for, cordial_records

from sandbox.lytics import LyticsStandIn

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "n": {"type": ["integer", "null"]},
        "time": {"type": ["string", "null"], "format": "date-time"},
    },
}
BEFORE = {"at": "before"}
AFTER = {"at": "after"}


def message(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def schema(stream: str = "s", **extra: Any) -> bytes:
    return message(type="SCHEMA", stream=stream, schema=SCHEMA, key_properties=["id"], **extra)


def record(value: dict[str, Any], stream: str = "s") -> bytes:
    return message(type="RECORD", stream=stream, record=value)


def raw_record(body: bytes, stream: str = "s") -> bytes:
    return b'{"type":"RECORD","stream":"' + stream.encode() + b'","record":' + body + b"}"


def state(value: dict[str, Any]) -> bytes:
    return message(type="STATE", value=value)


def batch(stream: str = "s", **fields: Any) -> bytes:
    return message(type="BATCH", stream=stream, **fields)


JSONL = {"format": "jsonl", "compression": "none"}


@dataclass
class Case:
    """Lines before the bad one (after SCHEMA and the first STATE), the bad line, what it says."""

    #: The lines, with ``BAD`` where the bad line goes; a STATE follows the last line.
    lines: list[bytes]
    #: Substrings of the one ERROR line.
    says: list[str]
    settings: dict[str, Any] = field(default_factory=dict)


def standard(bad: bytes, *says: str, stream: str = "s") -> Case:
    """SCHEMA (line 1), STATE (2), a good record (3), the bad line (4)."""
    return Case([schema(stream), state(BEFORE), record({"id": "ok"}, stream), bad], list(says))


def activity(value: dict[str, Any]) -> bytes:
    return record(value, "activity")


ACTIVITY = cordial_records(1)[0]
NESTED_300 = b'{"id":"a","x":' + b"[" * 300 + b"]" * 300 + b"}"
NESTED_2000 = b'{"id":"a","x":' + b"[" * 2000 + b"]" * 2000 + b"}"

CASES: dict[str, Case] = {
    "record-before-schema": Case(
        [state(BEFORE), record({"id": "a"})], ["Input line 2", "'s'", "before its stream's SCHEMA"]
    ),
    "record-of-unknown-stream": standard(
        record({"id": "a"}, "zz"), "Input line 4", "'zz'", "SCHEMA"
    ),
    "invalid-json-schema": Case(
        [
            state(BEFORE),
            message(
                type="SCHEMA",
                stream="s",
                schema={"type": "object", "properties": {"id": {"type": "wat"}}},
                key_properties=[],
            ),
        ],
        ["Input line 2", "'s'", "not a valid JSON Schema"],
    ),
    "schema-without-properties": Case(
        [state(BEFORE), message(type="SCHEMA", stream="s", schema={"type": "wat"})],
        ["Input line 2", "'s'", "properties"],
    ),
    "key-properties-as-string": Case(
        [
            state(BEFORE),
            message(type="SCHEMA", stream="s", schema=SCHEMA, key_properties="id"),
            record({"id": "a"}),
        ],
        ["Input line 2", "'s'", "`key_properties` must be a list of field names"],
    ),
    "not-json": standard(b"hello", "Input line 4", "not JSON", "'hello'"),
    "empty-line": standard(b"", "Input line 4", "an empty line"),
    "blank-line": standard(b"   \t", "Input line 4", "an empty line"),
    "raw-nul": standard(raw_record(b'{"id":"a\x00"}'), "Input line 4", "'s'", "not JSON"),
    "lone-surrogate": standard(
        raw_record(b'{"id":"\\ud800"}'), "Input line 4", "'s'", "lone UTF-16 surrogate"
    ),
    "nan": standard(raw_record(b'{"id":"a","n":NaN}'), "Input line 4", "'s'", "no NaN"),
    "infinity": standard(raw_record(b'{"id":"a","n":Infinity}'), "Input line 4", "'s'", "not JSON"),
    "invalid-utf8": standard(
        raw_record(b'{"id":"\xff\xfe"}'), "Input line 4", "'s'", "invalid UTF-8"
    ),
    "nesting-300": standard(raw_record(NESTED_300), "Input line 4", "'s'", "Recursion limit"),
    "nesting-2000": standard(raw_record(NESTED_2000), "Input line 4", "'s'", "nested too deeply"),
    "integer-over-64-bits": standard(
        raw_record(b'{"id":"a","n":123456789012345678901234567890}'),
        "Input line 4",
        "'s'",
        "64-bit",
    ),
    "activate-version-unknown-stream": standard(
        message(type="ACTIVATE_VERSION", stream="zz", version=1),
        "Input line 4",
        "'zz'",
        "no SCHEMA",
    ),
    "activate-version-without-version": standard(
        message(type="ACTIVATE_VERSION", stream="s"), "Input line 4", "'s'", "`version`"
    ),
    "batch-unknown-stream": standard(
        batch("zz", encoding=JSONL, manifest=["file:///tmp/x.jsonl"]),
        "Input line 4",
        "'zz'",
        "no SCHEMA",
    ),
    "batch-without-encoding": standard(
        batch(manifest=["file:///tmp/x.jsonl"]), "Input line 4", "'s'", "`encoding`"
    ),
    "batch-without-manifest": standard(batch(encoding=JSONL), "Input line 4", "'s'", "`manifest`"),
    "batch-unsupported-scheme": standard(
        batch(encoding=JSONL, manifest=["s3://bucket/x.jsonl"]),
        "Input line 4",
        "'s'",
        "s3://bucket/x.jsonl",
        "not a local file",
    ),
    "unknown-message-type": standard(
        message(type="WAT", stream="s"), "Input line 4", "'WAT'", "expected one of"
    ),
    "record-fails-validation": standard(
        record({"id": "a", "n": "x"}),
        "Input line 4",
        "'s'",
        "Record Message Validation Error in stream 's'",
        "record.n",
    ),
    "record-fails-validation-sdk-path": Case(
        # A stream map sends the stream through singer-sdk's record loop (not the fast path).
        [schema(), state(BEFORE), record({"id": "ok"}), record({"id": "a", "n": "x"})],
        ["Input line 4", "'s'", "Record Message Validation Error in stream 's'", "record.n"],
        {"stream_maps": {"s": {"extra": "'x'"}}},
    ),
    "record-fails-validation-mid-run": Case(
        [
            schema(),
            state(BEFORE),
            record({"id": "a"}),
            record({"id": "b"}),
            record({"id": "c", "n": "x"}),
            record({"id": "d"}),
        ],
        ["Input line 5", "'s'", "record.n"],
    ),
    "time-at-year-1": standard(
        record({"id": "a", "time": "0001-01-01T00:00:00+05:00"}),
        "Input line 4",
        "field 'time'",
        "out of range",
    ),
    "typed-time-at-year-1": Case(
        [
            message(
                type="SCHEMA", stream="activity", schema=ACTIVITY_SCHEMA, key_properties=["_id"]
            ),
            state(BEFORE),
            activity(ACTIVITY),
            activity({**ACTIVITY, "time": "0001-01-01T00:00:00+05:00"}),
        ],
        ["Input line 4", "'activity'", "field 'time'", "out of range"],
    ),
    "typed-record-fails-validation": Case(
        [
            message(
                type="SCHEMA", stream="activity", schema=ACTIVITY_SCHEMA, key_properties=["_id"]
            ),
            state(BEFORE),
            activity(ACTIVITY),
            activity({**ACTIVITY, "time": 12}),
        ],
        ["Input line 4", "'activity'", "Record Message Validation Error", "record.time"],
    ),
    "stream-maps-expression-does-not-parse": Case(
        [state(BEFORE), schema()],
        ["Input line 2", "'s'", "stream_maps setting", "1 +*"],
        {"stream_maps": {"s": {"x": "1 +* "}}},
    ),
    "stream-maps-expression-fails": Case(
        [schema(), state(BEFORE), record({"id": "a"})],
        ["Input line 3", "'s'", "stream_maps setting", "undefined_fn"],
        {"stream_maps": {"s": {"x": "undefined_fn(id)"}}},
    ),
    "unmapped-field-onto-a-mapped-one": Case(
        [state(BEFORE), schema(), record({"id": "a", "n": 1})],
        ["Input line 2", "'s'", "field 'n' is not mapped", "'id' is mapped onto"],
        {"include_unmapped_fields": True, "streams": {"s": {"fields": {"id": "N"}}}},
    ),
    "unmapped-field-outside-the-schema-onto-a-mapped-one": Case(
        [schema(), state(BEFORE), record({"id": "ok"}), record({"id": "a", "b": "y"})],
        ["Input line 4", "'s'", "field 'b' is not in the stream's schema", "'id' is mapped onto"],
        {"include_unmapped_fields": True, "streams": {"s": {"fields": {"id": "b"}}}},
    ),
    "singer-stream-dot-dot": Case(
        [state(BEFORE), schema(".."), record({"id": "a"}, "..")],
        ["Input line 2", "'..'", "relative path segment"],
    ),
    "singer-stream-empty": Case(
        [state(BEFORE), schema(""), record({"id": "a"}, "")],
        ["Input line 2", "Lytics stream ''", "is empty"],
    ),
    "singer-stream-with-slash": Case(
        [state(BEFORE), schema("a/b"), record({"id": "a"}, "a/b")],
        ["Input line 2", "'a/b'", "path separator"],
    ),
}

#: A token in api_url, as old Lytics docs show it: never printed.
URL_TOKEN = "url-token-" + os.urandom(8).hex()

SETTINGS_CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "api-url-with-a-query": (
        {"api_url": f"https://api.lytics.io/?access_token={URL_TOKEN}"},
        ["`api_url` holds a query string or fragment", "api_token"],
    ),
    "api-url-with-a-fragment": (
        {"api_url": f"https://api.lytics.io/#{URL_TOKEN}"},
        ["`api_url` holds a query string or fragment"],
    ),
    "api-url-with-an-empty-query": (
        {"api_url": "https://api.lytics.io?"},
        ["`api_url` holds a query string or fragment"],
    ),
    "max-concurrent-uploads-null": (
        {"max_concurrent_uploads": None},
        ["`max_concurrent_uploads` is null"],
    ),
    "two-fields-onto-one": (
        {"streams": {"s": {"fields": {"id": "same", "v": "same"}}}},
        ["`streams.s.fields`", "'id' -> 'same'", "'v' -> 'same'", "same Lytics field 'same'"],
    ),
    "two-fields-onto-one-by-case": (
        {"streams": {"s": {"fields": {"id": "Same", "v": {"field": "same", "type": "int"}}}}},
        ["`streams.s.fields`", "'id' -> 'Same'", "same Lytics field 'same'"],
    ),
    "activity-field-onto-a-default-field": (
        {
            "streams": {
                "activity": {
                    "fields": {**DEFAULT_STREAMS["activity"]["fields"], "email": "CR_CONTACT_ID"}
                }
            }
        },
        ["`streams.activity.fields`", "'cID' -> 'cr_contact_id'", "'email' -> 'CR_CONTACT_ID'"],
    ),
    "lytics-stream-dot-dot": (
        {"streams": {"s": {"lytics_stream": ".."}}},
        ["`streams.s`", "Lytics stream '..'", "/collect/json/{stream}"],
    ),
    "lytics-stream-dot": (
        {"streams": {"s": {"lytics_stream": "."}}},
        ["`streams.s`", "Lytics stream '.'"],
    ),
    "singer-stream-key-dot-dot": (
        {"streams": {"..": {"fields": {"id": "x"}}}},
        ["`streams...`", "Lytics stream '..'", "(the Singer stream's name)"],
    ),
    "batch-file-roots-not-local": (
        {"batch_file_roots": ["s3://bucket/batches"]},
        ["`batch_file_roots`", "s3://bucket/batches"],
    ),
}


def run(
    lytics: LyticsStandIn, tmp_path: Path, lines: list[bytes], **settings: Any
) -> subprocess.CompletedProcess[bytes]:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config_for(lytics, **settings)))
    return subprocess.run(
        [sys.executable, "-m", "target_lytics.target", "--config", str(config_file)],
        input=b"".join(line + b"\n" for line in lines),
        capture_output=True,
        timeout=60,
        env={**os.environ},
        check=False,
    )


def check_one_line(result: subprocess.CompletedProcess[bytes], says: list[str]) -> str:
    """Exit 1, one ERROR line holding ``says``, no traceback; the line."""
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "| ERROR" in line]
    assert len(errors) == 1, errors
    for part in says:
        assert part in errors[0], (part, errors[0])
    return errors[0]


def written_states(result: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_malformed_line_ends_the_run_in_one_line(lytics, tmp_path, name):
    case = CASES[name]
    result = run(lytics, tmp_path, [*case.lines, state(AFTER)], **case.settings)
    check_one_line(result, case.says)
    assert written_states(result) in ([], [BEFORE]), "no STATE past the bad line"


@pytest.mark.parametrize("name", sorted(SETTINGS_CASES))
def test_a_mistaken_setting_ends_the_run_in_one_line(lytics, tmp_path, name):
    settings, says = SETTINGS_CASES[name]
    lines = [schema(), state(BEFORE), record({"id": "a", "v": 1}), state(AFTER)]
    result = run(lytics, tmp_path, lines, **settings)
    check_one_line(result, says)
    assert written_states(result) == []
    assert not lytics.requests, "nothing is sent"
    assert URL_TOKEN.encode() not in result.stdout + result.stderr


def test_schema_plan_refuses_two_fields_onto_one(lytics, tmp_path):
    # --schema-plan used to list the field three times with "0 conflicts".
    config_file = tmp_path / "config.json"
    streams = {"s": {"fields": {"id": "same", "v": "SAME"}}}
    config_file.write_text(json.dumps(config_for(lytics, streams=streams)))
    command = [sys.executable, "-m", "target_lytics.target", "--config", str(config_file)]
    result = subprocess.run(
        [*command, "--schema-plan"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    check_one_line(result, ["`streams.s.fields`", "'v' -> 'SAME'", "same Lytics field 'same'"])
    assert b"conflicts" not in result.stdout + result.stderr


def test_a_20_mb_bad_line_is_quoted_not_echoed(lytics, tmp_path):
    bad = b'{"type":"RECORD","stream":"s","record":{"id":"' + b"x" * 20_000_000 + b"}"
    result = run(lytics, tmp_path, [schema(), state(BEFORE), bad, state(AFTER)])
    line = check_one_line(result, ["Input line 3", "'s'", "not JSON", "(20000047 bytes)"])
    assert len(line) < 1_000
    assert len(result.stderr) < 20_000, "the bad line is not echoed"


def test_a_bad_record_at_the_end_of_a_run_names_its_line(lytics, tmp_path):
    # The last lines of the input form the run: the failing record is the last line.
    lines = [schema(), state(BEFORE), *(record({"id": str(i)}) for i in range(5))]
    result = run(lytics, tmp_path, [*lines, record({"id": "x", "n": "bad"})])
    check_one_line(result, ["Input line 8", "'s'", "record.n"])


# -- BATCH files: only regular files under batch_file_roots ------------------------------------


def batch_run(
    lytics: LyticsStandIn, tmp_path: Path, urls: list[str], **settings: Any
) -> subprocess.CompletedProcess[bytes]:
    lines = [schema(), state(BEFORE), batch(encoding=JSONL, manifest=urls), state(AFTER)]
    return run(lytics, tmp_path, lines, **settings)


def _roots(path: Path) -> dict[str, Any]:
    return {"batch_file_roots": [path.as_uri()]}


def _file(directory: Path, name: str = "part.jsonl") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n')
    return path


def _outside(tmp_path: Path) -> tuple[dict[str, Any], list[str], list[str]]:
    secret = _file(tmp_path / "elsewhere", "config.json")
    return _roots(tmp_path / "batches"), [secret.as_uri()], ["not under", "config.json"]


def _symlink_out(tmp_path: Path) -> tuple[dict[str, Any], list[str], list[str]]:
    secret = _file(tmp_path / "elsewhere", "config.json")
    link = tmp_path / "batches" / "part.jsonl"
    link.parent.mkdir()
    link.symlink_to(secret)
    return _roots(tmp_path / "batches"), [link.as_uri()], ["a symlink out of", "batch_file_roots"]


def _dot_dot(tmp_path: Path) -> tuple[dict[str, Any], list[str], list[str]]:
    secret = _file(tmp_path / "elsewhere", "config.json")
    (tmp_path / "batches").mkdir()
    url = (tmp_path / "batches").as_uri() + "/../elsewhere/config.json"
    assert Path(url.removeprefix("file://")).resolve() == secret.resolve()
    return _roots(tmp_path / "batches"), [url], ["not under"]


def _dev_zero(tmp_path: Path) -> tuple[dict[str, Any], list[str], list[str]]:
    return {"batch_file_roots": ["/dev"]}, ["file:///dev/zero"], ["not a regular file"]


def _fifo(tmp_path: Path) -> tuple[dict[str, Any], list[str], list[str]]:
    fifo = tmp_path / "batches" / "part.jsonl"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    return _roots(tmp_path / "batches"), [fifo.as_uri()], ["not a regular file"]


def _no_roots(tmp_path: Path) -> tuple[dict[str, Any], list[str], list[str]]:
    path = _file(tmp_path / "batches")
    return {}, [path.as_uri()], ["batch_file_roots setting, which is empty"]


def _remote_host(tmp_path: Path) -> tuple[dict[str, Any], list[str], list[str]]:
    return _roots(tmp_path), ["file://otherhost/tmp/part.jsonl"], ["not a local file"]


def _s3(tmp_path: Path) -> tuple[dict[str, Any], list[str], list[str]]:
    return _roots(tmp_path), ["s3://bucket/part.jsonl"], ["not a local file"]


BATCH_CASES: dict[str, Callable[[Path], tuple[dict[str, Any], list[str], list[str]]]] = {
    "outside-the-roots": _outside,
    "symlink-out-of-the-root": _symlink_out,
    "dot-dot-out-of-the-root": _dot_dot,
    "dev-zero": _dev_zero,
    "fifo": _fifo,
    "no-roots-configured": _no_roots,
    "remote-host": _remote_host,
    "s3-url": _s3,
}


@pytest.mark.parametrize("name", sorted(BATCH_CASES))
def test_a_batch_file_outside_the_trusted_roots_is_refused(lytics, tmp_path, name):
    settings, urls, says = BATCH_CASES[name](tmp_path)
    result = batch_run(lytics, tmp_path, urls, **settings)
    check_one_line(result, ["Input line 3", "BATCH message of stream 's'", *says])
    assert written_states(result) in ([], [BEFORE])
    assert not lytics.requests, "nothing of the file is sent"
    for path in (tmp_path / "elsewhere" / "config.json", tmp_path / "batches" / "part.jsonl"):
        if path.parent.exists() and path.name in {p.name for p in path.parent.iterdir()}:
            assert path.exists() or path.is_symlink(), "a refused file is not deleted"


def test_a_batch_file_under_a_root_is_read_and_deleted(lytics, tmp_path):
    path = _file(tmp_path / "batches")
    # A path given as a plain absolute path and a root given as one work as file:// URLs do.
    result = batch_run(lytics, tmp_path, [str(path)], batch_file_roots=[str(tmp_path / "batches")])
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert [e["id"] for e in lytics.events["s"]] == ["a", "b"]
    assert written_states(result)[-1] == AFTER
    assert not path.exists()


def test_a_symlink_inside_the_root_is_read(lytics, tmp_path):
    target = _file(tmp_path / "batches" / "real")
    link = tmp_path / "batches" / "link.jsonl"
    link.symlink_to(target)
    result = batch_run(lytics, tmp_path, [link.as_uri()], **_roots(tmp_path / "batches"))
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert [e["id"] for e in lytics.events["s"]] == ["a", "b"]


# -- the settings checks as functions ------------------------------------------------------------


def test_the_default_mapping_has_no_collision():
    assert input_settings_problems({}) == []


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        (".", "relative path segment"),
        ("..", "relative path segment"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("a\nb", "control characters"),
        (" a", "surrounding spaces"),
        ("cordial_activity", None),
        ("my-stream.v2", None),
    ],
)
def test_lytics_stream_names(name, problem):
    found = lytics_stream_problem(name)
    assert (found is None) if problem is None else (problem in (found or "")), found
