"""ExportPipeline: the windows of a run, with the next windows' export jobs running ahead.

While the stream reads window k, the jobs of up to ``max_concurrent_exports - 1`` later windows
are already created and run on Cordial's side; the pipeline polls them while it waits for the
window due next. Windows are still handed out strictly in time order, one at a time, and only
once their job is Done. No threads: one thread makes every Cordial call, so a 429's
``Retry-After`` holds back all of them.

No singer-sdk here.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from tap_cordial_activity.client import job_timeout_error
from tap_cordial_activity.errors import CordialError, StoreError
from tap_cordial_activity.export import ExportRunner
from tap_cordial_activity.settings import setting
from tap_cordial_activity.timeutil import parse_moment, to_rfc3339
from tap_cordial_activity.windows import SyncRange, Window, WindowSizer


@dataclass
class Planned:
    """A window and what became of its export job so far."""

    window: Window
    #: Why the job cannot be read (creation refused, Failed, a poll that failed for good).
    error: CordialError | None = None
    throttled: bool = False
    #: The job as last polled.
    last: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        """True while the job is created and neither Done nor failed."""
        return bool(self.window.job_id) and self.window.job is None and self.error is None


class ExportPipeline:
    """Hands out a run's windows in time order, keeping later windows' jobs going ahead."""

    def __init__(
        self,
        runner: ExportRunner,
        planned: SyncRange,
        progress: dict[str, Any] | None,
        sizer: WindowSizer,
        *,
        max_concurrent: int,
        logger: logging.Logger,
    ) -> None:
        """Plan from ``planned``; ``progress`` (if any) resumes the first window."""
        self.runner = runner
        self.sizer = sizer
        self.max_concurrent = max(1, max_concurrent)
        self.logger = logger
        self.end = planned.end
        self.next_start = planned.start
        self.ahead: deque[Planned] = deque()
        self._first_skip = planned.skip_ids
        self._refused = False
        #: Set by :meth:`stop_planning`: the windows already planned are the run's last.
        self.stopped = False
        self._throttle_noted = False
        if progress is not None:
            end = parse_moment(str(progress["window_end"]))
            window = Window(planned.start, end, planned.skip_ids, resume=progress)
            self.ahead.append(Planned(window))
            self.next_start = window.end

    def __enter__(self) -> ExportPipeline:
        """Use as a context: on an error, the jobs created ahead are named (and cleaned up)."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Name the later windows' jobs when the run stops early."""
        if exc is not None:
            self.abandon()

    def windows(self) -> Iterator[Window]:
        """Each window once its job is Done (or it resumes a checkpoint), in time order.

        A window's ``skip_ids`` are the previous window's ``boundary_ids``, which are complete
        once the caller has read that window (before it asks for the next one).
        """
        previous: Window | None = None
        while True:
            self._fill()
            if not self.ahead:
                return
            head = self.ahead[0]
            window = head.window
            window.skip_ids = (
                frozenset(previous.boundary_ids) if previous is not None else self._first_skip
            )
            if window.resume is None:
                self._wait_for(head)
                # Its count may have sized the next windows: start them before reading it.
                self._fill()
            yield window
            self.ahead.popleft()
            previous = window

    def stop_planning(self) -> None:
        """Plan no further window: the run ends after those already planned (jobs created)."""
        self.stopped = True

    def _may_create(self) -> bool:
        """Whether one more job may start now."""
        if self._refused or self.stopped or self.next_start >= self.end:
            return False
        if len(self.ahead) >= self.max_concurrent:
            return False
        if any(p.throttled for p in self.ahead):
            # Cordial runs fewer jobs at once than we asked for: do not queue more.
            return False
        # Until a count has come back the span is a guess: one sized job, then the rest.
        return not (self.sizer.adaptive and not self.sizer.measured
                    and any(p.running for p in self.ahead))

    def _fill(self) -> None:
        """Create jobs for the next windows while slots are free."""
        while self._may_create():
            window = self.sizer.next_window(self.next_start, self.end)
            planned = Planned(window)
            self.ahead.append(planned)
            self.next_start = window.end
            try:
                self.runner.start_export(window)
            except CordialError as exc:
                # Raised when this window's turn comes, after the earlier ones are emitted.
                planned.error, self._refused = exc, True

    def _wait_for(self, head: Planned) -> None:
        """Poll the jobs in flight until ``head``'s is Done; raise its error otherwise."""
        deadline = time.monotonic() + self.runner.job_timeout
        while True:
            for planned in list(self.ahead):
                if planned.running:
                    self._poll(planned, raising=planned is head)
            if head.error is not None:
                raise head.error
            if head.window.job is not None:
                return
            if time.monotonic() + self.runner.poll_interval > deadline:
                raise job_timeout_error(
                    head.window.job_id, head.last or {}, self.runner.job_timeout
                )
            self._fill()
            time.sleep(self.runner.poll_interval)

    def _poll(self, planned: Planned, *, raising: bool) -> None:
        """Poll one job; a Done job's count resizes the next windows."""
        window = planned.window
        try:
            job = self.runner.client.poll_job(window.job_id, planned.last)
        except CordialError as exc:
            planned.error = exc
            if raising:
                raise
            return
        planned.last = job
        planned.throttled = job.get("status") == "Throttled"
        if planned.throttled and not self._throttle_noted:
            self._throttle_noted = True
            self.logger.info(
                "Cordial throttles export job %s (too many jobs at once): no further job is "
                "created until it runs", window.job_id,
            )
        if job.get("status") == "Done":
            self.runner.job_done(window, job)
            if window.reported is not None:
                self.sizer.observe(window.end - window.start, window.reported)

    def abandon(self) -> None:
        """Name the jobs created for windows after the one that stopped the run.

        Their files are left in place, or deleted when ``delete_exported_files`` is on and the
        job is Done (its files complete). Never raises: the run's own error matters more.
        """
        later = [p.window for p in list(self.ahead)[1:] if p.window.job_id]
        if not later:
            return
        delete = bool(setting(self.runner.config, "delete_exported_files"))
        self.logger.warning(
            "The run stopped before reading the export jobs already created for later windows: "
            "%s. %s",
            "; ".join(
                f"job {w.job_id} ({w.export!r}, {to_rfc3339(w.start)} .. {to_rfc3339(w.end)})"
                for w in later
            ),
            "Files of the finished ones are deleted (delete_exported_files)." if delete
            else f"Their files are left in {self.runner.folder}.",
        )
        if not delete:
            return
        store = self.runner.store
        for window in later:
            try:
                job = window.job or self.runner.client.get_job(window.job_id)
                if job.get("status") != "Done":
                    continue
                files = self.runner.export_files(window.export, job)
                self.runner.delete_confirmed_files(
                    (store.path(f) for f in files), "a later window's job, not read"
                )
            except (CordialError, StoreError) as exc:
                self.logger.warning("Job %s's files are kept: %s", window.job_id, exc)
