"""The window plan: where a run starts and ends, its export windows, and resumable progress.

Pure functions of the stream state and the settings; the stream logs what they report.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tap_cordial_activity.errors import STATE_WAY_OUT, StateError
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
    #: Bad records set aside in this run (``max_bad_records``), counted in ``read``.
    rejected: int = 0
    #: ``activity_rejects`` records not yet written (written before the next STATE).
    rejects: list[dict[str, Any]] = field(default_factory=list)


class SyncRange(NamedTuple):
    """Where a run starts and ends, the ``_id``s at the start already emitted, and warnings."""

    start: datetime.datetime
    end: datetime.datetime
    skip_ids: frozenset[str]
    #: Settings the plan did not follow as given (a future `end_date`, an old `start_date`).
    warnings: tuple[str, ...] = ()


#: Cordial purges events after 18 months (cordial-api.md): nothing older can be exported.
CORDIAL_RETENTION = datetime.timedelta(days=548)

#: A progress ``files`` list longer than this is kept as a count and a digest (bounded STATE).
MAX_LISTED_FILES = 16


class ProgressCheck(NamedTuple):
    """The ``progress`` to resume (or None), and why it is not resumed (log level, message)."""

    progress: dict[str, Any] | None
    level: int = logging.DEBUG
    note: str = ""


def sync_range(
    state: Mapping[str, Any], config: Mapping[str, Any], run_started: datetime.datetime
) -> SyncRange:
    """Start (bookmark, else ``start_date``, else 7 days ago), end, and ids to skip.

    Never past the run's horizon (its time minus ``settle_minutes``): an ``end_date`` after it
    is cut to it, with a warning. A bookmark that is no date or lies after the run's time is
    corrupt state: :class:`StateError`, with the way out.
    """
    warnings: list[str] = []
    bookmark = state.get("replication_key_value")
    # Cordial records some events after their time: those younger than this are left for
    # the next run, by when they are recorded.
    settle = datetime.timedelta(minutes=integer(config, "settle_minutes"))
    horizon = (run_started - settle).replace(microsecond=0)
    if bookmark:
        start = _bookmark(bookmark, run_started)
        skip = _boundary_ids(state.get("boundary_ids"))
    elif config.get("start_date"):
        start, skip = parse_moment(config["start_date"]), frozenset()
        if start < run_started - CORDIAL_RETENTION:
            # A warning, not a clamp: an account may keep events longer than documented.
            warnings.append(
                f"`start_date` {to_rfc3339(start)} is more than 18 months before the run: "
                "Cordial purges older events, so its first windows may hold none"
            )
    else:
        start, skip = run_started - datetime.timedelta(days=7), frozenset()
    end_setting = config.get("end_date")
    if end_setting:
        end = parse_moment(end_setting)
        if end > horizon:
            # Inside the settle margin too: Cordial may not have recorded those events yet.
            when = "in the future" if end > run_started else "inside the settle margin"
            warnings.append(
                f"`end_date` {to_rfc3339(end)} is {when}: exporting up to "
                f"{to_rfc3339(horizon)} (the run's time minus `settle_minutes`) instead; a "
                "later run goes on from there"
            )
            end = horizon
    else:
        end = horizon
    return SyncRange(start, end, skip, tuple(warnings))


def check_state_text(text: str, file_name: str) -> None:
    """Refuse a ``--state`` file that is no Singer state (:class:`StateError`, one line).

    singer-sdk would end in a traceback on these: empty or malformed JSON, a state that is
    not an object, ``bookmarks`` or a stream's state that is not an object.
    """
    where = f"The state file {file_name}"
    if not text.strip():
        raise StateError(f"{where} is empty: expected a JSON object such as {{}}. {STATE_WAY_OUT}")
    try:
        state = json.loads(text)
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        at = f" at line {line}" if line else ""
        raise StateError(f"{where} is not valid JSON{at}. {STATE_WAY_OUT}") from None
    if not isinstance(state, dict):
        raise StateError(f"{where} must hold a JSON object, not {type(state).__name__}. "
                         + STATE_WAY_OUT)
    bookmarks = state.get("bookmarks")
    if bookmarks is None:
        return
    if not isinstance(bookmarks, dict):
        raise StateError(
            f"{where}: `bookmarks` must be an object (stream name -> its state), not "
            f"{type(bookmarks).__name__}. {STATE_WAY_OUT}"
        )
    for stream, stream_state in bookmarks.items():
        if not isinstance(stream_state, dict):
            raise StateError(
                f"{where}: `bookmarks.{stream}` must be an object, not "
                f"{type(stream_state).__name__}. {STATE_WAY_OUT}"
            )


def _bookmark(value: Any, run_started: datetime.datetime) -> datetime.datetime:
    """The STATE's bookmark as a moment; :class:`StateError` when it cannot be one."""
    where = "The STATE's `bookmarks.activity.replication_key_value`"
    if not isinstance(value, str):
        raise StateError(f"{where} must be a date-time text, not {type(value).__name__}. "
                         + STATE_WAY_OUT)
    try:
        moment = parse_moment(value)
    except ValueError:
        raise StateError(
            f"{where} {value[:60]!r} is not an ISO 8601 date-time. {STATE_WAY_OUT}"
        ) from None
    if moment > run_started:
        raise StateError(
            f"{where} {to_rfc3339(moment)} lies after the run's time {to_rfc3339(run_started)}: "
            f"the state is corrupt (no run can have exported the future). {STATE_WAY_OUT}"
        )
    return moment


def _boundary_ids(value: Any) -> frozenset[str]:
    """The STATE's ``boundary_ids`` (a list of ids); :class:`StateError` otherwise."""
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(i, str | int) for i in value):
        raise StateError(
            "The STATE's `bookmarks.activity.boundary_ids` must be a list of event ids. "
            + STATE_WAY_OUT
        )
    return frozenset(str(i) for i in value)


def file_set(files: list[str]) -> dict[str, Any]:
    """A bounded record of an export's file names: their count and a digest of the list."""
    digest = hashlib.sha256("\n".join(files).encode()).hexdigest()
    return {"count": len(files), "sha256": digest}


def progress_files(files: list[str]) -> dict[str, Any]:
    """The ``progress`` keys naming the files read: the list, or a file set when it is long."""
    if len(files) <= MAX_LISTED_FILES:
        return {"files": list(files)}
    return {"file_set": file_set(files)}


def plain_name(name: Any) -> bool:
    """Whether ``name`` is a file name inside the folder (no path, not ``.`` or ``..``)."""
    return isinstance(name, str) and bool(name) and "/" not in name and name not in (".", "..")


def _progress_problem(progress: Mapping[str, Any]) -> str | None:
    """What is wrong with a checkpoint's own fields (None when they hold together)."""
    files, fileset = progress.get("files"), progress.get("file_set")
    if files is not None:
        if not isinstance(files, list) or not files or not all(plain_name(f) for f in files):
            return "its `files` is not a list of file names"
        if len(set(files)) != len(files):
            return "its `files` lists a file twice"
    elif not (
        isinstance(fileset, dict) and isinstance(fileset.get("count"), int)
        and not isinstance(fileset.get("count"), bool) and fileset["count"] > 0
        and isinstance(fileset.get("sha256"), str)
    ):
        return "it names no files"
    count = progress.get("records_read")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return f"its `records_read` {count!r} is not a count"
    if not progress.get("export") or not isinstance(progress.get("export"), str):
        return "it names no export"
    if progress.get("job_id") is None:
        return "it names no job"
    return None


def check_progress(
    progress: Any, start: datetime.datetime, end: datetime.datetime | None = None
) -> ProgressCheck:
    """The state's ``progress`` if it checkpoints a window from ``start`` to at most ``end``.

    A checkpoint that contradicts itself or the bookmark is not resumed: its window is exported
    again (a warning names what was wrong), never skipped.
    """
    if not progress:
        return ProgressCheck(None)
    again = "; exporting its window again"
    if not isinstance(progress, dict):
        return ProgressCheck(
            None, logging.WARNING, f"Ignoring the STATE's 'progress': not an object{again}"
        )
    problem = _progress_problem(progress)
    try:
        begins = parse_moment(str(progress.get("window_start")))
        ends = parse_moment(str(progress.get("window_end")))
    except ValueError:
        problem = problem or "its window bounds are not date-times"
    else:
        if problem is None and ends <= begins:
            problem = "its window ends before it begins"
        elif problem is None and begins != start:
            problem = (
                f"its window begins at {to_rfc3339(begins)}, not at the bookmark "
                f"{to_rfc3339(start)}"
            )
        elif problem is None and end is not None and ends > end:
            problem = (
                f"its window ends at {to_rfc3339(ends)}, after this run's end {to_rfc3339(end)}"
            )
    if problem is not None:
        return ProgressCheck(
            None, logging.WARNING, f"Ignoring the STATE's 'progress': {problem}{again}"
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
        **progress_files(window.files),
        "records_read": window.records_read,
    }
