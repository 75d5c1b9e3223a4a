"""``python -m sandbox up|show|add-events`` as the demo and the benchmark use it."""

from __future__ import annotations

import json
import pwd
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox.__main__ import READY_LINE

REPO = Path(__file__).resolve().parents[1]
EXPECTED_KEYS = {
    "TAP_CORDIAL_ACTIVITY_API_KEY",
    "TAP_CORDIAL_ACTIVITY_API_URL",
    "TAP_CORDIAL_ACTIVITY_START_DATE",
    "TAP_CORDIAL_ACTIVITY_SFTP_HOST",
    "TAP_CORDIAL_ACTIVITY_SFTP_PORT",
    "TAP_CORDIAL_ACTIVITY_SFTP_USERNAME",
    "TAP_CORDIAL_ACTIVITY_SFTP_PATH",
    "TAP_CORDIAL_ACTIVITY_SFTP_PASSWORD",
    "TAP_CORDIAL_ACTIVITY_SFTP_HOST_KEY",
    "TARGET_LYTICS_API_TOKEN",
    "TARGET_LYTICS_API_URL",
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandbox", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line)
        assert words[0] == "export"
        key, _, value = words[1].partition("=")
        env[key] = value
    return env


class Running:
    def __init__(self, proc: subprocess.Popen[str], env_file: Path, stdout: str) -> None:
        self.proc = proc
        self.env_file = env_file
        self.stdout = stdout
        self.env = read_env(env_file)


def start_up(tmp_path: Path, *args: str) -> Running:
    env_file = tmp_path / "sbx" / "env.sh"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "up", *args, "--env-file", str(env_file)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    first_line = ""
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            first_line = proc.stdout.readline()
            break
    if first_line.strip() != READY_LINE:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"sandbox up did not get ready: {first_line!r} {err}")
    return Running(proc, env_file, first_line)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    up = start_up(tmp_path, "--events", "300")
    try:
        yield up
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.communicate()


def stop(running: Running) -> tuple[int, str, str]:
    running.proc.send_signal(signal.SIGTERM)
    out, err = running.proc.communicate(timeout=30)
    return running.proc.returncode, running.stdout + out, err


def test_up_writes_the_env_file_and_serves(running: Running) -> None:
    env = running.env
    assert set(env) == EXPECTED_KEYS
    assert running.env_file.stat().st_mode & 0o777 == 0o600
    state = json.loads((running.env_file.parent / "sandbox.json").read_text())
    assert state["cordial_url"] == env["TAP_CORDIAL_ACTIVITY_API_URL"]
    health = requests.get(
        f"{env['TAP_CORDIAL_ACTIVITY_API_URL']}/health",
        auth=(env["TAP_CORDIAL_ACTIVITY_API_KEY"], ""),
        timeout=10,
    )
    assert health.status_code == 200
    summary = requests.get(f"{state['cordial_admin']}/summary", timeout=10).json()
    assert summary["events"] == 300
    assert env["TAP_CORDIAL_ACTIVITY_SFTP_HOST_KEY"].startswith(
        f"[127.0.0.1]:{env['TAP_CORDIAL_ACTIVITY_SFTP_PORT']} ssh-ed25519 "
    )
    user = env["TAP_CORDIAL_ACTIVITY_SFTP_USERNAME"]
    pwd.getpwnam(user)  # the OpenSSH server's user exists while it runs

    code, out, err = stop(running)
    assert code == 0
    secrets = [
        env["TAP_CORDIAL_ACTIVITY_API_KEY"],
        env["TAP_CORDIAL_ACTIVITY_SFTP_PASSWORD"],
        env["TARGET_LYTICS_API_TOKEN"],
    ]
    for secret in secrets:
        assert secret not in out
        assert secret not in err
    assert not running.env_file.exists()
    assert not (running.env_file.parent / "sandbox.json").exists()
    with pytest.raises(KeyError):
        pwd.getpwnam(user)


def test_show_and_add_events(running: Running) -> None:
    env = running.env
    events: list[dict[str, Any]] = [
        {"cr_event_action": "open", "cr_contact_id": "c1"},
        {"cr_event_action": "open", "cr_contact_id": "c2"},
        {"cr_event_action": "click", "cr_contact_id": "c1"},
    ]
    posted = requests.post(
        f"{env['TARGET_LYTICS_API_URL']}/collect/json/cordial_activity",
        json=events,
        headers={"Authorization": env["TARGET_LYTICS_API_TOKEN"]},
        timeout=10,
    )
    assert posted.status_code == 200
    env_arg = ("--env-file", str(running.env_file))
    shown = cli("show", *env_arg)
    assert shown.returncode == 0, shown.stderr
    assert "cordial_activity: 3 events (0 rejected)" in shown.stdout
    assert "events per cr_event_action:" in shown.stdout
    lines = shown.stdout.splitlines()
    assert any(line.split() == ["open", "2"] for line in lines)
    assert any(line.split() == ["click", "1"] for line in lines)
    assert '"cr_contact_id": "c1"' in shown.stdout
    as_json = json.loads(cli("show", "--json", "--limit", "1", *env_arg).stdout)
    assert as_json["counts"]["values"] == {"open": 2, "click": 1}
    assert len(as_json["sample"]["events"]) == 1

    added = cli("add-events", "25", *env_arg)
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("added 25 events between ")
    state = json.loads((running.env_file.parent / "sandbox.json").read_text())
    assert requests.get(f"{state['cordial_admin']}/summary", timeout=10).json()["events"] == 325
    assert stop(running)[0] == 0


def test_show_piped_into_head_ends_without_a_traceback(running: Running) -> None:
    env = running.env
    # Far more than a pipe holds (64 KiB), so `show` is still writing when `head` leaves.
    events = [{"cr_event_action": "open", "cr_contact_id": f"c{i:06d}"} for i in range(5000)]
    posted = requests.post(
        f"{env['TARGET_LYTICS_API_URL']}/collect/json/cordial_activity",
        json=events,
        headers={"Authorization": env["TARGET_LYTICS_API_TOKEN"]},
        timeout=10,
    )
    assert posted.status_code == 200
    env_file = str(running.env_file)
    show = shlex.join(
        [sys.executable, "-m", "sandbox", "show", "--env-file", env_file, "--limit", "5000"]
    )
    piped = subprocess.run(
        ["bash", "-c", f"{show} | head -n 2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert piped.returncode == 0
    assert (
        piped.stdout.splitlines()[0] == "Lytics stream cordial_activity: 5000 events (0 rejected)"
    )
    assert len(piped.stdout.splitlines()) == 2
    assert piped.stderr == ""
    assert stop(running)[0] == 0


def test_show_without_a_running_sandbox(tmp_path: Path) -> None:
    result = cli("show", "--env-file", str(tmp_path / "none" / "env.sh"))
    assert result.returncode != 0
    assert "no running sandbox" in result.stderr


def test_up_serves_a_jsonl_file(tmp_path: Path) -> None:
    events = [
        {"_id": f"{i:024x}", "cID": "c" * 24, "action": "open", "time": "2024-01-01T00:00:00+0000"}
        for i in range(7)
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    up = start_up(tmp_path, "--events-file", str(path))
    try:
        state = json.loads((up.env_file.parent / "sandbox.json").read_text())
        assert requests.get(f"{state['cordial_admin']}/summary", timeout=10).json()["events"] == 7
    finally:
        assert stop(up)[0] == 0


def test_up_with_s3_destination_serves_exports_through_moto(tmp_path: Path) -> None:
    """`up --destination s3` (the demo's DEMO_DESTINATION=s3): the env file configures S3, and
    the tap run on it alone reads every event through the bucket."""
    up = start_up(tmp_path, "--events", "200", "--destination", "s3")
    try:
        env = up.env
        assert env["TAP_CORDIAL_ACTIVITY_EXPORT_DESTINATION"] == "s3"
        assert not [k for k in env if "SFTP" in k]
        tap = Path(sys.executable).parent / "tap-cordial-activity"
        run_env = {
            "PATH": str(Path(sys.executable).parent), **env,
            "TAP_CORDIAL_ACTIVITY_POLL_INTERVAL_SECONDS": "0.1",
            "TAP_CORDIAL_ACTIVITY_SETTLE_MINUTES": "0",
            "TAP_CORDIAL_ACTIVITY_ACTIONS": '["open", "click", "message-sent", "optout", "bounce", '
            '"complaint", "pageview", "message-stopped", "custom"]',
        }
        run = subprocess.run(
            [str(tap), "--config", "ENV"], env=run_env, capture_output=True, text=True,
            timeout=120, check=False,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        records = [json.loads(line) for line in run.stdout.splitlines()
                   if line.startswith('{"type":"RECORD"')]
        assert len({r["record"]["_id"] for r in records}) == 200
        assert "S3 bucket 'cordial-exports'" not in run.stderr  # no S3 error
        code, _, err = stop(up)
        assert code == 0
        assert env["TAP_CORDIAL_ACTIVITY_S3_SECRET_ACCESS_KEY"] not in err
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.communicate()
