"""Running one measured process: record counting on its stdout, and peak RSS of its process tree.

Peak RSS is the kernel's high-water mark (``VmHWM`` in ``/proc/PID/status``), sampled for every
process of the tree and attributed to a role (tap, target, meltano) by its command line, every
20 ms. ``wait4``'s ``ru_maxrss`` is not used: Linux folds the parent's peak into it when the child
was forked (or vforked) from the harness before its exec, and the harness holds the dataset.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

#: A RECORD message line starts with one of these, whatever Singer writer produced it.
_RECORD_PREFIXES = (b'{"type":"RECORD"', b'{"type": "RECORD"')
_READ_CHUNK = 1 << 20


@dataclass
class Run:
    """What one run of a measured command gave."""

    returncode: int
    wall_seconds: float
    #: Monotonic clock times (``time.monotonic()``) of process start and end.
    started: float
    ended: float
    #: Peak RSS in bytes per role name.
    peak_rss: dict[str, int] = field(default_factory=dict)
    #: RECORD lines counted on stdout, and when the last one was read (monotonic), when counted.
    records_seen: int = 0
    last_record_at: float | None = None
    stderr_path: Path | None = None

    def stderr_tail(self, lines: int = 30) -> str:
        """The end of the process's stderr, for error messages."""
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        text = self.stderr_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def _vm_hwm(pid: int) -> int | None:
    """The process's peak resident set size in bytes, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


class PeakRssSampler(threading.Thread):
    """Samples the high-water RSS of every process under ``root_pid``, per role.

    ``roles`` maps a role name to a predicate on the process's command line; the first match wins
    and a process matching none is ignored. Known processes are sampled every ``interval`` seconds;
    the tree is walked again every ``rescan`` seconds (a walk reads every process of the machine,
    too costly to repeat at the sampling rate on a shared 2-core machine). The command line is read
    at each sample, not cached: a child forked by Meltano shows Meltano's until it execs.
    """

    def __init__(
        self,
        root_pid: int,
        roles: Mapping[str, Callable[[Sequence[str]], bool]],
        *,
        tree: bool = True,
        interval: float = 0.02,
        rescan: float = 0.25,
    ) -> None:
        super().__init__(name=f"rss-sampler:{root_pid}", daemon=True)
        self.root_pid = root_pid
        self.roles = dict(roles)
        self.tree = tree
        self.interval = interval
        self.rescan = rescan
        self.peaks: dict[str, int] = {}
        self._pids: list[int] = [root_pid]
        self._stop_event = threading.Event()

    def _walk(self) -> None:
        try:
            children = psutil.Process(self.root_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        self._pids = [self.root_pid, *(child.pid for child in children)]

    def _role(self, pid: int) -> str | None:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                raw = handle.read()
        except OSError:
            return None
        cmdline = [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]
        return next((name for name, match in self.roles.items() if match(cmdline)), None)

    def sample(self) -> None:
        """Take one sample of the known processes."""
        for pid in self._pids:
            role = self._role(pid)
            if role is None:
                continue
            hwm = _vm_hwm(pid)
            if hwm is not None and hwm > self.peaks.get(role, 0):
                self.peaks[role] = hwm

    def run(self) -> None:
        """Sample until stopped."""
        next_walk = 0.0
        while not self._stop_event.is_set():
            if self.tree and time.monotonic() >= next_walk:
                self._walk()
                next_walk = time.monotonic() + self.rescan
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> dict[str, int]:
        """Stop sampling and return the peaks."""
        self._stop_event.set()
        self.join()
        return dict(self.peaks)


def run_measured(
    cmd: Sequence[str],
    *,
    roles: Mapping[str, Callable[[Sequence[str]], bool]],
    tree: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: IO[bytes] | None = None,
    count_records: bool = False,
    save_stdout: Path | None = None,
    stderr_path: Path | None = None,
    timeout: float = 3600.0,
) -> Run:
    """Run ``cmd`` to its end while sampling peak RSS; optionally count RECORD lines on its stdout.

    ``tree`` samples the process's descendants too (Meltano's plugins), else the process alone.
    Without ``count_records`` stdout goes to /dev/null. ``save_stdout`` keeps a copy of it.
    """
    stderr_file = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        started = time.monotonic()
        proc = subprocess.Popen(
            list(cmd),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if count_records else subprocess.DEVNULL,
            stderr=stderr_file,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
        sampler = PeakRssSampler(proc.pid, roles, tree=tree)
        sampler.start()
        records, last_record_at = 0, None
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            if count_records:
                assert proc.stdout is not None
                records, last_record_at = _count_records(proc.stdout, save_stdout)
            proc.wait()
        finally:
            killer.cancel()
        ended = time.monotonic()
        peaks = sampler.stop()
    finally:
        if stderr_path:
            stderr_file.close()  # type: ignore[union-attr]
    return Run(
        returncode=proc.returncode,
        wall_seconds=ended - started,
        started=started,
        ended=ended,
        peak_rss=peaks,
        records_seen=records,
        last_record_at=last_record_at,
        stderr_path=stderr_path,
    )


def _count_records(stdout: IO[bytes], save_to: Path | None) -> tuple[int, float | None]:
    """Count RECORD lines as they arrive; note when the last one was read."""
    records, last_record_at = 0, None
    carry = b""
    sink = open(save_to, "wb") if save_to else None  # noqa: SIM115
    try:
        read1 = stdout.read1  # type: ignore[attr-defined]
        while chunk := read1(_READ_CHUNK):
            if sink is not None:
                sink.write(chunk)
            data = carry + chunk
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            found = sum(data.count(prefix, 0, cut) for prefix in _RECORD_PREFIXES)
            if found:
                records += found
                last_record_at = time.monotonic()
        if carry.startswith(_RECORD_PREFIXES):
            records += 1
            last_record_at = time.monotonic()
    finally:
        if sink is not None:
            sink.close()
    return records, last_record_at


def cmdline_has(*needles: str) -> Callable[[Sequence[str]], bool]:
    """A role predicate: some argument of the command line contains one of ``needles``."""

    def match(cmdline: Sequence[str]) -> bool:
        return any(needle in arg for arg in cmdline for needle in needles)

    return match
