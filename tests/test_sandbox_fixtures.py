"""The pytest fixtures: wiring, configs for the plugins, and a tap-like round trip."""

from __future__ import annotations

import base64
import gzip
import io
import time
from pathlib import Path

import orjson
import paramiko
import requests

from sandbox.pytest_plugin import TEST_POLL_INTERVAL_SECONDS, Sandbox, empty_folder

TAP_KEYS = {
    "api_key",
    "api_url",
    "sftp_host",
    "sftp_port",
    "sftp_username",
    "sftp_path",
    "sftp_password",
    "sftp_private_key",
    "sftp_host_key",
    "poll_interval_seconds",
    "start_date",
}


def test_configs(sandbox: Sandbox) -> None:
    config = sandbox.tap_config()
    assert set(config) == TAP_KEYS
    assert config["api_url"] == sandbox.cordial.url
    assert config["api_url"].endswith("/v2")
    assert config["sftp_port"] == sandbox.sftp.port
    assert config["poll_interval_seconds"] == TEST_POLL_INTERVAL_SECONDS
    assert config["start_date"].endswith("Z")
    without_key = sandbox.tap_config(sftp_private_key=None, export_format="csv")
    assert "sftp_private_key" not in without_key
    assert without_key["export_format"] == "csv"
    assert sandbox.target_config() == {
        "api_token": sandbox.lytics.token,
        "api_url": sandbox.lytics.url,
    }
    assert sandbox.target_config(dry_run=True)["dry_run"] is True
    secrets = sandbox.secrets()
    assert config["api_key"] in secrets
    assert config["sftp_password"] in secrets
    assert sandbox.lytics.token in secrets
    assert all(line in config["sftp_private_key"] for line in secrets[3:])


def test_tap_like_round_trip(sandbox: Sandbox) -> None:
    """What the tap does, with the config alone: export, poll, read over SFTP, upload."""
    config = sandbox.tap_config()
    api = requests.Session()
    api.auth = (config["api_key"], "")
    body = {
        "name": "singer-activity-20240101000000-0123abcd",
        "exportType": "json",
        "compress": True,
        "destination": {
            "type": "sftp",
            "server": config["sftp_host"],
            "port": config["sftp_port"],
            "username": config["sftp_username"],
            "password": config["sftp_password"],
            "path": config["sftp_path"],
        },
        "selected_timeframe_start": config["start_date"],
        "selected_timeframe_end": sandbox.cordial.default_end.isoformat(),
        "selected_action_names": ["message-sent", "open", "click", "custom"],
    }
    created = api.post(f"{config['api_url']}/contactactivityexport", json=body, timeout=10)
    job_id = created.json()["jobId"]
    for _ in range(100):
        job = api.get(f"{config['api_url']}/jobs/{job_id}", timeout=10).json()
        if job["status"] == "Done":
            break
        time.sleep(config["poll_interval_seconds"])
    assert job["status"] == "Done"

    host, keytype, key_b64 = config["sftp_host_key"].split()
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.get_host_keys().add(host, keytype, paramiko.Ed25519Key(data=base64.b64decode(key_b64)))
    client.connect(
        config["sftp_host"],
        config["sftp_port"],
        username=config["sftp_username"],
        pkey=paramiko.Ed25519Key.from_private_key(io.StringIO(config["sftp_private_key"])),
        allow_agent=False,
        look_for_keys=False,
    )
    sftp = client.open_sftp()
    with sftp.open(f"{config['sftp_path']}/{job['metadata']['fileName']}", "rb") as handle:
        handle.prefetch()
        records = [orjson.loads(line) for line in gzip.decompress(handle.read()).splitlines()]
    client.close()
    assert len(records) == job["totalItems"] > 0
    assert {r["action"] for r in records} <= {
        "message-sent",
        "open",
        "click",
        "purchase",
        "page-view",
        "add-to-cart",
        "browse",
        "signup",
    }

    upload = requests.post(
        f"{sandbox.target_config()['api_url']}/collect/json/cordial_activity",
        data=orjson.dumps([{"cr_system_event_id": r["_id"]} for r in records]),
        headers={"Authorization": sandbox.target_config()["api_token"]},
        timeout=10,
    )
    assert upload.json()["data"]["message_count"] == len(records)
    assert len(sandbox.lytics.events["cordial_activity"]) == len(records)


def test_cordial_fixture_starts_with_an_empty_export_folder(sandbox: Sandbox) -> None:
    assert list(sandbox.sftp.root.iterdir()) == []
    (sandbox.sftp.root / "left-over.json").write_text("{}")  # the fixture removes it


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.json").write_text("{}")
    (tmp_path / "c.json.gz").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    empty_folder(tmp_path)
    assert list(tmp_path.iterdir()) == []
