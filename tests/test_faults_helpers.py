"""Helpers of the fault suite: a real `tap | target` pipeline and the shared secrets check.

The pipeline runs both CLIs as separate processes joined by an OS pipe, exactly as a shell
`tap-cordial-activity --config tap.json | target-lytics --config target.json > state.json` would,
so back-pressure, exit codes and the STATE the target prints are the real ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from test_tap_helpers import FAST as TAP_FAST

BIN = Path(sys.executable).parent
TAP = str(BIN / "tap-cordial-activity")
TARGET = str(BIN / "target-lytics")
LYTICS_STREAM = "cordial_activity"
#: Quick retries for the target, as the tap's FAST.
TARGET_FAST = {"retry_initial_delay_seconds": 0.01, "retry_max_delay_seconds": 0.05}


def assert_no_secrets(secrets: Iterable[str], **outputs: str) -> None:
    """Fail when any secret value appears in any named output (stdout, stderr, state, log...).

    The failure names the output and the secret's position, never the secret itself.
    """
    secret_list = [s for s in secrets if s]
    assert secret_list, "no secrets to look for: the check would prove nothing"
    leaks = [
        f"secret #{i} in {name}"
        for name, text in outputs.items()
        for i, secret in enumerate(secret_list)
        if secret in text
    ]
    assert not leaks, ", ".join(leaks)


@dataclass
class PipelineRun:
    """What one `tap | target` pipeline did."""

    tap_returncode: int
    target_returncode: int
    tap_stderr: str
    target_stderr: str
    #: The target's stdout: the STATE lines it emitted (what Meltano would store).
    target_stdout: str
    seconds: float

    @property
    def states(self) -> list[dict[str, Any]]:
        """Every STATE value the target emitted, in order."""
        return [json.loads(line) for line in self.target_stdout.splitlines() if line.strip()]

    @property
    def state(self) -> dict[str, Any] | None:
        """The last STATE the target emitted (None when it emitted none)."""
        return self.states[-1] if self.states else None

    @property
    def stderr(self) -> str:
        """Both processes' logs."""
        return self.tap_stderr + self.target_stderr

    @property
    def ok(self) -> bool:
        """Both processes exited 0."""
        return self.tap_returncode == 0 and self.target_returncode == 0

    def assert_no_secrets(self, secrets: Iterable[str]) -> None:
        """No secret in any output of the pipeline, including the STATE."""
        assert_no_secrets(
            secrets,
            tap_stderr=self.tap_stderr,
            target_stderr=self.target_stderr,
            target_stdout=self.target_stdout,
        )

    def describe(self) -> str:
        """Exit codes and the tails of both logs, for assertion messages."""
        return (
            f"tap exit {self.tap_returncode}, target exit {self.target_returncode}\n"
            f"-- tap stderr\n{self.tap_stderr[-3000:]}\n-- target stderr\n"
            f"{self.target_stderr[-3000:]}"
        )


def bookmark_of(state: dict[str, Any] | None) -> Any:
    """The tap's `activity` bookmark in a STATE value (None without one)."""
    if not state:
        return None
    return state.get("bookmarks", {}).get("activity", {}).get("replication_key_value")


def run_pipeline(
    folder: Path,
    tap_config: dict[str, Any],
    target_config: dict[str, Any],
    *,
    state: dict[str, Any] | None = None,
    while_running: Callable[[], None] | None = None,
    timeout: float = 120,
) -> PipelineRun:
    """Run `tap --config [--state] | target --config` and wait for both.

    ``while_running`` is called once both processes have started (e.g. to inject a fault when
    the transfer is midway); the processes keep running meanwhile.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tap_file = folder / "tap.json"
    tap_file.write_text(json.dumps({**TAP_FAST, **tap_config}))
    target_file = folder / "target.json"
    target_file.write_text(json.dumps({**TARGET_FAST, **target_config}))
    tap_argv = [TAP, "--config", str(tap_file)]
    if state is not None:
        state_file = folder / "state.json"
        state_file.write_text(json.dumps(state))
        tap_argv += ["--state", str(state_file)]
    started = time.monotonic()
    with (
        (folder / "tap.err").open("w+") as tap_err,
        (folder / "target.err").open("w+") as target_err,
        (folder / "target.out").open("w+") as target_out,
    ):
        tap = subprocess.Popen(tap_argv, stdout=subprocess.PIPE, stderr=tap_err)
        assert tap.stdout is not None
        target = subprocess.Popen(
            [TARGET, "--config", str(target_file)],
            stdin=tap.stdout,
            stdout=target_out,
            stderr=target_err,
        )
        tap.stdout.close()  # the target owns the read end now: the tap sees EPIPE if it dies
        try:
            if while_running is not None:
                while_running()
            tap_code = tap.wait(timeout=timeout)
            target_code = target.wait(timeout=timeout)
        finally:
            for process in (tap, target):
                if process.poll() is None:
                    process.kill()
                    process.wait()
        seconds = time.monotonic() - started
        outputs = []
        for handle in (tap_err, target_err, target_out):
            handle.seek(0)
            outputs.append(handle.read())
    return PipelineRun(tap_code, target_code, outputs[0], outputs[1], outputs[2], seconds)


def wait_until(condition: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    """Poll ``condition`` every 10 ms until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.01)


def lytics_ids(lytics: Any, stream: str = LYTICS_STREAM) -> list[str]:
    """The Cordial `_id` of every event the Lytics stand-in stored, duplicates included."""
    return [e["cr_system_event_id"] for e in lytics.events.get(stream, [])]
