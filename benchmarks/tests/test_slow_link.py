"""The slow-link scenario: its table and verdict; it sets, then resets, the stand-in's timing."""

from __future__ import annotations

from typing import Any

from benchmarks import slow_link
from benchmarks.report import Result
from sandbox.lytics import LyticsStandIn


def _result(seconds: float, records: int = 200_000) -> Result:
    return Result("target", "ours", 200_000, records, seconds, extra={"uploads": 14})


def _table(*results: Result) -> str:
    return slow_link.render(list(zip(slow_link.LINKS, results, strict=True)))


def test_verdict_passes_at_80_percent_and_fails_below() -> None:
    passed = _table(_result(2.0), _result(2.5), _result(9.0))
    assert "- PASS slow link with the defaults >= 80% of the local link: 80%" in passed
    assert "| slow link, max_concurrent_uploads 1 | 200,000 | 9.00 | 22,222 | 14 |" in passed
    failed = _table(_result(2.0), _result(2.6), _result(9.0))
    assert "- FAIL slow link with the defaults >= 80% of the local link: 77%" in failed
    lost = _table(_result(2.0), _result(2.0, 199_999), _result(9.0))
    assert "FAIL" in lost
    assert "(of 200,000!)" in lost


def test_each_link_sets_the_stand_ins_timing_then_resets_it() -> None:
    seen: list[tuple[str, float, Any, dict[str, Any]]] = []
    with LyticsStandIn() as lytics:

        def run(settings: dict[str, Any], label: str) -> Result:
            seen.append((label, lytics.latency_seconds, lytics.upload_bytes_per_second, settings))
            return _result(1.0)

        slow_link.measure_links(lytics, run)
        assert lytics.latency_seconds == 0.0
        assert lytics.upload_bytes_per_second is None
    assert seen == [
        ("local link, defaults", 0.0, None, {}),
        ("slow link, defaults", 0.2, 20_000_000, {}),
        ("slow link, max_concurrent_uploads 1", 0.2, 20_000_000, {"max_concurrent_uploads": 1}),
    ]
