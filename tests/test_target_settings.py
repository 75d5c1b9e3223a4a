"""target-lytics settings: numbers given as text, problems naming the setting, the defaults."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from singer_sdk.exceptions import ConfigValidationError
from target_lytics.settings import CONFIG_SCHEMA
from target_lytics.target import TargetLytics

ROOT = Path(__file__).resolve().parent.parent
TARGET_README = ROOT / "target-lytics" / "README.md"

NUMBERS_AS_TEXT = {
    "max_request_bytes": "20000",
    "request_timeout_seconds": "0.5",
    "max_retries": "3",
    "retry_initial_delay_seconds": "0.01",
    "retry_max_delay_seconds": " 0.1 ",
    "batch_size_rows": "50",
}


def problems(config: dict) -> list[str]:
    with pytest.raises(ConfigValidationError) as info:
        TargetLytics(config={"api_token": "t", **config})
    return list(info.value.errors)


def test_number_settings_accept_numbers_given_as_text():
    target = TargetLytics(config={"api_token": "t", **NUMBERS_AS_TEXT})
    assert target.max_request_bytes == 20_000
    assert target.client.timeout_seconds == 0.5
    assert target.client.retry.max_retries == 3
    assert target.client.retry.initial_delay_seconds == 0.01
    assert target.client.retry.max_delay_seconds == 0.1
    sink = target.add_sink("s", {"type": "object", "properties": {"id": {"type": "integer"}}}, [])
    assert sink.max_size == 50
    sink.clean_up()


def test_text_settings_drive_a_real_run(lytics):
    target = TargetLytics(
        config={"api_token": lytics.token, "api_url": lytics.url, **NUMBERS_AS_TEXT}
    )
    schema = {"type": "object", "properties": {"id": {"type": "integer"}}}
    lines = [json.dumps({"type": "SCHEMA", "stream": "s", "schema": schema, "key_properties": []})]
    lines += [
        json.dumps({"type": "RECORD", "stream": "s", "record": {"id": i}}) for i in range(120)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        target.listen(io.StringIO("\n".join(lines) + "\n"))
    assert sorted(len(orjson.loads(r.body)) for r in lytics.requests) == [20, 50, 50]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(
            {"request_timeout_seconds": "soon"},
            ["`request_timeout_seconds` must be a number (got 'soon')."],
            id="not-a-number",
        ),
        pytest.param(
            {"max_retries": "2.5"},
            ["`max_retries` must be a whole number (got '2.5')."],
            id="not-whole",
        ),
        pytest.param(
            {"retry_max_delay_seconds": "nan"},
            ["`retry_max_delay_seconds` must be a number (got 'nan')."],
            id="nan",
        ),
        pytest.param(
            {"max_request_bytes": "20000000"},
            ["`max_request_bytes` is 20000000; Lytics accepts at most 10000000 bytes per request."],
            id="text-above-the-cap",
        ),
    ],
)
def test_a_bad_number_is_refused_naming_the_setting(config, expected):
    assert problems(config) == expected


def test_out_of_range_text_is_checked_like_a_number():
    for value in ("0", 0):
        (problem,) = problems({"request_timeout_seconds": value})
        assert problem.startswith("`request_timeout_seconds`: 0 ")
    (problem,) = problems({"max_retries": "-1"})
    assert problem.startswith("`max_retries`: -1 is less than the minimum of 0")


def test_every_problem_is_listed_at_once():
    listed = problems({"api_token": 5, "max_retries": "x", "batch_size_rows": "0"})
    assert listed == [
        "`max_retries` must be a whole number (got 'x').",
        "`api_token` must be a text value.",
        "`batch_size_rows`: 0 is less than the minimum of 1.",
    ]


def test_cli_refuses_a_bad_number_without_a_traceback(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"api_token": "secret-token-1", "request_timeout_seconds": "x"}))
    for args in ([], ["--test"]):
        result = subprocess.run(
            [sys.executable, "-m", "target_lytics.target", "--config", str(config), *args],
            input="",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1, args
        assert "`request_timeout_seconds` must be a number (got 'x')." in result.stderr
        assert "Traceback" not in result.stderr
        assert "unhandled" not in result.stderr.lower()
        assert "secret-token-1" not in result.stderr + result.stdout


def test_batch_size_rows_default_is_the_sinks_default():
    target = TargetLytics(config={"api_token": "t"})
    assert target.config["batch_size_rows"] == 200_000
    sink = target.add_sink("s", {"type": "object", "properties": {}}, [])
    assert sink.max_size == 200_000
    sink.clean_up()


def test_target_readme_lists_every_setting_of_the_schema():
    """target-lytics/README.md's settings table (generated from --about) names every setting."""
    text = TARGET_README.read_text(encoding="utf-8")
    rows = re.findall(r"^\| ([a-z_]+) \| (?:True|False) \|", text, re.MULTILINE)
    for name in CONFIG_SCHEMA["properties"]:
        assert name in rows, f"target-lytics/README.md does not list {name}"


def test_number_settings_are_typed_as_number_or_text():
    for name in NUMBERS_AS_TEXT:
        types = CONFIG_SCHEMA["properties"][name]["type"]
        assert "string" in types, name
        assert {"integer", "number"} & set(types), name
