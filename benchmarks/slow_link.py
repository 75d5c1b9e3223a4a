"""The "slow link" scenario: target-lytics when Lytics is across the internet.

The Lytics stand-in adds :data:`LATENCY_SECONDS` to every request and reads each request body at
:data:`BYTES_PER_SECOND` (``latency_seconds`` / ``upload_bytes_per_second``). Our target runs on
the saved tap output three ways, in the same run: on the local link with its defaults, and on the
slow link with its defaults and with ``max_concurrent_uploads: 1`` (one request at a time). The
goal: on the slow link, with the defaults, at least :data:`GOAL` of the local link's throughput.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.report import Result

LATENCY_SECONDS = 0.2
BYTES_PER_SECOND = 20_000_000
GOAL = 0.8


@dataclass(frozen=True)
class Link:
    """One way to run the target: the link's timing and the target's extra settings."""

    label: str
    latency_seconds: float
    bytes_per_second: float | None
    settings: dict[str, Any]


LINKS = (
    Link("local link, defaults", 0.0, None, {}),
    Link("slow link, defaults", LATENCY_SECONDS, BYTES_PER_SECOND, {}),
    Link(
        "slow link, max_concurrent_uploads 1",
        LATENCY_SECONDS,
        BYTES_PER_SECOND,
        {"max_concurrent_uploads": 1},
    ),
)


def measure_links(
    lytics: Any, run_target: Callable[[dict[str, Any], str], Result]
) -> list[tuple[Link, Result]]:
    """Run the target once per :data:`LINKS` entry (``run_target(settings, name)``)."""
    results = []
    for link in LINKS:
        lytics.latency_seconds = link.latency_seconds
        lytics.upload_bytes_per_second = link.bytes_per_second
        try:
            results.append((link, run_target(link.settings, link.label)))
        finally:
            lytics.latency_seconds = 0.0
            lytics.upload_bytes_per_second = None
    return results


def render(results: Sequence[tuple[Link, Result]]) -> str:
    """The scenario's Markdown: a table and the goal's verdict."""
    lines = [
        f"### Slow link: {LATENCY_SECONDS * 1000:.0f} ms per request, "
        f"{BYTES_PER_SECOND / 1e6:.0f} MB/s per request body",
        "",
        "| target-lytics | events | seconds | events/s | requests | peak RSS MB | vs local |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    local = results[0][1]
    for link, result in results:
        ratio = result.rate / local.rate if local.rate else 0.0
        flag = "" if result.complete else f" (of {result.events:,}!)"
        lines.append(
            f"| {link.label} | {result.records:,}{flag} | {result.seconds:.2f} | "
            f"{result.rate:,.0f} | {int(result.extra.get('uploads', 0))} | "
            f"{result.peak_rss.get('target', 0) / 1e6:.0f} | {ratio:.0%} |"
        )
    slow = results[1][1]
    ratio = slow.rate / local.rate if local.rate else 0.0
    verdict = "PASS" if ratio >= GOAL and slow.complete else "FAIL"
    lines += [
        "",
        f"- {verdict} slow link with the defaults >= {GOAL:.0%} of the local link: {ratio:.0%} "
        f"({slow.rate:,.0f} vs {local.rate:,.0f} events/s)",
        "",
    ]
    return "\n".join(lines)
