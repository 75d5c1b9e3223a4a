"""The benchmark's results: one row per measurement, the table, ratios and the goal checks."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata

MB = 1_000_000

#: The stock tap reading without paramiko prefetch: a second, labelled row, never the baseline.
STOCK_NO_PREFETCH = "stock-noprefetch"
#: Our pair through ``meltano run`` with the tap's ``batch_config``: BATCH files, not RECORD lines.
OURS_BATCH = "ours-batch"
#: Our tap with ``export_destination: s3``: the export written to and read from moto's S3.
OURS_S3 = "ours-s3"
#: The goals. Ratios are against the stock plugins measured in the same run (the tap's against
#: the prefetching stock tap), by the smallest dataset size they apply from.
TAP_RATIO_GOALS = {200_000: 8.0, 1_000_000: 10.0}
TARGET_RATIO_GOALS = {1_000_000: 10.0}
PIPELINE_SECONDS_GOAL = 15.0
PIPELINE_GOAL_EVENTS = 1_000_000
RSS_GOAL_BYTES = 100 * MB
RSS_GROWTH_GOAL = 0.10


def ratio_goal(kind: str, events: int) -> float | None:
    """The ratio goal of ``kind`` (tap or target) at a dataset of ``events``; None below all."""
    goals = TAP_RATIO_GOALS if kind == "tap" else TARGET_RATIO_GOALS
    sizes = [size for size in goals if size <= events]
    return goals[max(sizes)] if sizes else None


@dataclass
class Result:
    """The best of several runs of one measurement."""

    kind: str  # "tap", "target" or "pipeline"
    impl: str  # "ours", "stock", STOCK_NO_PREFETCH, OURS_BATCH or OURS_S3
    events: int  # events in the dataset
    records: int  # records counted (tap) or accepted by Lytics (target, pipeline)
    seconds: float  # the measured span (see the table's notes)
    runs: list[float] = field(default_factory=list)  # the measured span of every run
    #: Peak RSS in bytes per role (tap, target, meltano), the largest over the runs.
    peak_rss: dict[str, int] = field(default_factory=dict)
    #: Extra figures shown in the notes (e.g. the export job's own duration).
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Records per second."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def complete(self) -> bool:
        """Whether every event made it."""
        return self.records == self.events


def _label(result: Result) -> str:
    names = {
        ("tap", "ours"): "(a) tap-cordial-activity",
        ("tap", OURS_S3): "(a) tap-cordial-activity, export through S3 (moto server)",
        ("tap", "stock"): "(a) stock singer-sdk tap (paramiko prefetch: the baseline)",
        ("tap", STOCK_NO_PREFETCH): "(a) stock singer-sdk tap, no prefetch",
        ("target", "ours"): "(b) target-lytics",
        ("target", "stock"): "(b) stock singer-sdk target",
        ("pipeline", "ours"): "(c) meltano run tap-cordial-activity target-lytics",
        ("pipeline", OURS_BATCH): "(c) the same, tap with batch_config (BATCH files)",
        ("pipeline", "stock"): "(c) meltano run stock tap + stock target",
    }
    return names[(result.kind, result.impl)]


def _find(results: Sequence[Result], kind: str, impl: str, events: int) -> Result | None:
    return next((r for r in results if (r.kind, r.impl, r.events) == (kind, impl, events)), None)


def _rss(result: Result) -> str:
    roles = [role for role in ("tap", "target") if role in result.peak_rss]
    return ", ".join(f"{role} {result.peak_rss[role] / MB:.0f}" for role in roles) or "n/a"


def machine_line() -> str:
    """What the figures were measured on."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"singer-sdk {metadata.version('singer-sdk')}, meltano {metadata.version('meltano')}, "
        f"{platform.system()} {platform.release()}"
    )


def render(results: Sequence[Result], *, header: Sequence[str]) -> str:
    """The results as Markdown: table per dataset size, goal checks, notes."""
    lines: list[str] = [*header, ""]
    sizes = sorted({r.events for r in results}, reverse=True)
    for size in sizes:
        lines += [
            f"### {size:,} events",
            "",
            "| measurement | records | seconds | records/s | peak RSS MB | vs stock |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for kind in ("tap", "target", "pipeline"):
            for impl in ("ours", OURS_S3, OURS_BATCH, "stock", STOCK_NO_PREFETCH):
                result = _find(results, kind, impl, size)
                if result is None:
                    continue
                stock = _find(results, kind, "stock", size)
                ratio = (
                    f"{result.rate / stock.rate:.1f}x"
                    if impl in ("ours", OURS_S3, OURS_BATCH) and stock is not None and stock.rate
                    else ""
                )
                flag = "" if result.complete else f" (of {result.events:,}!)"
                lines.append(
                    f"| {_label(result)} | {result.records:,}{flag} | {result.seconds:.2f} | "
                    f"{result.rate:,.0f} | {_rss(result)} | {ratio} |"
                )
        lines.append("")
        extras = [
            f"- {_label(r)}: " + ", ".join(f"{k} {_number(v)}" for k, v in r.extra.items())
            for r in results
            if r.events == size and r.extra
        ]
        lines += extras + ([""] if extras else [])
    lines += ["### Goals", "", *goal_lines(results), ""]
    return "\n".join(lines)


def _number(value: float) -> str:
    """Counts as integers, durations with two decimals."""
    return str(value) if isinstance(value, int) else f"{value:.2f}"


def goal_lines(results: Sequence[Result]) -> list[str]:
    """One PASS/FAIL/NOT CHECKED line per goal (INFO lines add context)."""
    out: list[str] = []
    big = max((r.events for r in results), default=0)

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    for kind in ("tap", "target"):
        ours, stock = _find(results, kind, "ours", big), _find(results, kind, "stock", big)
        goal = ratio_goal(kind, big)
        baseline = "the prefetching stock tap" if kind == "tap" else "stock"
        if goal is None:
            goals = TAP_RATIO_GOALS if kind == "tap" else TARGET_RATIO_GOALS
            size, goal = min(goals.items())
            measured = (
                f" (measured at {big:,}: {ours.rate / stock.rate:.1f}x)"
                if ours and stock and stock.rate
                else ""
            )
            out.append(
                f"- NOT CHECKED {kind} >= {goal:g}x {baseline} at {size:,} events: "
                f"run with --events {size}{measured}"
            )
        elif ours and stock and stock.rate:
            ratio = ours.rate / stock.rate
            out.append(
                f"- {verdict(ratio >= goal and ours.complete)} {kind} >= {goal:g}x {baseline} "
                f"at {big:,} events: {ratio:.1f}x ({ours.rate:,.0f} vs {stock.rate:,.0f} "
                "records/s)"
            )
        else:
            out.append(f"- NOT CHECKED {kind} >= {goal:g}x {baseline}: a measurement is missing")
        plain = _find(results, kind, STOCK_NO_PREFETCH, big)
        if ours and plain and plain.rate:
            out.append(
                f"- INFO {kind} vs the stock tap without prefetch: {ours.rate / plain.rate:.1f}x "
                f"({ours.rate:,.0f} vs {plain.rate:,.0f} records/s)"
            )
        read = "job Done to last RECORD s"
        if kind == "tap" and ours and stock and read in ours.extra and read in stock.extra:
            # The export job is Cordial's work, the same for both taps: show the taps' own share.
            ours_rate = ours.records / ours.extra[read]
            stock_rate = stock.records / stock.extra[read]
            out.append(
                f"- INFO tap read phase alone (job Done to last RECORD): "
                f"{ours_rate / stock_rate:.1f}x ({ours_rate:,.0f} vs {stock_rate:,.0f} records/s)"
            )
    for impl, how in (("ours", "RECORD messages"), (OURS_BATCH, "batch_config")):
        pipeline = _find(results, "pipeline", impl, big)
        if pipeline is None or big < PIPELINE_GOAL_EVENTS:
            out.append(
                f"- NOT CHECKED pipeline ({how}) {PIPELINE_GOAL_EVENTS:,} events <= "
                f"{PIPELINE_SECONDS_GOAL:g} s: run with --events {PIPELINE_GOAL_EVENTS}"
            )
            continue
        # Scale to exactly the goal's size when more events were used.
        seconds = pipeline.seconds * PIPELINE_GOAL_EVENTS / big
        out.append(
            f"- {verdict(seconds <= PIPELINE_SECONDS_GOAL and pipeline.complete)} pipeline "
            f"({how}) {PIPELINE_GOAL_EVENTS:,} events through meltano run <= "
            f"{PIPELINE_SECONDS_GOAL:g} s: {pipeline.seconds:.1f} s"
        )
    small = min((r.events for r in results), default=0)
    for role in ("tap", "target"):
        peak_big = _peak(results, role, big)
        if peak_big is None:
            out.append(f"- NOT CHECKED {role} peak RSS: no measurement")
            continue
        if big < PIPELINE_GOAL_EVENTS:
            out.append(
                f"- NOT CHECKED {role} peak RSS <= {RSS_GOAL_BYTES / MB:.0f} MB at "
                f"{PIPELINE_GOAL_EVENTS:,}: measured {peak_big / MB:.0f} MB at {big:,}"
            )
        else:
            out.append(
                f"- {verdict(peak_big <= RSS_GOAL_BYTES)} {role} peak RSS <= "
                f"{RSS_GOAL_BYTES / MB:.0f} MB at {big:,} events: {peak_big / MB:.0f} MB"
            )
        peak_small = _peak(results, role, small) if small != big else None
        if peak_small is None:
            out.append(
                f"- NOT CHECKED {role} peak RSS within {RSS_GROWTH_GOAL:.0%} of the 200k "
                "figure: run with --compare-small"
            )
        else:
            growth = peak_big / peak_small - 1
            out.append(
                f"- {verdict(growth <= RSS_GROWTH_GOAL)} {role} peak RSS at {big:,} within "
                f"{RSS_GROWTH_GOAL:.0%} of {small:,}: {peak_big / MB:.0f} MB vs "
                f"{peak_small / MB:.0f} MB ({growth:+.1%})"
            )
    return out


def _peak(results: Sequence[Result], role: str, events: int) -> int | None:
    """Our plugin's largest peak RSS for ``role`` at ``events``, alone or inside meltano run."""
    peaks = [
        r.peak_rss[role]
        for r in results
        if r.impl in ("ours", OURS_BATCH) and r.events == events and role in r.peak_rss
    ]
    return max(peaks, default=None)
