"""Backfill scenario: 90 days of events, export jobs that take seconds each.

``python -m benchmarks.backfill [--days 90] [--events-per-day 2000] [--job-seconds 2]``
(or ``scripts/bench.sh backfill ...``). The Cordial stand-in makes every job work for
``--job-seconds`` before its files are written; the tap backfills the whole range twice in the
same run, on the same data:

- with its defaults (windows sized to the data, ``max_concurrent_exports`` 3), and
- one fixed daily window at a time (``target_events_per_window`` 0, ``export_window_hours`` 24,
  ``max_concurrent_exports`` 1), as the tap did before.

For each: wall time from the tap's start to its exit, export jobs created, records emitted. The
table goes to stdout and to benchmarks/results/backfill.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.report import machine_line
from sandbox.cordial import CordialStandIn
from sandbox.events import ALL_ACTIONS, generate_events
from sandbox.sftp import start_sftp_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TAP = str(Path(sys.executable).parent / "tap-cordial-activity")

#: The two ways to backfill that are compared: name and setting overrides.
MODES: dict[str, dict[str, Any]] = {
    "defaults (sized windows, 3 jobs at once)": {},
    "fixed daily windows, one job at a time": {
        "target_events_per_window": 0, "export_window_hours": 24, "max_concurrent_exports": 1,
    },
}


@dataclass
class Outcome:
    """One backfill run."""

    mode: str
    seconds: float
    jobs: int
    records: int


def _log(message: str) -> None:
    print(f"[backfill {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_backfill(
    cordial: CordialStandIn, base: dict[str, Any], mode: str, work: Path
) -> Outcome:
    """Run the tap once over the whole range; count its jobs and records."""
    jobs_before = len(cordial.jobs)
    config = work / "tap-config.json"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({**base, **MODES[mode]}, handle)
    log = work / "tap-stderr.log"
    began = time.monotonic()
    with log.open("wb") as stderr:
        tap = subprocess.Popen(
            [TAP, "--config", str(config)], stdout=subprocess.PIPE, stderr=stderr
        )
        assert tap.stdout is not None
        records = sum(1 for line in tap.stdout if line.startswith(b'{"type":"RECORD"'))
        code = tap.wait()
    seconds = time.monotonic() - began
    if code != 0:
        raise SystemExit(f"the tap failed ({mode}); see {log}")
    return Outcome(mode, seconds, len(cordial.jobs) - jobs_before, records)


def render(outcomes: list[Outcome], args: argparse.Namespace, events: int) -> str:
    """The result table in Markdown."""
    lines = [
        f"Backfill of {args.days} days, {events:,} events ({args.events_per_day:,} a day); each "
        f"stand-in job works {args.job_seconds:g} s before writing its files; "
        f"poll_interval_seconds {args.poll:g}.",
        "",
        "| mode | wall time | export jobs | records |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {o.mode} | {o.seconds:.1f} s | {o.jobs} | {o.records:,} |" for o in outcomes
    ]
    if len(outcomes) == 2 and outcomes[0].seconds > 0:
        lines += ["", f"Speed-up of the defaults: {outcomes[1].seconds / outcomes[0].seconds:.1f}x"]
    lines += ["", machine_line()]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--events-per-day", type=int, default=2000)
    parser.add_argument("--job-seconds", type=float, default=2.0,
                        help="work time of each stand-in job before its files are written")
    parser.add_argument("--poll", type=float, default=0.5, help="the tap's poll_interval_seconds")
    parser.add_argument("--output", type=Path, default=RESULTS / "backfill.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both backfills in one sandbox and print the table."""
    args = parse_args(argv)
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=args.days)
    events = args.days * args.events_per_day
    _log(f"generating {events:,} events over {args.days} days")
    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as scratch, \
            start_sftp_server() as sftp, \
            CordialStandIn(sftp_root=sftp.root, sftp_path=sftp.sftp_path, sftp=sftp,
                           events=generate_events(events, start=start, end=end)) as cordial:
        cordial.options.update({"job_base_seconds": args.job_seconds, "pending_polls": 0,
                                "processing_polls": 0})
        base = {
            "api_url": cordial.url, "api_key": cordial.api_key,
            "start_date": start.isoformat(), "end_date": end.isoformat(),
            "sftp_host": sftp.host, "sftp_port": sftp.port, "sftp_username": sftp.username,
            "sftp_password": sftp.password, "sftp_path": sftp.sftp_path,
            "sftp_host_key": sftp.host_key_line, "poll_interval_seconds": args.poll,
            "actions": ALL_ACTIONS,
        }
        outcomes = []
        for mode in MODES:
            _log(f"backfill: {mode}")
            outcomes.append(run_backfill(cordial, base, mode, Path(scratch)))
            _log(f"  {outcomes[-1]}")
            for path in Path(sftp.root).iterdir():
                if path.is_file():
                    path.unlink()
    table = render(outcomes, args, events)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
