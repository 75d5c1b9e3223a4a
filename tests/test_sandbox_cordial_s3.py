"""The Cordial stand-in's S3 destination: the body validated as ``DestinationObject`` describes,
the keys-or-IAM-role switch, failed jobs for a wrong region, keys or bucket, and the objects
written under ``path``."""

from __future__ import annotations

import gzip
import time
from typing import Any

import orjson
import pytest
import requests
from test_sandbox_cordial import body_for, ev

from sandbox.cordial import CordialStandIn
from sandbox.pytest_plugin import Sandbox


def s3_body(sbx: Sandbox, **destination: Any) -> dict[str, Any]:
    """A valid S3 export request; a destination value of None removes the key."""
    assert sbx.s3 is not None
    fields: dict[str, Any] = {
        "type": "S3", "aws_bucket": sbx.s3_bucket, "aws_region": sbx.s3.region,
        "path": "/exports/cordial/",
    }
    fields.update(destination)
    body = body_for(sbx.sftp, compress=True)
    body["destination"] = {k: v for k, v in fields.items() if v is not None}
    return body


def finished(api: requests.Session, cordial: CordialStandIn, body: dict[str, Any]) -> dict:
    response = api.post(f"{cordial.url}/contactactivityexport", json=body)
    assert response.status_code == 200, response.text
    job_id = response.json()["jobId"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        job = api.get(f"{cordial.url}/jobs/{job_id}").json()
        if job["status"] in ("Done", "Failed"):
            return dict(job)
        time.sleep(0.02)
    raise AssertionError("the job did not finish")


@pytest.fixture
def api(s3_sandbox: Sandbox) -> requests.Session:
    session = requests.Session()
    session.auth = (s3_sandbox.cordial.api_key, "")
    return session


@pytest.mark.parametrize(
    ("missing", "message"),
    [("aws_bucket", "The destination.aws bucket field is required."),
     ("aws_region", "The destination.aws region field is required."),
     ("path", "The destination.path field is required.")],
)
def test_bucket_region_and_path_are_required(s3_sandbox, api, missing, message):
    response = api.post(f"{s3_sandbox.cordial.url}/contactactivityexport",
                        json=s3_body(s3_sandbox, **{missing: None}))
    assert response.status_code == 400
    assert response.json() == {"error": True, "errorKey": "INVALID_DESTINATION",
                               "message": message}


def test_keys_are_optional_unless_the_stand_in_requires_them(s3_sandbox, api):
    half = api.post(f"{s3_sandbox.cordial.url}/contactactivityexport",
                    json=s3_body(s3_sandbox, aws_access_key_id="AKIA"))
    assert half.status_code == 400
    assert half.json()["message"] == "The destination.aws secret access key field is required."
    s3_sandbox.cordial.options.update({"s3_keys_required": True})
    none = api.post(f"{s3_sandbox.cordial.url}/contactactivityexport", json=s3_body(s3_sandbox))
    assert none.status_code == 400
    assert none.json()["message"] == "The destination.aws access key id field is required."


def test_objects_are_written_under_the_path(s3_sandbox, api):
    s3_sandbox.cordial.add_events([ev(5), ev(6, "click")])
    job = finished(api, s3_sandbox.cordial, s3_body(s3_sandbox))
    assert job["status"] == "Done"
    assert s3_sandbox.s3 is not None
    keys = s3_sandbox.s3.keys(s3_sandbox.s3_bucket)
    assert list(keys) == ["exports/cordial/test-export-1.json.gz"]
    blob = s3_sandbox.s3.client().get_object(
        Bucket=s3_sandbox.s3_bucket, Key="exports/cordial/test-export-1.json.gz"
    )["Body"].read()
    lines = gzip.decompress(blob).splitlines()
    assert [orjson.loads(line)["time"] for line in lines] == [
        ev(5)["time"], ev(6)["time"]
    ]


@pytest.mark.parametrize(
    ("destination", "message"),
    [({"aws_region": "eu-west-3"}, "is not in region 'eu-west-3'"),
     ({"aws_access_key_id": "AKIAWRONG", "aws_secret_access_key": "no"}, "access denied"),
     ({"aws_bucket": "no-such-bucket"}, "'no-such-bucket' does not exist")],
)
def test_unwritable_destinations_fail_the_job(s3_sandbox, api, destination, message):
    job = finished(api, s3_sandbox.cordial, s3_body(s3_sandbox, **destination))
    assert job["status"] == "Failed"
    assert message in job["result"]["message"]
