"""cProfile runs of one plugin on the benchmark's data, summarized as the top functions."""

from __future__ import annotations

import io
import pstats
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO


def profile(
    cmd: Sequence[str],
    *,
    out: Path,
    env: dict[str, str],
    cwd: Path,
    stdin: IO[bytes] | None = None,
    top: int = 25,
) -> str:
    """Run ``cmd`` (a Python script path or ``-m module`` plus arguments) under cProfile.

    ``cmd[0]`` must be the Python interpreter. Returns the ``top`` functions by own time (tottime)
    and by cumulative time; the raw profile is kept in ``out``.
    """
    if cmd[0] != sys.executable:
        raise ValueError("profile() expects a command that starts with the Python interpreter")
    result = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(out), *cmd[1:]],
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        check=False,
    )
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").splitlines()[-20:]
        raise RuntimeError("profiled run failed:\n" + "\n".join(tail))
    text = io.StringIO()
    stats = pstats.Stats(str(out), stream=text)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue()
