"""The tap under each reading of what Cordial's published v2 definitions leave open.

``custom`` inside ``selected_action_names`` (a wildcard or a literal event name), the file name
in the job metadata (either key, bare or a path, with or without ``.gz``, or none), and a
``--test`` on an account without ``/v2/health``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import pytest
from tap_cordial_activity.errors import SftpError
from tap_cordial_activity.export import ExportRunner
from tap_cordial_activity.sftp_store import SftpStore
from test_tap_helpers import TapRun, run_tap

from sandbox.events import CUSTOM_ACTIONS, RESERVED_ACTIONS
from sandbox.httpbase import Fault
from sandbox.pytest_plugin import Sandbox

READINGS = ["wildcard", "literal"]


def window_counts(run: TapRun) -> Counter[str]:
    """The per-window ``record_count`` METRIC values, summed over windows, by ``count`` tag."""
    found: Counter[str] = Counter()
    for line in run.stderr.splitlines():
        if "METRIC: " in line and '"count"' in line:
            point = json.loads(line.split("METRIC: ", 1)[1])
            if "window_start" in point["tags"]:
                found[point["tags"]["count"]] += point["value"]
    return found


def selected_ids(sandbox: Sandbox, actions: set[str], every_custom: bool) -> set[str]:
    return {
        e["_id"] for e in sandbox.cordial.events
        if e["action"] in actions or (every_custom and e["action"] not in RESERVED_ACTIONS)
    }


@pytest.mark.parametrize("reading", READINGS)
@pytest.mark.parametrize(
    ("settings", "named", "every_custom"),
    [
        pytest.param({}, {"message-sent", "open", "click", "optout", "bounce", "complaint"},
                     True, id="default-actions"),
        pytest.param({"actions": ["open", "click", "custom"]}, {"open", "click"}, True,
                     id="custom-without-names"),
        pytest.param({"actions": ["open", "custom"], "custom_actions": list(CUSTOM_ACTIONS)},
                     {"open", *CUSTOM_ACTIONS}, False, id="custom-actions-named"),
        pytest.param({"actions": ["bounce", "click"]}, {"bounce", "click"}, False,
                     id="no-custom"),
    ],
)
def test_every_selected_event_arrives_under_both_readings_of_custom(
    sandbox: Sandbox, tmp_path, reading, settings, named, every_custom
):
    sandbox.cordial.options.update({"custom_in_action_names": reading})
    run = run_tap(tmp_path, sandbox.tap_config(**settings))
    assert run.returncode == 0, run.stderr
    expected = selected_ids(sandbox, named, every_custom)
    ids = [r["_id"] for r in run.records]
    assert len(ids) == len(set(ids))
    assert set(ids) == expected
    if every_custom:  # the default events hold ~25% custom ones: they are all there
        customs = [r for r in run.records if r["action"] not in RESERVED_ACTIONS]
        assert len(customs) > len(sandbox.cordial.events) // 6
    assert not {r["action"] for r in run.records} & (set(RESERVED_ACTIONS) - named)
    bodies = sandbox.cordial.exports
    if every_custom:
        # `custom` is never sent inside the array: no action filter, the tap keeps the selected.
        assert all("selected_action_names" not in body for body in bodies)
        assert run.stderr.count("exports are requested without an action filter") == 1
        cost = next(line for line in run.stderr.splitlines() if "without an action fil" in line)
        assert "message-stopped" in cost
        assert "pageview" in cost
    else:
        assert all(set(body["selected_action_names"]) == named for body in bodies)
    # Reconciliation: everything read counts, the left-out actions are named as skipped.
    counts = window_counts(run)
    skipped = len(sandbox.cordial.events) - len(expected) if every_custom else 0
    assert counts["read"] == counts["cordial_reported"] == len(expected) + skipped
    assert counts["emitted"] == len(expected)
    assert counts["skipped_action"] == skipped
    assert "its files hold" not in run.stderr  # no count warning: skipped ones were read
    lines = [line for line in run.stderr.splitlines() if "done (job" in line]
    assert sum(int(line.split("skipped ")[2].split(" of actions")[0]) for line in lines) == skipped
    if skipped:  # named by action, e.g. "(message-stopped 3, pageview 5)"
        assert any("pageview " in line.rsplit("(", 1)[-1] for line in lines)


@pytest.mark.parametrize(
    ("options", "overrides"),
    [
        pytest.param({}, {}, id="fileName-bare-gz"),
        pytest.param({"file_name_key": "filename"}, {}, id="filename-key"),
        pytest.param({"file_name_key": "both"}, {"compress": False}, id="both-keys-plain"),
        pytest.param({"file_name_without_gz": True}, {}, id="fileName-without-gz"),
        pytest.param({"file_name_key": "filename", "file_name_without_gz": True}, {},
                     id="filename-without-gz"),
        pytest.param({"file_name_path": True}, {}, id="fileName-path"),
        pytest.param({"file_name_path": True, "file_name_without_gz": True}, {},
                     id="path-without-gz"),
        pytest.param({"file_name_without_gz": True}, {"limit_records_per_file": 60},
                     id="split-without-gz"),
        pytest.param({"omit_file_name": True}, {}, id="no-name"),
    ],
)
def test_each_file_name_variant_is_read_whole(sandbox: Sandbox, tmp_path, options, overrides):
    sandbox.cordial.options.update(options)
    run = run_tap(tmp_path, sandbox.tap_config(**overrides))
    assert run.returncode == 0, run.stderr
    expected = selected_ids(
        sandbox, {"message-sent", "open", "click", "optout", "bounce", "complaint"}, True
    )
    assert sorted(r["_id"] for r in run.records) == sorted(expected)
    counts = window_counts(run)
    assert counts["read"] == counts["cordial_reported"] == len(sandbox.cordial.events)
    assert "names the file" not in run.stderr


def test_a_named_file_that_is_missing_is_a_warning_when_the_export_files_are_there(
    sandbox: Sandbox, tmp_path
):
    sandbox.cordial.options.update({"metadata_file_name": "renamed-by-cordial.json"})
    run = run_tap(tmp_path, sandbox.tap_config())
    assert run.returncode == 0, run.stderr
    assert len(run.records) == len(
        selected_ids(sandbox, {"message-sent", "open", "click", "optout", "bounce", "complaint"},
                     True)
    )
    warnings = [line for line in run.stderr.splitlines() if "names the file" in line]
    assert len(warnings) == len(sandbox.cordial.exports)  # one per window
    assert "'renamed-by-cordial.json', which is not in SFTP folder" in warnings[0]


class _Entry:
    def __init__(self, name: str) -> None:
        self.filename, self.st_size = name, 10


class _Folder:
    """An SFTP reader that only lists."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def list_files(self, folder: str) -> list[_Entry]:
        return [_Entry(n) for n in self.names]


def runner_over(*names: str) -> ExportRunner:
    config: dict[str, Any] = {"sftp_path": "/export"}
    return ExportRunner(
        config, client=None, store=SftpStore(_Folder(*names), "/export"),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        checkpoint_records=100,
    )


@pytest.mark.parametrize(
    ("metadata", "listed", "expected"),
    [
        ({"fileName": "x-1.json"}, ["x-1.json.gz"], ["x-1.json.gz"]),
        ({"filename": "/export/x-1.json.gz"}, ["x-1.json.gz"], ["x-1.json.gz"]),
        ({"filename": "cordial-name.json"}, ["cordial-name.json", "other"], ["cordial-name.json"]),
        ({"fileName": "", "filename": "x-1.json"}, ["x-1.json"], ["x-1.json"]),
        ({}, ["x-1-2.json", "x-1-10.json", "x-1-1.json"],
         ["x-1-1.json", "x-1-2.json", "x-1-10.json"]),
        ({"fileName": "gone.json"}, ["x-1.json"], ["x-1.json"]),
    ],
)
def test_export_files_accepts_every_file_name_form(metadata, listed, expected):
    assert runner_over(*listed).export_files("x-1", {"metadata": metadata}) == expected


def test_export_files_fails_only_when_no_file_of_the_export_is_there():
    with pytest.raises(SftpError, match="neither it nor any file beginning with 'x-1'"):
        runner_over("other.json").export_files("x-1", {"_id": "j1",
                                                        "metadata": {"fileName": "x-1.json"}})


def test_connection_test_without_health_lists_one_job_and_creates_none(sandbox: Sandbox, tmp_path):
    sandbox.cordial.options.update({"health_route": False})
    run = run_tap(tmp_path, sandbox.tap_config(), "--test")
    assert run.returncode == 0, run.stderr
    assert "/jobs OK" in run.stderr
    assert "login OK, host key verified" in run.stderr
    assert sandbox.cordial.exports == []
    assert sandbox.cordial.request_log == [("GET", "/v2/health", 404), ("GET", "/v2/jobs", 200)]
    bad = run_tap(tmp_path, sandbox.tap_config(api_key="wrong"), "--test")
    assert bad.returncode != 0
    assert "HTTP 401" in bad.stderr
    assert "IP allow-list" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert sandbox.cordial.exports == []
    assert "wrong" not in bad.stderr.replace("wrong key", "")


def test_connection_test_with_health_does_not_list_jobs(sandbox: Sandbox, tmp_path):
    run = run_tap(tmp_path, sandbox.tap_config(), "--test")
    assert run.returncode == 0, run.stderr
    assert "/health OK" in run.stderr
    assert [p for _, p, _ in sandbox.cordial.request_log] == ["/v2/health"]


def test_connection_test_lists_one_job_when_the_key_may_not_call_health(
    sandbox: Sandbox, tmp_path
):
    sandbox.cordial.inject("/v2/health", Fault(status=403))
    run = run_tap(tmp_path, sandbox.tap_config(), "--test")
    assert run.returncode == 0, run.stderr
    assert "/health answered HTTP 403" in run.stderr
    assert [p for _, p, _ in sandbox.cordial.request_log][-1] == "/v2/jobs"
    assert sandbox.cordial.exports == []



def test_connection_test_on_an_account_without_jobs_or_health(sandbox: Sandbox, tmp_path):
    sandbox.cordial.options.update({"health_route": False, "empty_jobs_list_404": True})
    run = run_tap(tmp_path, sandbox.tap_config(), "--test")
    assert run.returncode == 0, run.stderr
    assert sandbox.cordial.request_log == [("GET", "/v2/health", 404), ("GET", "/v2/jobs", 404)]
    assert "/jobs OK" in run.stderr
    assert sandbox.cordial.exports == []


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"totalRecords": 0, "message": "SFTP login failed"}, "SFTP login failed"),
        # ResultJ_2: `error` is a count of records, not what went wrong.
        ({"totalRecords": 0, "error": 3}, "{'totalRecords': 0, 'error': 3}"),
        ({"error": "could not write"}, "could not write"),
    ],
)
def test_failed_job_message_reads_text_not_counts(result, expected):
    from tap_cordial_activity.client import job_result_message

    assert job_result_message({"result": result}) == expected
