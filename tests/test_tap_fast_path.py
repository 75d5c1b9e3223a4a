"""The orjson RECORD fast path writes the same messages as singer-sdk's own record path."""

from __future__ import annotations

from datetime import datetime

from tap_cordial_activity.tap import TapCordialActivity
from test_tap_helpers import run_tap


def _without_extraction_time(messages: list[dict]) -> list[dict]:
    out = []
    for message in messages:
        message = dict(message)
        extracted = message.pop("time_extracted", None)
        if message["type"] == "RECORD":
            # Both paths stamp each record with an aware UTC extraction time.
            assert extracted.endswith("Z")
            datetime.fromisoformat(extracted)
        out.append(message)
    return out


def test_fast_and_sdk_paths_emit_identical_messages(sandbox, tmp_path):
    config = sandbox.tap_config(end_date=sandbox.cordial.default_end.isoformat())
    fast = run_tap(tmp_path, config)
    # An identity stream map is a real configuration that forces singer-sdk's record path.
    plain = run_tap(tmp_path, {**config, "stream_maps": {"activity": {}}})
    assert fast.returncode == 0, fast.stderr
    assert plain.returncode == 0, plain.stderr
    assert "Record output: orjson fast path" in fast.stderr
    assert "Record output: singer-sdk" in plain.stderr
    fast_msgs = _without_extraction_time(fast.messages)
    plain_msgs = _without_extraction_time(plain.messages)
    assert len(fast.records) > 100
    # Messages are identical except the per-export STATE boundary ids/order of windows, which
    # are the same too: compare all of them.
    assert fast_msgs == plain_msgs


def test_stream_map_transforms_records_through_sdk_path(sandbox, tmp_path):
    config = sandbox.tap_config(stream_maps={"activity": {"email": "__NULL__", "cID": None}})
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr
    assert "Record output: singer-sdk" in run.stderr
    assert run.records
    assert all("email" not in r for r in run.records)


def test_fast_path_condition():
    tap = TapCordialActivity(config={"api_key": "k", "sftp_host": "h", "sftp_username": "u",
                                     "sftp_path": "/p", "sftp_password": "x"})
    stream = tap.streams["activity"]
    assert stream.fast_path_applies()
    flattening = TapCordialActivity(
        config={**tap.config, "flattening_enabled": True, "flattening_max_depth": 1}
    )
    assert not flattening.streams["activity"].fast_path_applies()
