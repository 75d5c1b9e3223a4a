"""The Cordial stand-in's partial files: a short or cut file, or one still growing, while the job
reports the full count."""

from __future__ import annotations

import base64
import gzip
import time
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
import paramiko
import pytest
import requests
from test_sandbox_cordial import body_for, create, ev, read_lines, wait_job

from sandbox.cordial import CordialStandIn
from sandbox.sftp import SftpServer


@pytest.fixture
def sftp_client(sftp_server: SftpServer) -> Iterator[paramiko.SFTPClient]:
    """An SFTP session to the real sshd, as the tap opens one (strict host key, password)."""
    keytype, b64 = sftp_server.host_key_line.split()[1:3]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.get_host_keys().add(
        f"[{sftp_server.host}]:{sftp_server.port}",
        keytype,
        paramiko.Ed25519Key(data=base64.b64decode(b64)),
    )
    client.connect(
        sftp_server.host,
        sftp_server.port,
        username=sftp_server.username,
        password=sftp_server.password,
        allow_agent=False,
        look_for_keys=False,
        timeout=10,
    )
    try:
        yield client.open_sftp()
    finally:
        client.close()


def export(
    api: requests.Session, cordial: CordialStandIn, sftp: SftpServer, **overrides: Any
) -> dict[str, Any]:
    job, _ = wait_job(api, cordial, create(api, cordial, body_for(sftp, **overrides)))
    assert job["status"] == "Done"
    return job


def test_drop_last_events_writes_fewer_records_than_reported(
    cordial_api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    events = [ev(i) for i in range(10)]
    cordial.add_events(events)
    cordial.options.drop_last_events = 3
    job = export(cordial_api, cordial, sftp_server)
    assert job["totalItems"] == 10
    assert job["result"]["totalRecords"] == 10
    lines = read_lines(sftp_server.root / job["metadata"]["fileName"])
    assert [orjson.loads(line) for line in lines] == events[:7]


def test_drop_last_events_across_split_files(
    cordial_api: requests.Session, cordial: CordialStandIn, sftp_server: SftpServer
) -> None:
    cordial.add_events([ev(i) for i in range(10)])
    cordial.options.drop_last_events = 3
    job = export(cordial_api, cordial, sftp_server, limitRecordsPerFile=4, compress=True)
    assert job["result"]["totalRecords"] == 10
    names = ["test-export-1-1.json.gz", "test-export-1-2.json.gz", "test-export-1-3.json.gz"]
    assert sorted(p.name for p in sftp_server.root.iterdir()) == names
    assert [len(read_lines(sftp_server.root / n)) for n in names] == [4, 3, 0]


@pytest.mark.parametrize(
    ("export_type", "overrides", "options"),
    [
        pytest.param("json", {}, {}, id="jsonl"),
        pytest.param("json", {"compress": True}, {}, id="jsonl-gzip"),
        pytest.param("json", {}, {"json_array": True}, id="json-array"),
        pytest.param("csv", {"showHeader": True}, {}, id="csv"),
    ],
)
def test_cut_last_line_leaves_half_a_record_without_newline(
    cordial_api: requests.Session,
    cordial: CordialStandIn,
    sftp_server: SftpServer,
    export_type: str,
    overrides: dict[str, Any],
    options: dict[str, Any],
) -> None:
    events = [ev(i) for i in range(5)]
    cordial.add_events(events)
    cordial.options.update({"cut_last_line": True, **options})
    job = export(cordial_api, cordial, sftp_server, exportType=export_type, **overrides)
    assert job["result"]["totalRecords"] == 5
    path = sftp_server.root / job["metadata"]["fileName"]
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    assert not data.endswith(b"\n")
    whole, last = data.rsplit(b"\n", 1)
    assert last  # some of the last record is there, not all of it
    if export_type == "csv":
        rows = whole.split(b"\n")
        assert rows[0].startswith(b"_id,cID")
        assert len(rows) == 1 + 4
        assert events[-1]["time"].encode() not in last
    elif options.get("json_array"):
        assert whole.startswith(b"[\n")
        assert not data.rstrip().endswith(b"]")
        assert last.startswith(b"{")
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(last)
    else:
        assert [orjson.loads(line) for line in whole.split(b"\n")] == events[:4]
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(last)


def test_a_growing_file_is_completed_after_done(
    cordial_api: requests.Session,
    cordial: CordialStandIn,
    sftp_server: SftpServer,
    sftp_client: paramiko.SFTPClient,
) -> None:
    events = [ev(i) for i in range(40)]
    cordial.add_events(events)
    cordial.options.grow_after_done_seconds = 0.6
    job = export(cordial_api, cordial, sftp_server)
    done_at = time.monotonic()
    assert job["result"]["totalRecords"] == 40
    remote = f"{sftp_server.sftp_path}/{job['metadata']['fileName']}"
    with sftp_client.open(remote, "rb") as handle:
        first = handle.read()
    assert first.endswith(b"\n")
    assert [orjson.loads(line) for line in first.splitlines()] == events[:20]
    sizes = [sftp_client.stat(remote).st_size]
    while sizes[-1] == len(first) and time.monotonic() - done_at < 5:
        time.sleep(0.05)
        sizes.append(sftp_client.stat(remote).st_size)
    assert time.monotonic() - done_at >= 0.6
    assert cordial.jobs[job["_id"]].complete.wait(5)
    with sftp_client.open(remote, "rb") as handle:
        final = handle.read()
    assert final.startswith(first)
    assert [orjson.loads(line) for line in final.splitlines()] == events


def test_a_growing_gzip_file_is_a_readable_prefix_until_completed(
    cordial_api: requests.Session,
    cordial: CordialStandIn,
    sftp_server: SftpServer,
    sftp_client: paramiko.SFTPClient,
) -> None:
    events = [ev(i) for i in range(9)]
    cordial.add_events(events)
    cordial.options.grow_after_done_seconds = 0.5
    job = export(cordial_api, cordial, sftp_server, compress=True)
    remote = f"{sftp_server.sftp_path}/{job['metadata']['fileName']}"
    with sftp_client.open(remote, "rb") as handle:
        first = handle.read()
    with pytest.raises(EOFError):  # no gzip trailer yet: the stream is not finished
        gzip.decompress(first)
    prefix = zlib.decompressobj(wbits=31).decompress(first)
    assert [orjson.loads(line) for line in prefix.splitlines()] == events[:4]
    assert cordial.jobs[job["_id"]].complete.wait(5)
    with sftp_client.open(remote, "rb") as handle:
        assert gzip.decompress(handle.read()).splitlines() == [
            orjson.dumps(e) for e in events
        ]


def test_partial_options_over_the_admin_endpoint(
    cordial_api: requests.Session, cordial: CordialStandIn
) -> None:
    admin = f"{cordial.base_url}/_sandbox/options"
    body = {"drop_last_events": 2, "cut_last_line": True, "grow_after_done_seconds": 1.5}
    answer = cordial_api.post(admin, json=body).json()
    assert {k: answer[k] for k in body} == body
    assert cordial_api.post(admin, json={"drop_last_events": -1}).status_code == 400
    assert cordial_api.post(admin, json={"grow_after_done_seconds": "1"}).status_code == 400


def test_stop_completes_a_growing_file_without_waiting(sftp_server: SftpServer) -> None:
    stand_in = CordialStandIn(
        sftp_root=sftp_server.root, sftp_path=sftp_server.sftp_path, events=[ev(1), ev(2)]
    )
    stand_in.options.grow_after_done_seconds = 60
    with stand_in:
        session = requests.Session()
        session.auth = (stand_in.api_key, "")
        job, _ = wait_job(session, stand_in, create(session, stand_in, body_for(sftp_server)))
        assert job["status"] == "Done"
        assert not stand_in.jobs[job["_id"]].complete.is_set()  # the second part is a minute away
        started = time.monotonic()
    assert time.monotonic() - started < 2  # leaving the block stopped it
    path = sftp_server.root / job["metadata"]["fileName"]
    assert len(read_lines(path)) == 2
    path.unlink()
