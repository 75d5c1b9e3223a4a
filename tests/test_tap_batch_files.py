"""``batch_config``: records go out as JSONL BATCH files inside the windows, each before a STATE."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from tap_cordial_activity.settings import config_problems
from test_tap_helpers import TapRun, run_tap


def _batch_config(root: Path, compression: str = "none", **extra: Any) -> dict[str, Any]:
    return {
        "encoding": {"format": "jsonl", "compression": compression},
        "storage": {"root": root.as_uri(), "prefix": "cordial-"},
        **extra,
    }


def _file_records(url: str, compression: str) -> list[dict[str, Any]]:
    path = Path(urlsplit(url).path)
    data = path.read_bytes()
    if compression == "gzip":
        data = gzip.decompress(data)
    assert data.endswith(b"\n")
    return [orjson.loads(line) for line in data.splitlines()]


def _records_before_each_state(run: TapRun, compression: str = "none") -> list[int]:
    """How many records went out before each STATE message (RECORD lines or BATCH files)."""
    seen, counts = 0, []
    for message in run.messages:
        if message["type"] == "RECORD":
            seen += 1
        elif message["type"] == "BATCH":
            seen += len(_file_records(message["manifest"][0], compression))
        elif message["type"] == "STATE":
            counts.append(seen)
    return counts


def _without_job_names(states: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for state in states:
        bookmark = dict(state["bookmarks"]["activity"])
        if "progress" in bookmark:
            progress = bookmark["progress"]
            bookmark["progress"] = {
                k: v for k, v in progress.items() if k not in {"export", "job_id", "files"}
            }
        out.append(bookmark)
    return out


def _batch_records(run: TapRun, compression: str = "none") -> list[dict[str, Any]]:
    records = []
    for message in run.messages:
        if message["type"] == "BATCH":
            assert message["stream"] == "activity"
            assert message["encoding"] == {"format": "jsonl", "compression": compression}
            assert len(message["manifest"]) == 1
            records += _file_records(message["manifest"][0], compression)
    return records


def test_batch_files_hold_the_records_and_precede_their_state(sandbox, tmp_path):
    # Several export files per window: a checkpoint STATE after each file but the last.
    config = sandbox.tap_config(
        end_date=sandbox.cordial.default_end.isoformat(), limit_records_per_file=40
    )
    plain = run_tap(tmp_path, config)
    batched = run_tap(tmp_path, {**config, "batch_config": _batch_config(tmp_path / "b")})
    assert plain.returncode == 0, plain.stderr
    assert batched.returncode == 0, batched.stderr
    assert "Record output: BATCH files (jsonl) in file://" in batched.stderr

    kinds = [m["type"] for m in batched.messages]
    assert "RECORD" not in kinds
    assert kinds[0] == "SCHEMA"
    # Each file is named before the STATE that covers its records.
    assert kinds.count("BATCH") > 2
    for index, kind in enumerate(kinds):
        if kind == "BATCH":
            assert kinds[index + 1] == "STATE"
    assert len(plain.records) > 100
    assert _batch_records(batched) == plain.records
    # The same STATE messages (but each run's own export jobs), each after the same number of
    # records as on the RECORD path.
    assert _without_job_names(batched.states) == _without_job_names(plain.states)
    assert _records_before_each_state(batched) == _records_before_each_state(plain)


def test_batch_size_gzip_and_file_names(sandbox, tmp_path):
    config = sandbox.tap_config(end_date=sandbox.cordial.default_end.isoformat())
    root = tmp_path / "gz"
    run = run_tap(tmp_path, {**config, "batch_config": _batch_config(root, "gzip", batch_size=7)})
    assert run.returncode == 0, run.stderr
    plain = run_tap(tmp_path, config)
    urls = [m["manifest"][0] for m in run.messages if m["type"] == "BATCH"]
    sizes = [len(_file_records(url, "gzip")) for url in urls]
    assert max(sizes) == 7
    assert sum(sizes) == len(plain.records)
    assert _batch_records(run, "gzip") == plain.records
    names = [Path(urlsplit(url).path).name for url in urls]
    assert len(set(names)) == len(names)
    assert all(n.startswith("cordial-tap-cordial-activity--activity-") for n in names)
    assert all(n.endswith(".jsonl.gz") for n in names)
    assert sorted(p.name for p in root.iterdir()) == sorted(names)
    # A second run writes files of its own next to the first run's.
    again = run_tap(tmp_path, {**config, "batch_config": _batch_config(root, "gzip")})
    assert again.returncode == 0, again.stderr
    assert len(list(root.iterdir())) > len(names)


def test_stream_maps_turn_batch_files_off(sandbox, tmp_path):
    root = tmp_path / "maps"
    config = sandbox.tap_config(
        end_date=sandbox.cordial.default_end.isoformat(),
        stream_maps={"activity": {"email": "__NULL__"}},
        batch_config=_batch_config(root),
    )
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr
    assert "`batch_config` is ignored: stream maps" in run.stderr
    assert run.records
    assert all("email" not in r for r in run.records)
    assert not any(m["type"] == "BATCH" for m in run.messages)
    assert not root.exists()


@pytest.mark.parametrize(
    ("batch_config", "problem"),
    [
        (
            {"encoding": {"format": "parquet"}, "storage": {"root": "file:///tmp/b"}},
            "`batch_config.encoding.format` must be `jsonl`",
        ),
        ({"encoding": {"format": "jsonl"}}, "`batch_config.storage.root` is required"),
        (
            {"encoding": {"format": "jsonl"}, "storage": {"root": "/tmp/b"}, "batch_size": 0},
            "`batch_config.batch_size` must be a whole number above 0, not 0",
        ),
    ],
)
def test_batch_config_problems(batch_config, problem):
    config = {"api_key": "k", "sftp_host": "h", "sftp_username": "u", "sftp_path": "/p",
              "sftp_password": "x", "batch_config": batch_config}
    assert any(problem in p for p in config_problems(config)), config_problems(config)


def test_batch_config_problem_stops_the_run_before_any_export(sandbox, tmp_path):
    config = sandbox.tap_config(batch_config={"encoding": {"format": "parquet"}})
    run = run_tap(tmp_path, config)
    assert run.returncode != 0
    assert "`batch_config.encoding.format` must be `jsonl`" in run.stderr
    assert "`batch_config.storage.root` is required" in run.stderr
    assert not sandbox.cordial.exports


def test_an_unwritable_storage_root_ends_the_run_naming_it(sandbox, tmp_path):
    root = tmp_path / "not-a-folder"
    root.write_text("a file where the batch folder should be")
    config = sandbox.tap_config(
        end_date=sandbox.cordial.default_end.isoformat(), batch_config=_batch_config(root)
    )
    run = run_tap(tmp_path, config)
    assert run.returncode != 0
    assert f"under `batch_config.storage.root` {root.as_uri()}" in run.stderr
    assert "Traceback" not in run.stderr
    assert not any(m["type"] == "BATCH" for m in run.messages)
    # No STATE moved past the records the file would have held.
    assert all("replication_key_value" not in s["bookmarks"]["activity"] for s in run.states)
