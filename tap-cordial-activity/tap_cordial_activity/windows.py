"""The window plan: where a run starts and ends, its export windows, and resumable progress.

Pure functions of the stream state and the settings; the stream logs what they report.
"""

from __future__ import annotations

import datetime
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tap_cordial_activity.settings import integer, number
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
    #: Records of actions that were not selected, by action (left out by the tap).
    skipped_actions: Counter[str] = field(default_factory=Counter)
    #: The interrupted run's ``progress`` in this window, when this run resumes it.
    resume: dict[str, Any] | None = None
    #: The export being read, for ``progress``.
    export: str = ""
    job_id: str = ""
    files: list[str] = field(default_factory=list)
    #: Records consumed from the export files (emitted or skipped) up to the last checkpoint.
    records_read: int = 0
    #: The export job as Cordial last reported it (Done when the window is read).
    job: dict[str, Any] | None = None
    #: How many records Cordial says the export holds (None: not reported).
    reported: int | None = None
    #: Records in the export files (every one read, before any filtering).
    read: int = 0
    #: Records the interrupted run already emitted, read again only for ``boundary_ids``.
    replayed: int = 0


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
    if end_setting:
        end = parse_moment(end_setting)
    else:
        # Cordial records some events after their time: those younger than this are left for
        # the next run, by when they are recorded.
        settle = datetime.timedelta(minutes=integer(config, "settle_minutes"))
        end = (run_started - settle).replace(microsecond=0)
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


#: Bounds of a window sized to the data.
SHORTEST_SPAN = datetime.timedelta(hours=1)
LONGEST_SPAN = datetime.timedelta(days=31)


class WindowSizer:
    """The span of the next window: fixed, or aimed at a number of events per export job.

    The first window is ``first_span`` wide. With a target, each count Cordial reports gives
    the event rate, and the span becomes what should hold the target at that rate (between
    :data:`SHORTEST_SPAN` and :data:`LONGEST_SPAN`).
    """

    def __init__(self, first_span: datetime.timedelta, target_events: int) -> None:
        """Start at ``first_span``; ``target_events`` 0 keeps every window that wide."""
        self.target_events = target_events
        self.span = first_span
        #: Whether a count has come back yet (the span is still a guess until then).
        self.measured = False

    @property
    def adaptive(self) -> bool:
        """True when windows are sized to the data."""
        return self.target_events > 0

    def observe(self, span: datetime.timedelta, events: int) -> None:
        """A job over ``span`` reported ``events``: aim the next windows at the target."""
        if not self.adaptive or span <= datetime.timedelta(0):
            return
        self.measured = True
        if events <= 0:
            self.span = LONGEST_SPAN
            return
        # Whole seconds keep window edges (and bookmarks) on Cordial's one-second grid.
        aimed = datetime.timedelta(
            seconds=int(span.total_seconds() * self.target_events / events)
        )
        self.span = min(max(aimed, SHORTEST_SPAN), LONGEST_SPAN)

    def next_window(self, start: datetime.datetime, end: datetime.datetime) -> Window:
        """The window beginning at ``start``, never past ``end``."""
        return Window(start, min(start + self.span, end))


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
