"""Exports through S3 (``export_destination: s3``) against moto's S3 server.

Every event once and then only new ones, the destination body Cordial gets, a wrong bucket and
wrong keys as one line, partial objects caught by the reconciliation, an object still growing,
a read cut mid-object resumed, ``delete_exported_files``, ``--test`` without export jobs, and
the settings each destination requires.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tap_cordial_activity.destinations import DESTINATIONS
from tap_cordial_activity.errors import S3Error
from tap_cordial_activity.s3 import S3Settings, S3Store
from tap_cordial_activity.settings import CONFIG_SCHEMA, config_problems
from tap_cordial_activity.timeutil import to_rfc3339
from test_tap_helpers import event, iso, run_tap

# Fixtures: a sandbox whose Cordial stand-in has no default events (tests add their own).
from test_tap_sync import expected_ids, quiet, quiet_cordial  # noqa: F401

from sandbox.pytest_plugin import S3_PREFIX, SFTP_SETTINGS, Sandbox, s3_bucket_for
from sandbox.s3 import CuttingProxy, MotoS3Server

T0 = datetime(2024, 5, 1, tzinfo=UTC)
IDS = [f"r{n:03d}" for n in range(40)]
#: Short waits for a short export (the default is 30 s).
QUICK = {"short_export_wait_seconds": 0.1}


@pytest.fixture
def sbx(quiet: Sandbox, s3_server: MotoS3Server) -> Iterator[Sandbox]:  # noqa: F811
    """The quiet sandbox with an S3 bucket and 40 events in the 12 hours from T0."""
    quiet.cordial.add_events(
        [event(i, T0 + timedelta(minutes=10 * n + 1)) for n, i in enumerate(IDS)]
    )
    with s3_bucket_for(quiet, s3_server) as ready:
        yield ready


def config_of(sbx: Sandbox, hours: int = 12, **overrides: Any) -> dict[str, Any]:
    """Windows of 12 hours from T0 over S3 (quick waits for short exports)."""
    settings = {"start_date": iso(T0), "end_date": iso(T0 + timedelta(hours=hours)),
                "export_window_hours": 12, "target_events_per_window": 0, **QUICK, **overrides}
    return sbx.s3_tap_config(**settings)


def assert_no_secret(run: Any, sbx: Sandbox) -> None:
    assert sbx.s3 is not None
    for secret in [*sbx.secrets(), sbx.s3.secret_access_key]:
        assert secret not in run.stdout
        assert secret not in run.stderr


def test_every_event_once_then_only_new_ones(sbx: Sandbox, tmp_path):
    first = run_tap(tmp_path, config_of(sbx))
    assert first.returncode == 0, first.stderr
    assert sorted(r["_id"] for r in first.records) == IDS
    assert "Cordial reported 40, read 40, emitted 40" in first.stderr
    # The body follows DestinationObject: no SFTP field, and no keys (Cordial's IAM role).
    (body,) = sbx.cordial.exports
    assert body["destination"] == {
        "type": "s3", "aws_bucket": sbx.s3_bucket, "aws_region": "us-east-1", "path": S3_PREFIX,
    }
    assert set(sbx.s3_objects()) == {f"{body['name']}.json.gz"}
    assert first.bookmark["replication_key_value"] == to_rfc3339(T0 + timedelta(hours=12))
    assert_no_secret(first, sbx)

    late = [f"n{n:02d}" for n in range(15)]
    sbx.cordial.add_events(
        [event(i, T0 + timedelta(hours=12, minutes=20 * n + 5)) for n, i in enumerate(late)]
    )
    second = run_tap(tmp_path, config_of(sbx, hours=24), state=first.states[-1])
    assert second.returncode == 0, second.stderr
    assert sorted(r["_id"] for r in second.records) == late
    assert len(sbx.cordial.exports) == 2


def test_default_events_split_files_csv(s3_sandbox: Sandbox, tmp_path):
    """The default events, as split CSV files: every selected event once."""
    config = s3_sandbox.s3_tap_config(export_format="csv", limit_records_per_file=60)
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr
    ids = [r["_id"] for r in run.records]
    assert len(ids) == len(set(ids))
    assert set(ids) == expected_ids(s3_sandbox.cordial)
    assert len(s3_sandbox.s3_objects()) > len(s3_sandbox.cordial.exports)  # split files


def test_cordial_keys_are_sent_when_set_and_required_when_the_stand_in_says(sbx, tmp_path):
    assert sbx.s3 is not None
    sbx.cordial.options.update({"s3_keys_required": True})
    refused = run_tap(tmp_path, config_of(sbx))
    assert refused.returncode == 1
    assert "The destination.aws access key id field is required." in refused.stderr
    assert "Traceback" not in refused.stderr

    keys = {"cordial_s3_access_key_id": sbx.s3.access_key_id,
            "cordial_s3_secret_access_key": sbx.s3.secret_access_key}
    run = run_tap(tmp_path, config_of(sbx, **keys))
    assert run.returncode == 0, run.stderr
    destination = sbx.cordial.exports[-1]["destination"]
    assert destination["aws_access_key_id"] == sbx.s3.access_key_id
    assert destination["aws_secret_access_key"] == sbx.s3.secret_access_key
    assert sorted(r["_id"] for r in run.records) == IDS
    assert_no_secret(run, sbx)


def test_wrong_cordial_keys_fail_the_job(sbx, tmp_path):
    run = run_tap(tmp_path, config_of(
        sbx, cordial_s3_access_key_id="AKIAWRONG", cordial_s3_secret_access_key="wrong-secret"
    ))
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert "access denied writing to S3 bucket" in last
    assert "wrong-secret" not in run.stderr


def test_wrong_bucket_is_one_line_and_creates_no_job(sbx, tmp_path):
    run = run_tap(tmp_path, config_of(sbx, s3_bucket="no-such-bucket-here"))
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert "S3 bucket 'no-such-bucket-here' (prefix 'cordial/exports/')" in last
    assert "NoSuchBucket" in last
    assert "check `s3_bucket`" in last
    assert "Traceback" not in run.stderr
    assert sbx.cordial.exports == []  # checked before asking Cordial for anything
    assert not run.states or "replication_key_value" not in run.bookmark
    assert_no_secret(run, sbx)


def test_unreachable_endpoint_names_the_setting(sbx, tmp_path):
    run = run_tap(tmp_path, config_of(
        sbx, s3_endpoint_url="http://127.0.0.1:9", max_retries=0, request_timeout_seconds=2
    ))
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert "cannot reach the S3 endpoint" in last
    assert "`s3_endpoint_url`" in last
    assert sbx.cordial.exports == []


@pytest.mark.parametrize("damage", [{"cut_last_line": True}, {"truncate_gzip": True},
                                    {"drop_last_events": 3}])
def test_cut_object_is_caught_by_the_reconciliation(sbx, tmp_path, damage):
    sbx.cordial.options.update(damage)
    failed = run_tap(tmp_path, config_of(sbx))
    assert failed.returncode == 1
    error = failed.stderr.strip().splitlines()[-1]
    job_id = next(iter(sbx.cordial.jobs))
    assert f"Cordial job {job_id} reported 40 records" in error
    assert "the next run exports it again" in error
    assert "Traceback" not in failed.stderr
    assert all("replication_key_value" not in s["bookmarks"].get("activity", {})
               for s in failed.states)

    sbx.cordial.options.update({"cut_last_line": False, "truncate_gzip": False,
                                "drop_last_events": 0})
    rerun = run_tap(tmp_path, config_of(sbx), state=failed.states[-1] if failed.states else None)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(r["_id"] for r in rerun.records) == IDS


@pytest.mark.parametrize("compress", [True, False])
def test_object_still_being_written_is_read_whole_once(sbx, tmp_path, compress):
    sbx.cordial.options.update({"grow_after_done_seconds": 0.5})
    run = run_tap(tmp_path, config_of(sbx, compress=compress, short_export_wait_seconds=1.5))
    assert run.returncode == 0, run.stderr
    assert [r["_id"] for r in run.records] == IDS
    assert "waiting for them to be complete" in run.stderr


def test_read_cut_mid_object_resumes_at_the_byte(quiet, s3_server, tmp_path):  # noqa: F811
    # Older than settle_minutes: the run exports up to its horizon (now - 15 min).
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    start, end = quiet.cordial.add_generated(
        20_000, start=hour_ago - timedelta(hours=1), end=hour_ago, seed=5
    )
    with s3_bucket_for(quiet, s3_server) as sbx, CuttingProxy(
        s3_server.host, s3_server.port
    ) as proxy:
        config = sbx.s3_tap_config(
            s3_endpoint_url=proxy.url, compress=False, actions=["open", "click", "custom"],
            start_date=iso(start - timedelta(seconds=1)), end_date=iso(end + timedelta(seconds=1)),
            export_window_hours=48, target_events_per_window=0,
        )
        # Listing answers are a few KB: the cut lands inside the object's first ranged GET.
        proxy.cut_after(1_500_000)
        run = run_tap(tmp_path, config)
        objects = sbx.s3_objects()
    assert run.returncode == 0, run.stderr
    (size,) = objects.values()
    assert size > 3_000_000  # the cut is inside the first of several ranges
    assert proxy.cuts == 1
    assert "dropped at byte" in run.stderr
    assert ", 1 reconnects" in run.stderr
    ids = [r["_id"] for r in run.records]
    selected = {e["_id"] for e in quiet.cordial.events if e["action"] not in
                {"message-sent", "optout", "bounce", "complaint", "pageview", "message-stopped"}}
    assert len(ids) == len(set(ids))
    assert set(ids) == selected


def test_delete_exported_files_on_s3(sbx, tmp_path):
    assert sbx.s3 is not None
    sbx.s3.client().put_object(Bucket=sbx.s3_bucket, Key=f"{S3_PREFIX}/unrelated.txt", Body=b"x")
    config = config_of(sbx, hours=24, limit_records_per_file=15, delete_exported_files=True)
    first = run_tap(tmp_path, config)
    assert first.returncode == 0, first.stderr
    exported = set(sbx.s3_objects()) - {"unrelated.txt"}
    assert len(exported) >= 3  # the first window's 40 events in files of 15
    assert set(first.bookmark["read_files"]) == {f"{S3_PREFIX}/{n}" for n in exported}

    second = run_tap(tmp_path, config, state=first.states[-1])
    assert second.returncode == 0, second.stderr
    assert set(sbx.s3_objects()) == {"unrelated.txt"}
    assert "(delete_exported_files: its window was delivered)" in second.stderr
    third = run_tap(tmp_path, config, state=first.states[-1])
    assert third.returncode == 0, third.stderr
    assert "Already gone:" in third.stderr


def test_resume_from_a_checkpoint_reads_the_same_objects(sbx, tmp_path):
    """A run stopped inside a window resumes from its checkpoint: the same objects, no new job."""
    config = config_of(sbx, limit_records_per_file=10)
    first = run_tap(tmp_path, config)
    assert first.returncode == 0, first.stderr
    checkpoint = next(s for s in first.states if "progress" in s["bookmarks"]["activity"])
    progress = checkpoint["bookmarks"]["activity"]["progress"]
    assert progress["records_read"] in (10, 20, 30)
    resumed = run_tap(tmp_path, config, state=checkpoint)
    assert resumed.returncode == 0, resumed.stderr
    assert len(sbx.cordial.exports) == 1  # no new export job
    assert "Resuming export" in resumed.stderr
    assert sorted(r["_id"] for r in resumed.records) == IDS[progress["records_read"]:]


def test_connection_test_lists_the_bucket_and_creates_no_job(sbx, tmp_path):
    assert sbx.s3 is not None
    sbx.s3.client().put_object(Bucket=sbx.s3_bucket, Key=f"{S3_PREFIX}/a.json", Body=b"{}\n")
    run = run_tap(tmp_path, config_of(sbx), "--test")
    assert run.returncode == 0, run.stderr
    assert f"S3 bucket '{sbx.s3_bucket}': listing under prefix 'cordial/exports/' OK, 1 file(s)" \
        in run.stderr
    assert sbx.cordial.exports == []

    wrong = run_tap(tmp_path, config_of(sbx, s3_bucket="missing-bucket"), "--test")
    assert wrong.returncode == 1
    last = wrong.stderr.strip().splitlines()[-1]
    assert "Connection check failed" in last
    assert "'missing-bucket'" in last
    assert sbx.cordial.exports == []


def test_s3_settings_are_required_with_s3_and_sftp_ones_are_not():
    base = {"api_key": "k", "export_destination": "s3"}
    problems = config_problems(dict(base))
    assert "`s3_bucket` is required (`export_destination` is s3)." in problems
    assert "`s3_region` is required (`export_destination` is s3)." in problems
    assert "`s3_prefix` is required (`export_destination` is s3)." in problems
    assert not [p for p in problems if "sftp" in p.lower()]
    halves = config_problems({**base, "s3_bucket": "b", "s3_region": "r", "s3_prefix": "p",
                              "s3_access_key_id": "A", "cordial_s3_secret_access_key": "S"})
    assert halves == [
        "`s3_access_key_id` is set but `s3_secret_access_key` is not: the tap's reads need both "
        "keys, or neither.",
        "`cordial_s3_secret_access_key` is set but `cordial_s3_access_key_id` is not: Cordial's "
        "writes need both keys, or neither.",
    ]
    sftp = config_problems({"api_key": "k"})
    assert "`sftp_host` is required (`export_destination` is sftp)." in sftp
    assert not [p for p in sftp if "s3_" in p]


def test_destination_table_gives_the_setting_its_values():
    spec = CONFIG_SCHEMA["properties"]["export_destination"]
    assert spec["enum"] == list(DESTINATIONS)
    assert CONFIG_SCHEMA["properties"]["s3_secret_access_key"]["writeOnly"] is True
    assert CONFIG_SCHEMA["properties"]["cordial_s3_secret_access_key"]["writeOnly"] is True


def test_reader_streams_from_an_offset_in_ranges(s3_server: MotoS3Server, monkeypatch):
    """Ranged GETs of RANGE_BYTES each, from any offset, and the end found by one more GET."""
    from tap_cordial_activity import s3 as s3_module

    bucket = "reader-offsets"
    s3_server.create_bucket(bucket)
    try:
        blob = bytes(range(256)) * 1000
        s3_server.client().put_object(Bucket=bucket, Key="p/f.bin", Body=blob)
        monkeypatch.setattr(s3_module, "RANGE_BYTES", 10_000)
        store = S3Store(S3Settings(
            bucket=bucket, prefix="/p/", region=s3_server.region, endpoint_url=s3_server.url,
            access_key_id=s3_server.access_key_id,
            secret_access_key=s3_server.secret_access_key,
        ), logging.getLogger("test"))
        assert store.list_files() == {"f.bin": len(blob)}
        for offset in (0, 12_345, len(blob) - 1, len(blob)):
            reader = store.open("f.bin", offset)
            got = b"".join(iter(lambda r=reader: r.read(3000), b""))
            assert got == blob[offset:]
            assert reader.offset == len(blob)
            reader.close()
        with pytest.raises(S3Error, match="not found in bucket"):
            store.open("missing.bin").read(10)
        assert store.remove("p/f.bin") is True
        assert store.remove("p/f.bin") is False
        store.close()
    finally:
        s3_server.empty_bucket(bucket)
        s3_server.client().delete_bucket(Bucket=bucket)


def test_denied_access_and_unknown_keys_name_the_bucket_and_what_to_check(quiet, tmp_path):  # noqa: F811
    """moto checking keys and IAM policies: a reader whose policy does not allow listing the
    bucket, and keys moto does not know; one line each, no secret, no export job."""
    bucket = "guarded-exports"
    with MotoS3Server(authorize_after_requests=4) as server:
        # Requests 1-4 set up the bucket and a user whose policy allows nothing on it.
        server.create_bucket(bucket)
        iam = server.client("iam")
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        iam.put_user_policy(
            UserName="reader", PolicyName="elsewhere",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::other/*",
            }]}),
        )
        base = quiet.tap_config(**dict.fromkeys(SFTP_SETTINGS))
        config = {**base, "export_destination": "s3", "s3_bucket": bucket,
                  "s3_prefix": S3_PREFIX, "s3_region": server.region,
                  "s3_endpoint_url": server.url, "s3_access_key_id": key["AccessKeyId"],
                  "s3_secret_access_key": key["SecretAccessKey"], "max_retries": 0}
        denied = run_tap(tmp_path, config)
        unknown = run_tap(tmp_path, {**config, "s3_access_key_id": "AKIAUNKNOWN000000000"})
    assert denied.returncode == 1
    last = denied.stderr.strip().splitlines()[-1]
    assert f"S3 bucket '{bucket}' (prefix 'cordial/exports/')" in last
    assert "AccessDenied" in last
    assert "bucket policy allows s3:ListBucket" in last
    assert unknown.returncode == 1
    last = unknown.stderr.strip().splitlines()[-1]
    assert f"S3 bucket '{bucket}'" in last
    assert "InvalidAccessKeyId" in last
    assert "check `s3_access_key_id`" in last
    for run in (denied, unknown):
        assert key["SecretAccessKey"] not in run.stderr
        assert "Traceback" not in run.stderr
    assert quiet.cordial.exports == []
