"""ActivityStream: time windows -> one export job each -> files (SFTP, S3) -> records -> STATE."""

from __future__ import annotations

import datetime
import logging
import sys
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing
from functools import partial
from typing import TYPE_CHECKING, Any

from singer_sdk import metrics
from singer_sdk.mapper import SameRecordTransform
from typing_extensions import override

from tap_cordial_activity import connections
from tap_cordial_activity.batch_files import BatchFileWriter
from tap_cordial_activity.destinations import export_store
from tap_cordial_activity.errors import (
    USER_ERRORS,
    BadRecordLimitError,
    ExportCountError,
    ExportDataError,
)
from tap_cordial_activity.export import ExportRunner
from tap_cordial_activity.export_store import ExportStore
from tap_cordial_activity.pipeline import ExportPipeline
from tap_cordial_activity.schema import REJECTS_SCHEMA, SCHEMA
from tap_cordial_activity.sdk_private import SideStream, WindowedStream
from tap_cordial_activity.settings import integer, setting
from tap_cordial_activity.timeutil import to_rfc3339
from tap_cordial_activity.windows import (
    MAX_LISTED_FILES,
    SyncRange,
    Window,
    WindowSizer,
    check_progress,
    export_window_span,
    file_set,
    plain_name,
    progress_of,
    sync_range,
)
from tap_cordial_activity.writers import (
    BatchWriter,
    FastWriter,
    RecordWriter,
    SdkWriter,
    write_window,
)

if TYPE_CHECKING:
    from singer_sdk.helpers.types import Context

__all__ = ["SCHEMA", "ActivityStream", "RejectsStream"]


class RejectsStream(SideStream):
    """``activity_rejects``: bad records set aside (``max_bad_records``).

    :class:`ActivityStream` writes them, before the STATE of their window.
    """

    name = "activity_rejects"
    primary_keys = ("export_name", "file", "line")
    schema = REJECTS_SCHEMA


class ActivityStream(WindowedStream):
    """Cordial contact activity, exported in time windows and read from SFTP or S3."""

    name = "activity"
    primary_keys = ("_id",)
    replication_key = "time"
    # Events inside one export are not in time order; the bookmark is the window end instead.
    is_sorted = False
    schema = SCHEMA
    #: Within a window, a STATE with ``progress`` follows about every this many records read
    #: (and each export file but the last), so a stopped run's successor resumes mid-window.
    CHECKPOINT_RECORDS = 5_000
    #: With ``delete_exported_files``, a run plans no further window once the STATE lists this
    #: many files / exports to delete (the next run deletes them and goes on): a bounded STATE
    #: whatever the number of windows.
    MAX_PENDING_DELETIONS = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Set up the per-run bookkeeping."""
        super().__init__(*args, **kwargs)
        self._run_started = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        #: This run's ``max_bad_records`` (0 when ``activity_rejects`` is not selected).
        self._max_bad_records = 0

    @override
    def log(self, message: str, *args: Any, level: int = logging.INFO, **kwargs: Any) -> None:
        """Log as singer-sdk does, but an error logged while a user error unwinds goes to DEBUG.

        singer-sdk logs "An unhandled error occurred" for every error leaving a stream's sync;
        a user error is handled: it ends the run with its own one-line message.
        """
        if level >= logging.ERROR and isinstance(sys.exc_info()[1], USER_ERRORS):
            level = logging.DEBUG
        super().log(message, *args, level=level, **kwargs)

    @override
    def get_replication_key_signpost(self, context: Context | None = None) -> None:
        """No signpost: the stream sets its bookmark itself, to each finished window's end."""
        return None

    def planned_range(self) -> SyncRange:
        """The run's start and end (warnings logged); raises ``StateError`` on a corrupt STATE."""
        planned = sync_range(self.stream_state, self.config, self._run_started)
        for warning in planned.warnings:
            self.logger.warning("%s", warning)
        return planned

    def pipeline(
        self, runner: ExportRunner, planned: SyncRange | None = None
    ) -> ExportPipeline | None:
        """The run's windows and their export jobs, or None when there is nothing to export."""
        planned = planned or self.planned_range()
        bookmark = self.stream_state.get("replication_key_value")
        if bookmark and self.config.get("start_date"):
            self.logger.info(
                "Resuming from the bookmark %s in the STATE; `start_date` %s is ignored (it "
                "applies to a run without a bookmark)", bookmark, self.config["start_date"],
            )
        if planned.start >= planned.end:
            self.logger.info(
                "Nothing to export: start %s is not before end %s", planned.start, planned.end
            )
            return None
        # A checkpoint of the first window (from a run stopped midway through it) is resumed.
        check = check_progress(self.stream_state.get("progress"), planned.start, planned.end)
        if check.note:
            self.logger.log(check.level, "%s", check.note)
        sizer = WindowSizer(
            export_window_span(self.config), integer(self.config, "target_events_per_window")
        )
        # A dry run stops after a few records: no job should be left running ahead of it.
        concurrent = 1 if self.ABORT_AT_RECORD_COUNT is not None else integer(
            self.config, "max_concurrent_exports"
        )
        return ExportPipeline(
            runner, planned, check.progress, sizer, max_concurrent=concurrent, logger=self.logger
        )

    def export_runner(self) -> ExportRunner:
        """An export runner with fresh clients (the caller closes them)."""
        runner = ExportRunner(
            self.config,
            connections.cordial_client(self.config, self.logger),
            export_store(self.config, self.logger),
            self.logger,
            checkpoint_records=self.CHECKPOINT_RECORDS,
        )
        if runner.max_bad_records and self.rejects_stream() is None:
            self.logger.warning(
                "`max_bad_records` is %d, but the `activity_rejects` stream is not selected: "
                "nothing can be set aside, so the first bad record fails the run",
                runner.max_bad_records,
            )
            runner.max_bad_records = 0
        self._max_bad_records = runner.max_bad_records
        return runner

    def rejects_stream(self) -> RejectsStream | None:
        """The tap's ``activity_rejects`` stream when it is selected."""
        stream = self.owning_tap.streams.get(RejectsStream.name)
        return stream if isinstance(stream, RejectsStream) and stream.selected else None

    def _write_rejects(self, window: Window) -> None:
        """Write the window's set-aside records (before the STATE that follows them)."""
        rejects, window.rejects = window.rejects, []
        stream = self.rejects_stream() if rejects else None
        for record in rejects:
            if stream is not None:
                stream.write_record(record)

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        """Every record of every window (the state is handled by :meth:`sync_all`)."""
        with closing(self.windows(self.planned_range(), write_messages=False)) as windows:
            for _window, records in windows:
                yield from (record for record in records if record is not None)

    def windows(
        self, planned: SyncRange, *, write_messages: bool
    ) -> Generator[tuple[Window, Iterator[dict[str, Any] | None]], None, None]:
        """Each window with its records (``None`` marks a checkpoint); the one run loop.

        Fresh clients, closed at the end; the export store (SFTP or S3) checked first. With
        ``write_messages`` the files a previous run read are deleted first, and each window's
        bookmark STATE follows once the caller took its records. Close this generator
        (``contextlib.closing``) so an error in the caller names the jobs ahead and closes the
        clients at once.
        """
        runner = self.export_runner()
        try:
            # Log in (and verify the host key, or list the bucket) before asking Cordial for
            # anything, so a bad SFTP or S3 setting fails without leaving export jobs behind.
            runner.store.connect()
            if write_messages:
                # Listed files leave the STATE whether or not they are deleted.
                read_files = self.stream_state.pop("read_files", None) or []
                read_exports = self.stream_state.pop("read_exports", None) or []
                if setting(self.config, "delete_exported_files"):
                    runner.delete_confirmed_files(self._read_file_paths(runner, read_files))
                    runner.delete_confirmed_files(self._read_export_paths(runner, read_exports))
            pipeline = self.pipeline(runner, planned)
            if pipeline is None:
                return
            rejects = self.rejects_stream() if write_messages and runner.max_bad_records else None
            if rejects is not None:
                rejects.write_schema_now()
            with pipeline:
                for window in pipeline.windows():
                    yield window, runner.window_records(window)
                    if write_messages:
                        self._finish_window(window, runner.store)
                        self._bound_pending_deletions(pipeline)
            self.logger.info(
                "%d export job(s) created in this run%s", runner.jobs_created,
                f"; {runner.rejected} bad record(s) set aside in `activity_rejects` "
                f"(`max_bad_records` {runner.max_bad_records})" if runner.max_bad_records else "",
            )
        finally:
            runner.store.close()
            runner.client.close()

    def fast_path_applies(self) -> bool:
        """True when records go out unchanged: no stream map, no flattening, all selected."""
        maps = self.stream_maps
        return (
            len(maps) == 1
            and type(maps[0]) is SameRecordTransform
            and not maps[0].flattening_enabled
            and maps[0].stream_alias == self.name
            and all(self.mask.values())
        )

    def _stop_at_limit(self, window: Window, limit: int) -> None:
        """End a dry run at its record limit, with the bad records set aside before it."""
        self._write_rejects(window)
        self.abort_at_limit(limit)

    def _checkpoint(self, window: Window) -> None:
        """Emit STATE with the unchanged bookmark plus how far into ``window`` the run got.

        Every record consumed before the checkpoint must already be written: a later run
        resuming from it skips that many records of the same export files.
        """
        self._write_rejects(window)
        self.stream_state["progress"] = progress_of(window)
        self.write_state_now()

    def _finish_window(self, window: Window, store: ExportStore) -> None:
        """Move the bookmark to the window's end, emit STATE, and account for the window."""
        self._write_rejects(window)
        state = self.stream_state
        state["replication_key"] = self.replication_key
        state["replication_key_value"] = to_rfc3339(window.end)
        state["boundary_ids"] = sorted(window.boundary_ids)
        state.pop("progress", None)
        if setting(self.config, "delete_exported_files") and window.files:
            folder = store.path("").rstrip("/")
            if len(window.files) > MAX_LISTED_FILES:
                # Many files (`limit_records_per_file`): their export's name, count and digest
                # keep the STATE small; the next run finds exactly them again by listing.
                exports = state.setdefault("read_exports", [])
                exports.append({"folder": folder, "export": window.export,
                                **file_set(window.files)})
            else:
                read = {*state.get("read_files", []), *(store.path(f) for f in window.files)}
                state["read_files"] = sorted(read)
        self.write_state_now()
        self._account(window)

    def _bound_pending_deletions(self, pipeline: ExportPipeline) -> None:
        """Stop planning windows once the STATE lists :attr:`MAX_PENDING_DELETIONS` deletions."""
        state = self.stream_state
        pending = len(state.get("read_files", ())) + len(state.get("read_exports", ()))
        if pending < self.MAX_PENDING_DELETIONS or pipeline.stopped:
            return
        pipeline.stop_planning()
        self.logger.info(
            "delete_exported_files: the STATE lists %d files/exports to delete (at most %d "
            "kept in one STATE): this run ends after the windows already started; the next run "
            "deletes them and goes on from its bookmark", pending, self.MAX_PENDING_DELETIONS,
        )

    def _read_file_paths(self, runner: ExportRunner, entries: Any) -> list[str]:
        """The ``read_files`` paths that name a file in the export folder; the rest are kept.

        The STATE comes from outside (a hand edit, another project's state): a path elsewhere,
        or anything that is not a path of the folder, deletes nothing and is named in a warning.
        """
        if not isinstance(entries, list):
            self.logger.warning("`read_files` in the STATE is not a list: no file deleted")
            return []
        folder = runner.store.path("")
        paths: list[str] = []
        for path in entries:
            if isinstance(path, str) and path.startswith(folder) and plain_name(
                path[len(folder):]
            ):
                paths.append(path)
            else:
                self.logger.warning(
                    "`read_files` in the STATE names %r, which is not a file of the export "
                    "folder %s: it is kept", path, runner.folder,
                )
        return paths

    def _read_export_paths(self, runner: ExportRunner, entries: Any) -> list[str]:
        """The paths of the files that ``read_exports`` entries name, each entry checked.

        An entry whose export's files in the folder are not exactly those read (another count
        or digest) deletes nothing: a warning names it.
        """
        paths: list[str] = []
        for entry in entries if isinstance(entries, list) else []:
            try:
                folder, export = str(entry["folder"]), str(entry["export"])
                wanted = {"count": entry["count"], "sha256": entry["sha256"]}
            except (KeyError, TypeError):
                self.logger.warning("A malformed `read_exports` entry in the STATE: kept its files")
                continue
            if folder != runner.store.path("").rstrip("/") or not export:
                self.logger.warning(
                    "The files of export %r (in %r) are kept: the export folder is now %s",
                    export, folder, runner.folder,
                )
                continue
            files = runner.export_files(export, {})
            if file_set(files) != wanted:
                self.logger.warning(
                    "The files of export %r are kept: %s holds %d of its files, not the %s "
                    "read", export, runner.folder, len(files), entry["count"],
                )
                continue
            paths.extend(runner.store.path(f) for f in files)
        return paths

    def _account(self, window: Window) -> None:
        """The window's reconciliation line, and the same counts as METRIC ``record_count``."""
        delivered = window.duplicates + window.replayed
        reported = "no count" if window.reported is None else str(window.reported)
        skipped = window.skipped_actions
        self.logger.info(
            "Window %s .. %s done (job %s): Cordial reported %s, read %d, emitted %d, skipped "
            "%d outside the window and %d already delivered; skipped %d of actions not "
            "selected%s%s", to_rfc3339(window.start), to_rfc3339(window.end),
            window.job_id or "-", reported, window.read, window.emitted, window.outside, delivered,
            skipped.total(),
            f" ({', '.join(f'{a} {n}' for a, n in sorted(skipped.items()))})" if skipped else "",
            f"; set aside {window.rejected} bad record(s) in `activity_rejects`"
            if window.rejected else "",
        )
        counts = {
            "cordial_reported": window.reported, "read": window.read, "emitted": window.emitted,
            "skipped_outside": window.outside, "skipped_delivered": delivered,
            "skipped_action": skipped.total(),
            # Only with a limit: at 0 the METRIC lines are as before the setting existed.
            "rejected": window.rejected if self._max_bad_records else None,
        }
        for count, value in counts.items():
            if value is None:
                continue
            with metrics.record_counter(
                self.name, window_start=to_rfc3339(window.start),
                window_end=to_rfc3339(window.end), job_id=window.job_id, count=count,
            ) as counter:
                counter.increment(value)

    def _forget_progress(self) -> None:
        """Emit STATE without ``progress`` (bookmark unchanged): the window is exported again."""
        if self.stream_state.pop("progress", None) is not None:
            self.write_state_now()

    def batch_files(self) -> BatchFileWriter | None:
        """The BATCH file writer when ``batch_config`` is set and records go out unchanged.

        BATCH files hold records as read: with a stream map, flattening or deselected
        properties, records go out as RECORD messages instead (a warning says so).
        """
        batch_config = self.windowed_batch_config()
        if batch_config is None:
            return None
        if not self.fast_path_applies():
            self.logger.warning(
                "`batch_config` is ignored: stream maps, flattening or deselected properties "
                "change the records, so they go out as RECORD messages"
            )
            return None
        tap_name = self.owning_tap.name
        return BatchFileWriter(batch_config, tap_name, self.name)

    def record_writer(
        self, *, write_messages: bool, counters: tuple[Any, Any]
    ) -> RecordWriter:
        """The writer of this run's records: BATCH files, orjson RECORD lines or singer-sdk.

        ``counters`` are the record and the batch counters.
        """
        if not write_messages:
            return SdkWriter(None, counters[0])
        files = self.batch_files()
        out = sys.stdout.buffer
        if files is not None:
            self.logger.info(
                "Record output: BATCH files (jsonl%s) in %s",
                ", gzip" if files.gzip else "", files.storage.root,
            )
            return BatchWriter(files, out, counters, self.mark_state_pending)
        if self.fast_path_applies():
            self.logger.info("Record output: orjson fast path")
            return FastWriter(self.name, out, counters[0], self.mark_state_pending)
        self.logger.info("Record output: singer-sdk")
        return SdkWriter(self.write_record, counters[0])

    @override
    def sync_all(self, *, write_messages: bool) -> Iterator[dict[str, Any]]:
        """Sync every window: records, then a STATE message with the window's end."""
        counter = self.get_record_counter()
        batch_counter = self.get_batch_counter()
        writer = self.record_writer(
            write_messages=write_messages, counters=(counter, batch_counter)
        )
        # A corrupt STATE is refused before any SFTP or Cordial call.
        planned = self.planned_range()
        total = 0
        with counter, batch_counter, self.get_sync_timer(), closing(
            self.windows(planned, write_messages=write_messages)
        ) as windows:
            for window, records in windows:
                checkpoint: Callable[[], None] = (
                    partial(self._checkpoint, window) if write_messages else _nothing
                )
                try:
                    total = yield from write_window(
                        writer, records, checkpoint=checkpoint, total=total,
                        limit=self.ABORT_AT_RECORD_COUNT,
                        stop_at_limit=partial(self._stop_at_limit, window),
                    )
                except BadRecordLimitError:
                    # The files are sound: the checkpoint stays, so a run with a higher
                    # `max_bad_records` resumes there instead of sending the window again.
                    raise
                except (ExportDataError, ExportCountError):
                    # The files are bad: a later run exports the window again rather than
                    # resuming from them.
                    if write_messages:
                        self._forget_progress()
                    raise


def _nothing() -> None:
    """No checkpoint: nothing is written."""
