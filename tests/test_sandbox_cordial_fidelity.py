"""The Cordial stand-in where the published v2 definitions leave room, each reading a switch.

``custom`` inside ``selected_action_names`` (a wildcard or a literal name), the job metadata's
file-name keys and forms, no ``/v2/health``, ``GET /v2/jobs`` as ``getjobs`` shapes it, and
writes confined to the served folder.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import requests

# Fixtures and helpers of the stand-in's main tests.
from test_sandbox_cordial import api, body_for, create, ev, read_lines, wait_job  # noqa: F401

from sandbox.cordial import CordialStandIn
from sandbox.sftp import SftpServer

ACTIONS = ["open", "purchase", "custom", "pageview", "click"]


@pytest.mark.parametrize(
    ("reading", "expected"),
    [("wildcard", {"open", "purchase", "custom"}), ("literal", {"open", "custom"})],
)
def test_custom_inside_the_array_is_a_wildcard_or_a_literal_name(
    api: requests.Session,  # noqa: F811
    cordial: CordialStandIn,
    sftp_server: SftpServer,
    reading: str,
    expected: set[str],
) -> None:
    cordial.options.update({"custom_in_action_names": reading})
    cordial.add_events([ev(n, action) for n, action in enumerate(ACTIONS, 1)])
    job, _ = wait_job(api, cordial, create(
        api, cordial, body_for(sftp_server, selected_action_names=["open", "custom"])
    ))
    assert job["status"] == "Done"
    lines = read_lines(sftp_server.root / "test-export-1.json")
    assert {line.split(b'"action":"')[1].split(b'"')[0].decode() for line in lines} == expected
    # The single-action field documents `custom` as every custom event: so under both readings.
    body = body_for(sftp_server, name="test-export-2", selected_action_name="custom")
    wait_job(api, cordial, create(api, cordial, body))
    single = read_lines(sftp_server.root / "test-export-2.json")
    assert len(single) == 2  # purchase and the event named custom


def test_an_unknown_reading_is_refused(cordial: CordialStandIn) -> None:
    with pytest.raises(ValueError, match="custom_in_action_names"):
        cordial.options.update({"custom_in_action_names": "sometimes"})
    with pytest.raises(ValueError, match="file_name_key"):
        cordial.options.update({"file_name_key": "FILENAME"})


@pytest.mark.parametrize(
    ("options", "compress", "expected"),
    [
        ({}, True, {"fileName": "test-export-1.json.gz"}),
        ({"file_name_key": "filename"}, True, {"filename": "test-export-1.json.gz"}),
        (
            {"file_name_key": "both"}, False,
            {"fileName": "test-export-1.json", "filename": "test-export-1.json"},
        ),
        ({"file_name_without_gz": True}, True, {"fileName": "test-export-1.json"}),
        ({"file_name_path": True}, True, {"fileName": "{path}/test-export-1.json.gz"}),
        ({"metadata_file_name": "other.json"}, False, {"fileName": "other.json"}),
        ({"omit_file_name": True}, True, {}),
    ],
)
def test_metadata_names_the_file_as_the_options_say(
    api: requests.Session,  # noqa: F811
    cordial: CordialStandIn,
    sftp_server: SftpServer,
    options: dict[str, Any],
    compress: bool,
    expected: dict[str, str],
) -> None:
    cordial.options.update(options)
    cordial.add_events([ev(1)])
    job, _ = wait_job(api, cordial, create(api, cordial, body_for(sftp_server, compress=compress)))
    names = {k: v for k, v in job["metadata"].items() if k in {"fileName", "filename"}}
    assert names == {k: v.format(path=sftp_server.sftp_path) for k, v in expected.items()}
    assert job["jobName"] == "ExportEvents"


def test_health_can_be_missing_as_in_the_published_definitions(
    api: requests.Session, cordial: CordialStandIn  # noqa: F811
) -> None:
    assert api.get(f"{cordial.url}/health").status_code == 200
    cordial.options.update({"health_route": False})
    missing = api.get(f"{cordial.url}/health")
    assert missing.status_code == 404
    assert missing.json()["error"] is True
    assert api.get(f"{cordial.url}/jobs").status_code == 200


def test_jobs_list_is_paged_newest_first(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer  # noqa: F811
) -> None:
    assert api.get(f"{cordial.url}/jobs").json() == []
    ids = [create(api, cordial, body_for(sftp_server, name=f"test-export-{n}")) for n in (1, 2, 3)]
    for job_id in ids:
        wait_job(api, cordial, job_id)
    everything = api.get(f"{cordial.url}/jobs").json()
    assert [job["_id"] for job in everything] == ids[::-1]
    assert all(job["status"] == "Done" and job["jobName"] == "ExportEvents" for job in everything)
    one = api.get(f"{cordial.url}/jobs", params={"page": "1", "per_page": "1"}).json()
    assert [job["_id"] for job in one] == [ids[2]]
    last = api.get(f"{cordial.url}/jobs", params={"page": "2", "per_page": "2"}).json()
    assert [job["_id"] for job in last] == [ids[0]]
    assert api.get(f"{cordial.url}/jobs", params={"status": "Failed"}).json() == []
    assert api.get(f"{cordial.url}/jobs", params={"jobName": "ImportContacts"}).json() == []
    bad = api.get(f"{cordial.url}/jobs", params={"per_page": "many"})
    assert bad.status_code == 422
    assert bad.json()["errorKey"] == "GENERIC_ERROR_KEY"
    assert requests.get(f"{cordial.url}/jobs", timeout=10).status_code == 401
    assert len(cordial.exports) == 3  # listing creates nothing


@pytest.mark.parametrize("how", ["dot-dot", "symlink"])
def test_destination_outside_the_served_folder_fails_and_writes_nothing(
    api: requests.Session,  # noqa: F811
    cordial: CordialStandIn,
    sftp_server: SftpServer,
    how: str,
) -> None:
    outside = sftp_server.root.parent / "outside-the-export-folder"
    outside.mkdir(exist_ok=True)
    link = sftp_server.root / "escape"
    try:
        if how == "dot-dot":
            path = f"{sftp_server.sftp_path}/../{outside.name}"
        else:
            link.symlink_to(outside, target_is_directory=True)
            path = f"{sftp_server.sftp_path}/escape"
        cordial.add_events([ev(1)])
        body = body_for(sftp_server)
        body["destination"]["path"] = path
        job, _ = wait_job(api, cordial, create(api, cordial, body))
        assert job["status"] == "Failed"
        assert "outside the served folder" in job["result"]["message"]
        assert list(outside.iterdir()) == []
    finally:
        link.unlink(missing_ok=True)
        shutil.rmtree(outside)


def test_jobs_list_of_an_account_without_jobs_may_be_404(
    api: requests.Session, cordial: CordialStandIn  # noqa: F811
) -> None:
    cordial.options.update({"empty_jobs_list_404": True})
    answer = api.get(f"{cordial.url}/jobs")
    assert answer.status_code == 404
    assert answer.json()["errorKey"] == "RECORD_NOT_FOUND"


def test_destination_type_in_either_case_and_the_published_415_message(
    api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer  # noqa: F811
) -> None:
    body = body_for(sftp_server)
    body["destination"]["type"] = "SFTP"
    job, _ = wait_job(api, cordial, create(api, cordial, body))
    assert job["status"] == "Done"
    refused = api.post(f"{cordial.url}/contactactivityexport", data=b"{}",
                       headers={"Content-Type": "text/plain"})
    assert refused.status_code == 415
    assert "must be application/json or application/x-www-form-urlencoded" in (
        refused.json()["message"]
    )
