"""Settings: --about, --discover, and validation before any call (one message per problem)."""

from __future__ import annotations

import json
import subprocess

import pytest
from tap_cordial_activity import connections
from tap_cordial_activity.tap import TapCordialActivity, config_problems
from test_tap_helpers import TAP, run_tap

ISSUE_SETTINGS = {
    "api_key", "api_url", "start_date", "end_date", "actions", "export_format", "compress",
    "export_window_hours", "sftp_host", "sftp_port", "sftp_username", "sftp_path",
    "sftp_password", "sftp_private_key", "sftp_private_key_passphrase", "cordial_saved_key",
    "sftp_host_key", "poll_interval_seconds", "job_timeout_seconds",
}
SECRETS = {"api_key", "sftp_password", "sftp_private_key", "sftp_private_key_passphrase",
           "s3_secret_access_key", "cordial_s3_secret_access_key"}
BASE = {"api_key": "k", "sftp_host": "h", "sftp_username": "u", "sftp_path": "/p",
        "sftp_password": "pw"}


def test_about_lists_every_setting_and_marks_secrets():
    out = subprocess.run([TAP, "--about", "--format", "json"], capture_output=True, text=True,
                         check=True).stdout
    about = json.loads(out)
    properties = about["settings"]["properties"]
    assert set(properties) >= ISSUE_SETTINGS
    assert {name for name, spec in properties.items() if spec.get("writeOnly")} == SECRETS
    # The SFTP settings are required with `export_destination` sftp only (config_problems).
    assert set(about["settings"]["required"]) == {"api_key"}
    assert properties["export_destination"]["default"] == "sftp"
    assert properties["api_url"]["default"] == "https://api.cordial.io/v2"
    assert properties["sftp_port"]["default"] == 22
    assert properties["export_window_hours"]["default"] == 24


def test_discover_without_config():
    out = subprocess.run([TAP, "--discover"], capture_output=True, text=True, check=True).stdout
    entry, rejects = json.loads(out)["streams"]
    assert rejects["tap_stream_id"] == "activity_rejects"
    assert rejects["key_properties"] == ["export_name", "file", "line"]
    assert entry["tap_stream_id"] == "activity"
    assert entry["key_properties"] == ["_id"]
    assert entry["replication_key"] == "time"
    assert entry["schema"]["additionalProperties"] is True


def test_defaults_are_filled_in():
    tap = TapCordialActivity(config=BASE)
    assert tap.config["actions"] == ["message-sent", "open", "click", "optout", "bounce",
                                     "complaint", "custom"]
    assert tap.config["export_format"] == "json"
    assert tap.config["compress"] is True
    assert tap.config["poll_interval_seconds"] == 15
    assert tap.config["job_timeout_seconds"] == 7200


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sftp_password": None}, "No SFTP login for the tap"),
        ({"sftp_password": None, "sftp_private_key": "x"}, "No way for Cordial to write"),
        ({"sftp_private_key": "not a key"}, "`sftp_private_key` is not an Ed25519"),
        ({"sftp_private_key_passphrase": "p"}, "`sftp_private_key_passphrase` is set but"),
        ({"sftp_host_key": "garbage"}, "`sftp_host_key`: line 1 is neither"),
        ({"sftp_host_key": "ssh-ed25519 !!!"}, "the key is not valid base64"),
        ({"start_date": "last week"}, "`start_date` 'last week' is not a date"),
        ({"start_date": "2024-02-01", "end_date": "2024-01-01"}, "`end_date` must be after"),
        ({"export_window_hours": 0}, "`export_window_hours` must be greater than 0"),
        ({"sftp_port": 70000}, "`sftp_port` must be between 1 and 65535"),
        ({"actions": []}, "`actions` must name at least one action"),
        ({"api_url": "api.cordial.io/v2"}, "`api_url` must start with https://"),
        ({"sftp_host": ""}, "`sftp_host` is required and must not be empty"),
    ],
)
def test_each_problem_has_one_clear_message(changes, message):
    config = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    problems = config_problems(config)
    assert len([p for p in problems if message in p]) == 1, problems


def test_cli_reports_every_problem_before_any_call(tmp_path):
    config = {"api_key": "top-secret-key", "sftp_host": "127.0.0.1", "sftp_port": "22x",
              "sftp_path": "/x", "export_format": "xml", "sftp_private_key": "secret-key-text"}
    run = run_tap(tmp_path, config)
    assert run.returncode == 1
    assert run.stdout == ""
    for expected in ("`sftp_username` is required", "'xml' is not one of", "`sftp_port`",
                     "No way for Cordial to write", "`sftp_private_key` is not an Ed25519",
                     "Config validation failed"):
        assert expected in run.stderr
    assert "top-secret-key" not in run.stderr
    assert "secret-key-text" not in run.stderr
    assert "Traceback" not in run.stderr


def test_cordial_saved_key_wins_over_password():
    from tap_cordial_activity.export import export_body
    from tap_cordial_activity.timeutil import parse_moment
    from tap_cordial_activity.windows import Window

    tap = TapCordialActivity(config={**BASE, "cordial_saved_key": "vault-key"})
    window = Window(parse_moment("2024-01-01"), parse_moment("2024-01-02"))
    body = export_body(tap.config, "n", window)
    assert body["destination"]["savedKey"] == "vault-key"
    assert "password" not in body["destination"]
    assert body["selected_timeframe_start"] == "2024-01-01T00:00:00.000Z"


def test_number_settings_accept_numeric_strings():
    from tap_cordial_activity.export import export_body
    from tap_cordial_activity.settings import integer, number
    from tap_cordial_activity.timeutil import parse_moment
    from tap_cordial_activity.windows import Window

    texts = {"poll_interval_seconds": "0.1", "export_window_hours": "1.5", "sftp_port": "2222",
             "max_retries": "3", "limit_records_per_file": "1000", "request_timeout_seconds": "30",
             "retry_initial_delay_seconds": "0.2", "retry_max_delay_seconds": "5",
             "job_timeout_seconds": "600", "max_concurrent_prefetch_requests": "16"}
    assert config_problems({**BASE, **texts}) == []
    tap = TapCordialActivity(config={**BASE, **texts})
    assert number(tap.config, "poll_interval_seconds") == 0.1
    assert integer(tap.config, "sftp_port") == 2222
    assert connections.cordial_client(tap.config, tap.logger).retry.max_retries == 3
    assert connections.sftp_reader(tap.config, tap.logger).settings.timeout_seconds == 30.0
    window = Window(parse_moment("2024-01-01"), parse_moment("2024-01-02"))
    body = export_body(tap.config, "n", window)
    assert body["destination"]["port"] == 2222
    assert body["limitRecordsPerFile"] == 1000


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"poll_interval_seconds": "ab"}, "`poll_interval_seconds` must be a number (got 'ab')"),
        ({"sftp_port": "22.5"}, "`sftp_port` must be a whole number (got '22.5')"),
        ({"max_retries": "-1"}, "`max_retries` must not be negative (got -1)"),
        ({"retry_max_delay_seconds": "nan"}, "`retry_max_delay_seconds` must be a number"),
        ({"export_window_hours": "0"}, "`export_window_hours` must be greater than 0"),
        ({"sftp_port": "0"}, "`sftp_port` must be between 1 and 65535"),
    ],
)
def test_bad_numeric_strings_name_the_setting(changes, message):
    problems = config_problems({**BASE, **changes})
    assert [p for p in problems if message in p], problems


@pytest.mark.parametrize("name", ["start_date", "end_date"])
@pytest.mark.parametrize("text", ["2026-13-01", "Nov 5", "20260105", "2026-02-30", "yesterday"])
def test_dates_are_checked_as_typed(name, text):
    problems = config_problems({**BASE, name: text})
    assert problems == [
        f"`{name}` {text!r} is not a date (yyyy-mm-dd) or ISO 8601 date-time "
        "(e.g. 2024-05-01 or 2024-05-01T06:00:00Z)."
    ]


@pytest.mark.parametrize(
    "text", ["2026-01-13", "2026-01-13T06:00:00Z", "2026-01-13T06:00:00+02:00",
             "2026-01-13 06:00", "2026-01-13T06:00:00.250-0530"],
)
def test_date_forms_that_are_accepted(text):
    assert config_problems({**BASE, "start_date": text}) == []


def test_cli_refuses_a_rewritable_date_naming_the_setting(tmp_path):
    run = run_tap(tmp_path, {**BASE, "start_date": "2026-13-01"})
    assert run.returncode == 1
    assert run.stdout == ""
    assert "`start_date` '2026-13-01' is not a date" in run.stderr
    assert "Traceback" not in run.stderr
