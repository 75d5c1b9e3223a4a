"""The window plan: where a run starts and ends, its export windows, and resumable progress.

Pure functions of the stream state and the settings; the stream logs what they report.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tap_cordial_activity.settings import number
from tap_cordial_activity.timeutil import parse_moment, to_rfc3339


@dataclass
class Window:
    """One export job's timeframe, both ends possibly inclusive on Cordial's side."""

    start: datetime.datetime
    end: datetime.datetime
    #: ``_id`` of events at ``start`` that the previous window already emitted.
    skip_ids: frozenset[str] = frozenset()
    #: Filled while reading: ``_id`` of emitted events whose time equals ``end``.
    boundary_ids: set[str] = field(default_factory=set)
    emitted: int = 0
    outside: int = 0
    duplicates: int = 0
    #: The interrupted run's ``progress`` in this window, when this run resumes it.
    resume: dict[str, Any] | None = None
    #: The export being read, for ``progress``.
    export: str = ""
    job_id: str = ""
    files: list[str] = field(default_factory=list)
    #: Records consumed from the export files (emitted or skipped) up to the last checkpoint.
    records_read: int = 0


class SyncRange(NamedTuple):
    """Where a run starts and ends, and the ``_id``s at the start already emitted."""

    start: datetime.datetime
    end: datetime.datetime
    skip_ids: frozenset[str]


class ProgressCheck(NamedTuple):
    """The ``progress`` to resume (or None), and why it is not resumed (log level, message)."""

    progress: dict[str, Any] | None
    level: int = logging.DEBUG
    note: str = ""


def sync_range(
    state: Mapping[str, Any], config: Mapping[str, Any], run_started: datetime.datetime
) -> SyncRange:
    """Start (bookmark, else ``start_date``, else 7 days ago), end, and ids to skip."""
    bookmark = state.get("replication_key_value")
    if bookmark:
        start = parse_moment(str(bookmark))
        skip = frozenset(str(i) for i in state.get("boundary_ids") or ())
    elif config.get("start_date"):
        start, skip = parse_moment(config["start_date"]), frozenset()
    else:
        start, skip = run_started - datetime.timedelta(days=7), frozenset()
    end_setting = config.get("end_date")
    end = parse_moment(end_setting) if end_setting else run_started
    return SyncRange(start, end, skip)


def check_progress(progress: Any, start: datetime.datetime) -> ProgressCheck:
    """The state's ``progress`` if it checkpoints a window beginning at ``start``."""
    if not progress:
        return ProgressCheck(None)
    try:
        files = progress["files"]
        valid = (
            isinstance(files, list) and bool(files) and all(isinstance(f, str) for f in files)
            and isinstance(progress["records_read"], int) and progress["records_read"] >= 0
            and bool(progress["export"]) and progress["job_id"] is not None
        )
        begins = parse_moment(str(progress["window_start"]))
        ends = parse_moment(str(progress["window_end"]))
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid or ends <= begins:
        return ProgressCheck(
            None, logging.WARNING, "Ignoring a malformed 'progress' in the stream state"
        )
    if begins != start:
        return ProgressCheck(
            None, logging.INFO,
            f"Ignoring 'progress' of a window at {to_rfc3339(begins)}: this run starts at "
            f"{to_rfc3339(start)}",
        )
    return ProgressCheck(dict(progress))


def plan_windows(
    planned: SyncRange, span: datetime.timedelta, progress: dict[str, Any] | None
) -> Iterator[Window]:
    """Windows of at most ``span`` from the start to the end, in time order.

    A window's successor starts at its end and skips its ``boundary_ids`` (filled while the
    caller reads it). ``progress`` (of the first window) sets that window's end and resume point.
    """
    start, end, skip = planned
    while start < end:
        if progress is not None:
            window = Window(start, parse_moment(str(progress["window_end"])), skip,
                            resume=progress)
            progress = None
        else:
            window = Window(start, min(start + span, end), skip)
        yield window
        start, skip = window.end, frozenset(window.boundary_ids)


def export_window_span(config: Mapping[str, Any]) -> datetime.timedelta:
    """``export_window_hours`` as a duration."""
    return datetime.timedelta(hours=number(config, "export_window_hours"))


def progress_of(window: Window) -> dict[str, Any]:
    """The STATE ``progress`` for how far into ``window`` the run got."""
    return {
        "export": window.export,
        "job_id": window.job_id,
        "window_start": to_rfc3339(window.start),
        "window_end": to_rfc3339(window.end),
        "files": list(window.files),
        "records_read": window.records_read,
    }
