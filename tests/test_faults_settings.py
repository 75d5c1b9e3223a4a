"""Issue 7, scenario 6: each bad setting gives one clear message before any Cordial call.

Runs the tap's CLI against the sandbox and checks the whole outcome: exit code 1, nothing on
stdout (no record, no STATE), the one message, no traceback, not a single request to Cordial (so no
export job), and no secret in the output.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_faults_helpers import assert_no_secrets
from test_tap_helpers import run_tap

from sandbox.pytest_plugin import Sandbox

PASSPHRASE = "correct-horse-battery"

CASES = [
    *[
        pytest.param({name: None}, f"`{name}` is required", id=f"missing-{name}")
        for name in ("api_key", "sftp_host", "sftp_username", "sftp_path")
    ],
    pytest.param({"sftp_password": None, "sftp_private_key": None}, "No SFTP login for the tap",
                 id="missing-sftp-login"),
    pytest.param({"start_date": "2024-13-01"},
                 "`start_date` '2024-13-01' is not a date (yyyy-mm-dd) or ISO 8601 date-time",
                 id="malformed-start-date"),
    pytest.param({"start_date": "2024-03-01", "end_date": "2024-02-01"},
                 "`end_date` must be after `start_date`", id="start-after-end"),
    pytest.param({"sftp_private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n"
                                      "-----END OPENSSH PRIVATE KEY-----\n"},
                 "`sftp_private_key`: ", id="unreadable-private-key"),
    pytest.param({"sftp_private_key": "encrypted"},
                 "encrypted: set `sftp_private_key_passphrase`", id="missing-passphrase"),
    pytest.param({"sftp_private_key": "encrypted", "sftp_private_key_passphrase": "wrong-one"},
                 "wrong `sftp_private_key_passphrase`", id="wrong-passphrase"),
]


def _encrypted(private_key: str, folder: Path) -> str:
    """The sandbox's client key, encrypted with PASSPHRASE by ssh-keygen."""
    key_file = folder / "id_ed25519"
    key_file.write_text(private_key)
    key_file.chmod(0o600)
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-N", PASSPHRASE, "-P", "", "-f", str(key_file)],
        check=True, capture_output=True,
    )
    return key_file.read_text()


@pytest.mark.parametrize(("changes", "message"), CASES)
def test_bad_setting_is_one_clear_message_before_any_export(
    sandbox: Sandbox, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    if changes.get("sftp_private_key") == "encrypted":
        changes = {**changes, "sftp_private_key": _encrypted(sandbox.sftp.private_key, tmp_path)}
    run = run_tap(tmp_path, sandbox.tap_config(**changes))
    assert run.returncode == 1, run.stderr[-2000:]
    assert run.stdout == ""
    assert run.stderr.count(message) == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert sandbox.cordial.request_log == []
    assert sandbox.cordial.exports == []
    assert_no_secrets([*sandbox.secrets(), PASSPHRASE, "wrong-one"],
                      stdout=run.stdout, stderr=run.stderr)
