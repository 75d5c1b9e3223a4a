"""Helpers for the tap tests: run the tap's CLI on a config and parse what it printed."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TAP = str(Path(sys.executable).parent / "tap-cordial-activity")
#: Settings that keep retries quick in tests.
FAST = {"retry_initial_delay_seconds": 0.01, "retry_max_delay_seconds": 0.05}


@dataclass
class TapRun:
    """What one tap process did."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    @property
    def records(self) -> list[dict[str, Any]]:
        return [m["record"] for m in self.messages if m["type"] == "RECORD"]

    @property
    def states(self) -> list[dict[str, Any]]:
        return [m["value"] for m in self.messages if m["type"] == "STATE"]

    @property
    def bookmark(self) -> dict[str, Any]:
        return self.states[-1]["bookmarks"]["activity"] if self.states else {}


def run_tap(
    tmp_path: Path,
    config: dict[str, Any],
    *args: str,
    state: dict[str, Any] | None = None,
    timeout: float = 120,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> TapRun:
    """Run ``tap-cordial-activity --config ...`` (config with :data:`FAST` retries).

    ``command`` replaces the executable (e.g. a runner script); ``env`` the environment.
    """
    config_file = tmp_path / "tap-config.json"
    config_file.write_text(json.dumps({**FAST, **config}))
    argv = [*(command or [TAP]), "--config", str(config_file), *args]
    if state is not None:
        state_file = tmp_path / "tap-state.json"
        state_file.write_text(json.dumps(state))
        argv += ["--state", str(state_file)]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    return TapRun(done.returncode, done.stdout, done.stderr)


def event(event_id: str, when: datetime | str, action: str = "open", **extra: Any) -> dict:
    """A raw Cordial event at ``when`` (``+0000`` offset, as Cordial writes it)."""
    if isinstance(when, str):
        return {"_id": event_id, "cID": "c-" + event_id, "action": action, "time": when, **extra}
    text = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")
    return {"_id": event_id, "cID": "c-" + event_id, "action": action, "time": text, **extra}


def iso(moment: datetime) -> str:
    """``2024-01-01T00:00:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
