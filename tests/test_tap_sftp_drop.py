"""A killed SFTP session mid-read: the tap reconnects and reads on, never a bare "Aborted!".

The session is dropped as an operator or a crash would: SIGKILL to the per-connection sshd
process (the listening sshd's child) serving the tap, while the tap reads an uncompressed export.
Closing the dead connection used to raise ``EOFError`` out of the reconnect, which click
reports as "Aborted!"; it must be best effort.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from tap_cordial_activity import connections
from tap_cordial_activity.errors import SftpError
from tap_cordial_activity.export import ExportRunner
from tap_cordial_activity.sftp_store import SftpStore
from tap_cordial_activity.tap import TapCordialActivity
from tap_cordial_activity.timeutil import to_rfc3339
from tap_cordial_activity.windows import Window
from test_tap_helpers import FAST, run_tap

from sandbox.pytest_plugin import Sandbox
from sandbox.sftp import SftpServer

ROUNDS = 20
EVENTS = 8_000  # about 4 MB of JSON Lines
logger = logging.getLogger("test_tap_sftp_drop")


def session_processes(server: SftpServer) -> list[psutil.Process]:
    """The sshd processes serving client sessions: the listener's per-connection child and
    its descendants that hold the client's TCP connection."""
    listeners = [
        c.pid for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == server.port and c.pid
    ]
    assert listeners, f"no process listens on port {server.port}"
    serving = []
    for process in psutil.Process(listeners[0]).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if any(c.status == psutil.CONN_ESTABLISHED for c in process.net_connections("tcp")):
                serving.append(process)
    return serving


def kill_sessions(server: SftpServer) -> int:
    """SIGKILL the sshd processes serving sessions; how many there were.

    No waiting for them to be gone: the tap meets the drop while paramiko is still noticing it,
    which is when closing the dead session used to fail.
    """
    victims = session_processes(server)
    for process in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
    return len(victims)


@pytest.fixture
def exported(sandbox: Sandbox) -> tuple[TapCordialActivity, Window, int]:
    """An uncompressed export of a few MB, made once, and a window that re-reads it."""
    start, end = sandbox.cordial.add_generated(EVENTS, seed=12)
    window_start, window_end = start - timedelta(seconds=1), end + timedelta(seconds=1)
    config = sandbox.tap_config(
        compress=False, start_date=to_rfc3339(window_start), end_date=to_rfc3339(window_end),
        **FAST,
    )
    tap = TapCordialActivity(config=config)
    runner = tap.streams["activity"].export_runner()
    try:
        window = Window(window_start, window_end)
        count = sum(1 for record in runner.window_records(window) if record is not None)
    finally:
        runner.store.close()
        runner.client.close()
    assert count > EVENTS // 2  # the default actions leave some out
    assert sum((sandbox.sftp.root / f).stat().st_size for f in window.files) > 3_000_000
    return tap, window, count


def test_killed_session_mid_read_reconnects_every_time(
    sandbox: Sandbox, exported: tuple[TapCordialActivity, Window, int],
    caplog: pytest.LogCaptureFixture,
):
    tap, done, count = exported
    progress = {
        "export": done.export, "job_id": done.job_id, "files": done.files, "records_read": 0,
        "window_start": to_rfc3339(done.start), "window_end": to_rfc3339(done.end),
    }
    caplog.set_level(logging.INFO, logger=logger.name)
    for round_number in range(ROUNDS):
        caplog.clear()
        store = SftpStore(connections.sftp_reader(tap.config, tap.logger), tap.config["sftp_path"])
        store.reader.settings.reconnect_backoff_seconds = 0.05
        runner = ExportRunner(
            tap.config,
            connections.cordial_client(tap.config, tap.logger),
            store,
            logger,
            checkpoint_records=10**9,
        )
        window = Window(done.start, done.end, resume=dict(progress))
        ids: set[str] = set()
        killed = 0
        try:
            for record in runner.window_records(window):
                if record is None:
                    continue
                ids.add(record["_id"])
                if len(ids) == 500 + 40 * round_number:  # a different point of the read each time
                    killed = kill_sessions(sandbox.sftp)
        finally:
            runner.store.close()
            runner.client.close()
        assert killed >= 1, f"round {round_number}: no session to kill"
        assert len(ids) == count, f"round {round_number}: {len(ids)} of {count} records"
        assert ", 1 reconnects" in caplog.text, f"round {round_number}: no reconnect"


def test_tap_cli_survives_a_killed_session(sandbox: Sandbox, tmp_path: Path):
    """The whole tap: killed mid-read, it reconnects, delivers every event and exits 0."""
    # Older than settle_minutes: the run exports up to its horizon (now - 15 min).
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    start, end = sandbox.cordial.add_generated(
        EVENTS, start=hour_ago - timedelta(hours=1), end=hour_ago, seed=13
    )
    config = sandbox.tap_config(
        compress=False, start_date=to_rfc3339(start - timedelta(seconds=1)),
        end_date=to_rfc3339(end + timedelta(seconds=1)), **FAST,
    )
    files_before = set(os.listdir(sandbox.sftp.root))

    def kill_when_reading() -> None:
        # The export file appears once the job is done; the tap reads it right after.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if set(os.listdir(sandbox.sftp.root)) - files_before:
                time.sleep(0.05)
                kill_sessions(sandbox.sftp)
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_when_reading)
    killer.start()
    run = run_tap(tmp_path, config)
    killer.join()
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Aborted!" not in run.stderr
    assert len({r["_id"] for r in run.records}) == len(run.records) > EVENTS // 2


def test_listing_deleting_and_closing_after_a_killed_session(sandbox: Sandbox):
    """The other calls meet a dead session too: listing reconnects, a delete fails with the
    tap's SftpError (deletes are not retried), and closing is quiet."""
    (sandbox.sftp.root / "a.json").write_text("{}\n")
    tap = TapCordialActivity(config=sandbox.tap_config(**FAST))
    folder = sandbox.sftp.sftp_path
    for _ in range(5):
        reader = connections.sftp_reader(tap.config, tap.logger)
        reader.settings.reconnect_backoff_seconds = 0.05
        reader.connect()
        assert kill_sessions(sandbox.sftp) >= 1
        assert [f.filename for f in reader.list_files(folder)] == ["a.json"]
        assert kill_sessions(sandbox.sftp) >= 1
        with pytest.raises(SftpError, match="cannot delete SFTP file"):
            reader.remove(f"{folder}/a.json")
        assert len(reader.list_files(folder)) == 1  # reconnected again
        assert kill_sessions(sandbox.sftp) >= 1
        reader.close()
        reader.close()
    assert (sandbox.sftp.root / "a.json").exists()
