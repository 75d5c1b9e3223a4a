"""ActivityStream: time windows -> one export job each -> files (SFTP, S3) -> records -> STATE."""

from __future__ import annotations

import datetime
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
from singer_sdk import metrics
from singer_sdk.mapper import SameRecordTransform
from typing_extensions import override

from tap_cordial_activity.batch_files import BatchFileWriter
from tap_cordial_activity.destinations import export_store
from tap_cordial_activity.errors import USER_ERRORS, ExportCountError, ExportDataError
from tap_cordial_activity.export import ExportRunner
from tap_cordial_activity.export_store import ExportStore
from tap_cordial_activity.pipeline import ExportPipeline
from tap_cordial_activity.schema import SCHEMA
from tap_cordial_activity.sdk_private import WindowedStream
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
    progress_of,
    sync_range,
)

if TYPE_CHECKING:
    from singer_sdk.helpers.types import Context

    from tap_cordial_activity.tap import TapCordialActivity

__all__ = ["SCHEMA", "ActivityStream"]

#: Records are written in batches of this many lines (fewer syscalls, bounded memory).
_WRITE_BATCH = 1000


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
        tap: TapCordialActivity = self.owning_tap  # type: ignore[assignment]
        return ExportRunner(
            self.config, tap.cordial_client(), export_store(self.config, self.logger), self.logger,
            checkpoint_records=self.CHECKPOINT_RECORDS,
        )

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        """Every record of every window (the state is handled by :meth:`sync_all`)."""
        runner = self.export_runner()
        try:
            pipeline = self.pipeline(runner)
            if pipeline is None:
                return
            with pipeline:
                for window in pipeline.windows():
                    for record in runner.window_records(window):
                        if record is not None:
                            yield record
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

    def _checkpoint(self, window: Window) -> None:
        """Emit STATE with the unchanged bookmark plus how far into ``window`` the run got.

        Every record consumed before the checkpoint must already be written: a later run
        resuming from it skips that many records of the same export files.
        """
        self.stream_state["progress"] = progress_of(window)
        self.write_state_now()

    def _finish_window(self, window: Window, store: ExportStore) -> None:
        """Move the bookmark to the window's end, emit STATE, and account for the window."""
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
            "selected%s", to_rfc3339(window.start), to_rfc3339(window.end), window.job_id or "-",
            reported, window.read, window.emitted, window.outside, delivered,
            skipped.total(),
            f" ({', '.join(f'{a} {n}' for a, n in sorted(skipped.items()))})" if skipped else "",
        )
        counts = {
            "cordial_reported": window.reported, "read": window.read, "emitted": window.emitted,
            "skipped_outside": window.outside, "skipped_delivered": delivered,
            "skipped_action": skipped.total(),
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

    def batch_writer(self) -> BatchFileWriter | None:
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

    @override
    def sync_all(self, *, write_messages: bool) -> Iterator[dict[str, Any]]:
        """Sync every window: records, then a STATE message with the window's end."""
        fast = write_messages and self.fast_path_applies()
        batches = self.batch_writer() if write_messages else None
        if batches is not None:
            self.logger.info(
                "Record output: BATCH files (jsonl%s) in %s",
                ", gzip" if batches.gzip else "", batches.storage.root,
            )
        elif write_messages:
            self.logger.info("Record output: %s", "orjson fast path" if fast else "singer-sdk")
        limit = self.ABORT_AT_RECORD_COUNT
        counter = self.get_record_counter()
        batch_counter = self.get_batch_counter()
        # A corrupt STATE is refused before any SFTP or Cordial call.
        planned = self.planned_range()
        runner = self.export_runner()
        total = 0
        with counter, batch_counter, self.get_sync_timer():
            try:
                # Log in (and verify the host key, or list the bucket) before asking Cordial for
                # anything, so a bad SFTP or S3 setting fails without leaving export jobs behind.
                runner.store.connect()
                if write_messages:
                    # Listed files leave the STATE whether or not they are deleted.
                    read_files = self.stream_state.pop("read_files", None) or []
                    read_exports = self.stream_state.pop("read_exports", None) or []
                    if setting(self.config, "delete_exported_files"):
                        runner.delete_confirmed_files(read_files)
                        runner.delete_confirmed_files(self._read_export_paths(runner, read_exports))
                pipeline = self.pipeline(runner, planned)
                if pipeline is None:
                    return
                with pipeline:
                    for window in pipeline.windows():
                        records = runner.window_records(window)
                        try:
                            if batches is not None:
                                total = self._write_batches(
                                    window, records, (counter, batch_counter), total, limit,
                                    batches,
                                )
                            elif fast:
                                total = self._write_fast(window, records, counter, total, limit)
                            else:
                                for record in records:
                                    if record is None:
                                        if write_messages:
                                            self._checkpoint(window)
                                        continue
                                    if limit is not None and total >= limit:
                                        self.abort_at_limit(limit)
                                    if write_messages:
                                        self.write_record(record)
                                    counter.increment()
                                    total += 1
                                    yield record
                        except (ExportDataError, ExportCountError):
                            # The files are bad: a later run exports the window again rather
                            # than resuming from them.
                            if write_messages:
                                self._forget_progress()
                            raise
                        if write_messages:
                            self._finish_window(window, runner.store)
                            self._bound_pending_deletions(pipeline)
                self.logger.info(
                    "%d export job(s) created in this run", runner.jobs_created
                )
            finally:
                runner.store.close()
                runner.client.close()

    def _write_fast(
        self,
        window: Window,
        records: Iterator[dict[str, Any] | None],
        counter: Any,
        total: int,
        limit: int | None,
    ) -> int:
        """Write RECORD lines straight to stdout's byte buffer; return the running total."""
        dumps = orjson.dumps
        now = datetime.datetime.now
        utc = datetime.UTC
        # msgspec (the SDK path's writer) spells UTC as Z; orjson needs this option to agree.
        utc_z = orjson.OPT_UTC_Z
        head = b'{"type":"RECORD","stream":' + dumps(self.name) + b',"record":'
        out = sys.stdout.buffer
        batch: list[bytes] = []

        def tail() -> bytes:
            """The extraction time, stamped once per batch rather than per record.

            The batch's records are read a few ms apart: the only way these lines differ
            from the SDK's.
            """
            return b',"time_extracted":' + dumps(now(utc), option=utc_z) + b"}\n"

        end = tail()
        # As in the SDK's record writer: records went out, so STATE is due again.
        self.mark_state_pending()
        for record in records:
            if record is None:
                # The checkpoint covers every record read so far: write them out first.
                counter.increment(len(batch))
                self._flush(out, batch)
                self._checkpoint(window)
                self.mark_state_pending()
                continue
            if limit is not None and total >= limit:
                self._flush(out, batch)
                self.abort_at_limit(limit)
            # Same JSON as RecordMessage.to_dict() through the msgspec writer.
            batch.append(head + dumps(record) + end)
            total += 1
            if len(batch) >= _WRITE_BATCH:
                self._flush(out, batch)
                counter.increment(_WRITE_BATCH)
                end = tail()
        counter.increment(len(batch))
        self._flush(out, batch)
        return total

    def _write_batches(
        self,
        window: Window,
        records: Iterator[dict[str, Any] | None],
        counters: tuple[Any, Any],
        total: int,
        limit: int | None,
        batches: BatchFileWriter,
    ) -> int:
        """Write records into BATCH files, each named by a BATCH message before the next STATE.

        ``counters`` are the record and the batch counters. Returns the running total.
        """
        dumps = orjson.dumps
        newline = orjson.OPT_APPEND_NEWLINE
        out = sys.stdout.buffer
        lines: list[bytes] = []
        take = min(_WRITE_BATCH, batches.room)
        for record in records:
            if record is None:
                # The checkpoint covers every record read so far: their file goes out first.
                self._send_batch(batches, lines, counters, out)
                self._checkpoint(window)
                take = min(_WRITE_BATCH, batches.room)
                continue
            if limit is not None and total >= limit:
                self._send_batch(batches, lines, counters, out)
                self.abort_at_limit(limit)
            lines.append(dumps(record, option=newline))
            total += 1
            if len(lines) >= take:
                counters[0].increment(len(lines))
                batches.add(lines)
                if batches.pending >= batches.batch_size:
                    self._send_batch(batches, lines, counters, out)
                take = min(_WRITE_BATCH, batches.room)
        self._send_batch(batches, lines, counters, out)
        return total

    def _send_batch(
        self, batches: BatchFileWriter, lines: list[bytes], counters: tuple[Any, Any], out: Any
    ) -> None:
        """Write the records collected so far as one file and its BATCH message."""
        counters[0].increment(len(lines))
        batches.add(lines)
        message = batches.write_file()
        if message is not None:
            out.write(message)
            out.flush()
            # As in the SDK's batch writer: records went out, so STATE is due again.
            self.mark_state_pending()
            counters[1].increment()

    @staticmethod
    def _flush(out: Any, batch: list[bytes]) -> None:
        """Write and clear ``batch``."""
        if batch:
            out.write(b"".join(batch))
            out.flush()
            batch.clear()
