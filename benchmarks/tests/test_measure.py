"""The measurement helpers: RECORD counting on a pipe, peak RSS of a process tree."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks import measure

_WRITER = r"""
import sys, time
out = sys.stdout.buffer
out.write(b'{"type":"SCHEMA","stream":"s","schema":{}}\n')
for i in range(int(sys.argv[1])):
    spaced = i % 2
    prefix = b'{"type": "RECORD"' if spaced else b'{"type":"RECORD"'
    out.write(prefix + b', "stream": "s", "record": {"i": %d, "t": "RECORD"}}\n' % i)
    if i % 997 == 0:
        out.flush()
out.write(b'{"type":"STATE","value":{}}\n')
out.write(b'{"type":"RECORD","stream":"s","record":{}}')  # the last line has no newline
"""


def test_counts_records_across_chunks_and_saves_output(tmp_path: Path) -> None:
    saved = tmp_path / "out.jsonl"
    run = measure.run_measured(
        [sys.executable, "-c", _WRITER, "50000"],
        roles={"writer": lambda _cmdline: True},
        count_records=True,
        save_stdout=saved,
    )
    assert run.returncode == 0
    assert run.records_seen == 50_001
    assert run.last_record_at is not None
    assert run.started <= run.last_record_at <= run.ended
    assert saved.read_bytes().count(b"\n") == 50_002


_HOG = r"""
import subprocess, sys
block = bytearray(int(sys.argv[1]) * 1024 * 1024)
block[::4096] = b"x" * len(block[::4096])  # touch every page so it is resident
if len(sys.argv) > 2:
    subprocess.run([sys.executable, "-c", "import time; b = bytearray(80 << 20); "
                    "b[::4096] = b'y' * len(b[::4096]); time.sleep(0.5)", "child-" + "role"])
else:
    import time; time.sleep(0.5)
"""


def test_peak_rss_per_role_in_a_tree() -> None:
    run = measure.run_measured(
        [sys.executable, "-c", _HOG, "40", "spawn"],
        # The parent's own command line holds "child-" + "role", never the joined word.
        roles={"child": measure.cmdline_has("child-role"), "parent": lambda _c: True},
        tree=True,
    )
    assert run.returncode == 0
    assert 40e6 < run.peak_rss["parent"] < 80e6
    assert run.peak_rss["child"] > 80e6


def test_nonzero_exit_is_reported(tmp_path: Path) -> None:
    stderr = tmp_path / "err"
    run = measure.run_measured(
        [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
        roles={},
        stderr_path=stderr,
    )
    assert run.returncode == 3
    assert "boom" in run.stderr_tail()
