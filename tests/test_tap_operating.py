"""Operating the tap: --test answers in seconds naming the host that failed, handled errors are
one line (no "An unhandled error occurred", no ResourceWarning), settings given as text work, and
a run that resumes from a bookmark says that start_date is ignored."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_tap_helpers import TapRun, run_tap

from sandbox.pytest_plugin import Sandbox

#: Every warning shown, ResourceWarning included (as `python -X dev`).
DEV_MODE = {**os.environ, "PYTHONDEVMODE": "1"}
#: --test must answer well within this, whatever the production timeouts.
TEST_BOUND_SECONDS = 15


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local port that takes connections and never answers (a black-holed host)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


def assert_one_line_error(run: TapRun) -> None:
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "An unhandled error occurred" not in run.stderr
    assert "ResourceWarning" not in run.stderr
    assert "Aborted!" not in run.stderr


def timed_test(tmp_path: Path, config: dict) -> tuple[TapRun, float]:
    began = time.monotonic()
    # Production timeouts and retries: --test must not use them.
    run = run_tap(
        tmp_path, {**config, "request_timeout_seconds": 60, "max_retries": 8,
                   "retry_initial_delay_seconds": 1, "retry_max_delay_seconds": 60},
        "--test", env=DEV_MODE, timeout=120,
    )
    return run, time.monotonic() - began


def test_test_names_an_unreachable_cordial_host_in_seconds(sandbox: Sandbox, tmp_path):
    port = closed_port()
    run, took = timed_test(tmp_path, sandbox.tap_config(api_url=f"http://127.0.0.1:{port}/v2"))
    assert_one_line_error(run)
    assert f"Connection check failed at the Cordial API host 127.0.0.1:{port}" in run.stderr
    assert took < TEST_BOUND_SECONDS, took
    assert not sandbox.cordial.exports


def test_test_names_a_silent_cordial_host_in_seconds(sandbox: Sandbox, tmp_path, silent_port):
    config = sandbox.tap_config(api_url=f"http://127.0.0.1:{silent_port}/v2")
    run, took = timed_test(tmp_path, config)
    assert_one_line_error(run)
    assert f"Cordial API host 127.0.0.1:{silent_port}" in run.stderr
    assert "Timeout" in run.stderr
    assert took < TEST_BOUND_SECONDS, took


@pytest.mark.parametrize("where", ["closed", "silent"])
def test_test_names_the_sftp_host_in_seconds(sandbox: Sandbox, tmp_path, silent_port, where):
    port = closed_port() if where == "closed" else silent_port
    run, took = timed_test(tmp_path, sandbox.tap_config(sftp_port=port))
    assert_one_line_error(run)
    assert "/health OK" in run.stderr  # Cordial answered: the SFTP host is the one named
    assert f"Connection check failed at the SFTP host [127.0.0.1]:{port}" in run.stderr
    assert took < TEST_BOUND_SECONDS, took


def test_test_with_bad_settings_lists_them_without_traceback(tmp_path):
    run = run_tap(tmp_path, {"api_key": "k", "sftp_host": "h", "sftp_username": "u",
                             "sftp_path": "/p", "sftp_password": "pw",
                             "start_date": "Nov 5"}, "--test", env=DEV_MODE)
    assert_one_line_error(run)
    assert "`start_date` 'Nov 5' is not a date" in run.stderr
    assert "Config validation failed" in run.stderr


@pytest.mark.parametrize("fault", ["cordial-401", "sftp-closed"])
def test_a_handled_error_in_a_sync_is_one_line(sandbox: Sandbox, tmp_path, fault):
    config = (
        sandbox.tap_config(api_key="wrong-key") if fault == "cordial-401"
        else sandbox.tap_config(sftp_port=closed_port())
    )
    run = run_tap(tmp_path, config, env=DEV_MODE)
    assert_one_line_error(run)
    errors = [line for line in run.stderr.splitlines() if "| ERROR" in line]
    assert len(errors) == 1, errors


def test_settings_given_as_text_run_a_sync(sandbox: Sandbox, tmp_path):
    config = sandbox.tap_config(
        poll_interval_seconds="0.05", export_window_hours="24", request_timeout_seconds="30",
        max_retries="2", sftp_port=str(sandbox.sftp.port), job_timeout_seconds="120",
        limit_records_per_file="100", max_concurrent_prefetch_requests="8",
        end_date=sandbox.cordial.default_end.isoformat(),
    )
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr
    assert len(run.records) > 100
    assert sandbox.cordial.exports[0]["limitRecordsPerFile"] == 100
    assert sandbox.cordial.exports[0]["destination"]["port"] == sandbox.sftp.port


def test_a_bookmark_wins_over_start_date_and_the_log_says_so(sandbox: Sandbox, tmp_path):
    bookmark = (sandbox.cordial.default_end).isoformat()
    start_date = sandbox.cordial.default_start.isoformat()
    state = {"bookmarks": {"activity": {"replication_key": "time",
                                        "replication_key_value": bookmark}}}
    config = sandbox.tap_config(start_date=start_date,
                                end_date=sandbox.cordial.default_end.isoformat())
    run = run_tap(tmp_path, config, state=state)
    assert run.returncode == 0, run.stderr
    assert (
        f"Resuming from the bookmark {bookmark} in the STATE; `start_date` {start_date} is "
        "ignored" in run.stderr
    )
    assert not run.records
