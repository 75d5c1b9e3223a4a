"""One window's export: the job request, its files (SFTP or S3), resuming, the window's records.

No singer-sdk here: the stream hands in the settings, the clients and a logger, and turns what
:meth:`ExportRunner.window_records` yields into messages. ``pipeline.ExportPipeline`` decides
which windows' jobs run ahead.
"""

from __future__ import annotations

import datetime
import logging
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tap_cordial_activity.client import CordialClient, reported_count
from tap_cordial_activity.destinations import destination_of
from tap_cordial_activity.errors import (
    BadRecordLimitError,
    CordialError,
    CutLineError,
    ExportCountError,
    ExportDataError,
    StoreError,
)
from tap_cordial_activity.export_store import ExportStore
from tap_cordial_activity.formats import FORMATS
from tap_cordial_activity.progress import ReadProgress
from tap_cordial_activity.records import BadRecord, read_records
from tap_cordial_activity.schema import KNOWN_FIELDS
from tap_cordial_activity.settings import integer, number, setting
from tap_cordial_activity.timeutil import to_cordial, to_rfc3339
from tap_cordial_activity.windows import Window, file_set

#: An ``activity_rejects`` record keeps at most this much of the bad line (``raw_truncated``).
MAX_RAW_BYTES = 64 << 10

_SPLIT_INDEX = re.compile(r"-(\d+)\.")

#: Cordial's reserved (non-custom) actions; any other action name is a custom event.
RESERVED_ACTIONS = frozenset(
    {"message-sent", "open", "click", "optout", "bounce", "complaint", "pageview",
     "message-stopped"}
)


@dataclass(frozen=True)
class ActionSelection:
    """Which actions the export asks Cordial for, and which records the tap keeps.

    ``SourceCAE_2.selected_action_names`` (Cordial v2 definitions) is "an array of message or
    custom events"; ``custom`` is documented only for the single ``selected_action_name``.
    Whether ``custom`` inside the array means every custom event is unconfirmed, so it is never
    sent there: with ``custom`` selected and no ``custom_actions``, the export goes without an
    action filter (``sent`` None) and the tap keeps the selected records itself.
    """

    #: Selected action names (``custom`` left out; ``custom_actions`` in).
    names: frozenset[str]
    #: Every custom event is selected.
    every_custom: bool
    #: ``selected_action_names`` to send, or None: no action filter.
    sent: list[str] | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ActionSelection:
        """From ``actions`` and ``custom_actions``."""
        actions = [str(a) for a in setting(config, "actions") or []]
        custom_names = [str(a) for a in config.get("custom_actions") or []]
        every_custom = "custom" in actions and not custom_names
        named = [a for a in actions if a != "custom"]
        named += [a for a in custom_names if a not in named]
        return cls(frozenset(named), every_custom, None if every_custom else named)

    def skips(self, action: Any) -> bool:
        """Whether a record of ``action`` was not selected."""
        if self.every_custom:
            return action in RESERVED_ACTIONS and action not in self.names
        return action not in self.names

    def unselected_reserved(self) -> list[str]:
        """Reserved actions that an unfiltered export carries and the tap leaves out."""
        return sorted(RESERVED_ACTIONS - self.names)


def export_name(now: datetime.datetime | None = None) -> str:
    """``singer-activity-{YYYYmmddHHMMSS}-{8 hex}``: letters, digits and dashes, unique."""
    moment = now or datetime.datetime.now(datetime.UTC)
    return f"singer-activity-{moment:%Y%m%d%H%M%S}-{secrets.token_hex(4)}"


def file_order(export: str, file_name: str) -> tuple[int, str]:
    """Sort key: split files in their numeric order (``name-2`` before ``name-10``)."""
    match = _SPLIT_INDEX.match(file_name[len(export) :]) if file_name.startswith(export) else None
    return (int(match.group(1)) if match else 0, file_name)


def export_body(config: Mapping[str, Any], name: str, window: Window) -> dict[str, Any]:
    """The ``contactactivityexport`` request for one window (holds a secret: never log it)."""
    destination = destination_of(config).body(config)
    export_format = setting(config, "export_format")
    body: dict[str, Any] = {
        "name": name,
        "exportType": export_format,
        "destination": destination,
        "selected_timeframe_start": to_cordial(window.start),
        "selected_timeframe_end": to_cordial(window.end),
        "compress": bool(setting(config, "compress")),
    }
    sent = ActionSelection.from_config(config).sent
    if sent is not None:
        body["selected_action_names"] = sent
    body.update(FORMATS[export_format].request_extras)
    limit = integer(config, "limit_records_per_file")
    if limit:
        body["limitRecordsPerFile"] = limit
    return body


def metadata_file_name(job: Mapping[str, Any]) -> str:
    """The bare file name a job's metadata gives (``fileName`` or ``filename``), or ""."""
    metadata = job.get("metadata")
    if not isinstance(metadata, Mapping):
        return ""
    for key in ("fileName", "filename"):
        value = metadata.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip().rsplit("/", 1)[-1]
    return ""


def job_label(job: Mapping[str, Any]) -> str:
    """The job's id as messages name it."""
    return str(job.get("_id") or job.get("jobId") or "?")


class ResumeContradictedError(Exception):
    """A resumed checkpoint claims more records than its export's files hold."""


class ExportRunner:
    """Creates each window's export job, waits for it, and reads the window's records.

    The files are listed, read and deleted through an
    :class:`~tap_cordial_activity.export_store.ExportStore` (SFTP, S3).

    Before a window is passed on, the records read from its files are compared with the count
    Cordial reports for the job (reconciliation).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        client: CordialClient,
        store: ExportStore,
        logger: logging.Logger,
        *,
        checkpoint_records: int,
    ) -> None:
        """Use these settings, clients and logger; checkpoint about every that many records."""
        self.config = config
        self.client = client
        self.store = store
        self.logger = logger
        self.checkpoint_records = checkpoint_records
        #: Where the files are, as messages name it (``SFTP folder '/upload'``).
        self.folder = store.location
        self.poll_interval = number(config, "poll_interval_seconds")
        self.job_timeout = number(config, "job_timeout_seconds")
        self.progress_interval = number(config, "progress_interval_seconds")
        self.short_wait = number(config, "short_export_wait_seconds")
        self.count_mismatch = str(setting(config, "count_mismatch"))
        self.actions = ActionSelection.from_config(config)
        if self.actions.sent is None:
            logger.info(
                "`actions` selects `custom` (every custom event): exports are requested without "
                "an action filter, so they also carry %s; the tap leaves those out and counts "
                "them as skipped. Name your custom events in `custom_actions` to have Cordial "
                "export only the selected ones.",
                ", ".join(self.actions.unselected_reserved()) or "no other action",
            )
        #: Export jobs this runner created.
        self.jobs_created = 0
        #: ``max_bad_records``: bad records this run may set aside (the stream sets 0 when
        #: ``activity_rejects`` is not selected); :attr:`rejected` counts them.
        self.max_bad_records = integer(config, "max_bad_records")
        self.rejected = 0
        #: Size of each export file at its last listing.
        self.sizes: dict[str, int] = {}
        self._warned_fields: set[str] = set()
        self._warned_names: set[tuple[str, str]] = set()

    def _listing(self) -> set[str]:
        """The folder's file names, noting their sizes."""
        entries = self.store.list_files()
        self.sizes.update(entries)
        return set(entries)

    def export_files(self, name: str, job: Mapping[str, Any]) -> list[str]:
        """The job's file names: those beginning with the export name, plus the one it names.

        ``JobMetadataJ`` (Cordial v2 definitions, ``GET /v2/jobs/{id}``) has both ``fileName``
        and ``filename``; either may be a bare name or a path, and may lack the ``.gz`` that
        ``compress`` adds. A named file that is not listed is a warning when files of the
        export are listed (they are read), and fails only when none is.
        """
        listed = self._listing()
        files = {f for f in listed if f.startswith(name)}
        given = metadata_file_name(job)
        if given:
            found = next((c for c in (given, f"{given}.gz") if c in listed), None)
            if found is not None:
                files.add(found)
            elif files:
                if (name, given) not in self._warned_names:
                    self._warned_names.add((name, given))
                    self.logger.warning(
                        "Cordial job %s names the file %r, which is not in %s; "
                        "reading the export's files found by its name instead: %s",
                        job_label(job), given, self.folder, ", ".join(sorted(files)),
                    )
            else:
                raise self.store.error(
                    f"Cordial job {job_label(job)} names the file {given!r}, but neither it nor "
                    f"any file beginning with {name!r} is in {self.folder}"
                )
        return sorted(files, key=lambda f: file_order(name, f))

    def resume_files(self, progress: Mapping[str, Any]) -> list[str] | None:
        """The checkpointed export's files, or None (with a warning) if one is gone.

        A long file list is kept in the STATE as a count and digest (``file_set``): the
        export's files in the folder must match it.
        """
        if "files" not in progress:
            files = self.export_files(str(progress["export"]), {})
            if file_set(files) == progress["file_set"]:
                return files
            problem = (
                f"its {progress['file_set'].get('count')} files are not those in "
                f"{self.folder} ({len(files)} beginning with the export's name)"
            )
        else:
            listed = self._listing()
            missing = [f for f in progress["files"] if f not in listed]
            if not missing:
                return list(progress["files"])
            problem = f"{', '.join(missing)} no longer in {self.folder}"
        self.logger.warning(
            "Cannot resume export %r: %s. Exporting the window %s .. %s again (events already "
            "delivered from it are sent again).", progress["export"], problem,
            progress["window_start"], progress["window_end"],
        )
        return None

    def start_export(self, window: Window) -> None:
        """Create the window's export job (``window.export`` and ``window.job_id``)."""
        name = export_name()
        self.logger.info(
            "Exporting activity %s .. %s as %r", to_rfc3339(window.start),
            to_rfc3339(window.end), name,
        )
        body = export_body(self.config, name, window)
        window.job_id = self.client.create_export(body, export_name)
        self.jobs_created += 1
        window.export, window.job = body["name"], None

    def job_done(self, window: Window, job: dict[str, Any]) -> None:
        """Note the window's Done job and the record count Cordial reports for it."""
        job.setdefault("jobId", window.job_id)
        window.job, window.reported = job, reported_count(job)

    def window_records(self, window: Window) -> Iterator[dict[str, Any] | None]:
        """Yield the records of ``window``'s export (waiting for its job if needed).

        A ``None`` among the records is a checkpoint: every record read so far has been
        yielded, and ``window.records_read`` says how many were consumed from the files.
        Raises :class:`ExportCountError` when the files hold fewer records than reported.
        """
        resume = window.resume
        files = self.resume_files(resume) if resume else None
        replay = 0
        if resume and files:
            window.export, window.job_id = str(resume["export"]), str(resume["job_id"])
            # The interrupted run emitted these; they are read again only for boundary_ids.
            replay = window.records_read = int(resume["records_read"])
            self.logger.info(
                "Resuming export %r (job %s) of %s .. %s after its first %d records",
                window.export, window.job_id, to_rfc3339(window.start), to_rfc3339(window.end),
                replay,
            )
            self._resumed_count(window)
        else:
            if resume or not window.job_id:
                self.start_export(window)
            if window.job is None:
                self.job_done(window, self.client.wait_for_job(
                    window.job_id, poll_interval_seconds=self.poll_interval,
                    timeout_seconds=self.job_timeout,
                ))
            files = self.export_files(window.export, window.job or {})
        window.files = list(files)
        if not files:
            if window.reported:
                raise self.store.error(
                    f"Cordial job {window.job_id} is Done with {window.reported} records, "
                    f"but no file beginning with {window.export!r} is in {self.folder}"
                )
            self.logger.info("Job %s wrote no file: the window has no events", window.job_id)
            return
        try:
            yield from self._reconciled_records(window, replay)
        except ResumeContradictedError:
            # Nothing was emitted yet (every record read was within the claimed count).
            self.logger.warning(
                "The STATE's checkpoint of export %r claims %d records read, but its file(s) "
                "hold %d: exporting the window %s .. %s again", window.export, replay,
                window.read, to_rfc3339(window.start), to_rfc3339(window.end),
            )
            window.resume, window.job_id, window.job, window.reported = None, "", None, None
            window.boundary_ids.clear()
            window.records_read = window.read = window.outside = window.duplicates = 0
            self.rejected -= window.rejected
            window.rejected, window.rejects = 0, []
            yield from self.window_records(window)
            return
        window.replayed = min(replay, window.read)

    def _resumed_count(self, window: Window) -> None:
        """Ask Cordial again for the count of a resumed export's job."""
        try:
            job = self.client.get_job(window.job_id)
        except CordialError as exc:
            self.logger.info("Cannot get the record count of job %s again: %s", window.job_id, exc)
            return
        if job.get("status") == "Done":
            self.job_done(window, job)

    def _reconciled_records(self, window: Window, replay: int) -> Iterator[dict[str, Any] | None]:
        """The window's records, read again once when the files fall short of the count."""
        problem: ExportDataError | None = None
        try:
            yield from self._read_files(window, window.files, replay)
        except BadRecordLimitError:
            raise
        except ExportDataError as exc:
            if window.reported is None or window.read >= window.reported:
                raise
            problem = exc
        if window.resume is not None and window.read < replay:
            raise ResumeContradictedError
        if window.reported is not None and window.read < window.reported:
            read_sizes = {f: self.sizes.get(f) for f in window.files}
            self.logger.warning(
                "Cordial job %s reported %d records, its files hold %d%s; waiting for them to "
                "be complete", window.job_id, window.reported, window.read,
                f" ({problem})" if problem else "",
            )
            files = self._settled_files(window)
            if files != window.files or any(self.sizes.get(f) != read_sizes[f] for f in files):
                window.files, problem = files, None
                try:
                    yield from self._read_files(window, files, window.read)
                except BadRecordLimitError:
                    raise
                except ExportDataError as exc:
                    problem = exc
            elif self.max_bad_records and self._is_last_line_of_the_export(window, problem):
                # The files hold still and one record is missing: Cordial wrote that last line
                # so, without its newline. A bad record, not a cut file: set aside (or fail,
                # naming `max_bad_records`) instead of failing every run for good.
                assert isinstance(problem, CutLineError)
                self._set_aside(
                    window, problem.file_name, problem.line or 0,
                    BadRecord(problem.problem, problem.raw),
                )
                window.read += 1
                problem = None
        self._reconcile(window, problem)

    @staticmethod
    def _is_last_line_of_the_export(window: Window, problem: ExportDataError | None) -> bool:
        """Whether ``problem`` is the unterminated last line of the last file, the one missing."""
        return (
            isinstance(problem, CutLineError)
            and problem.file_name == window.files[-1]
            and window.reported == window.read + 1
        )

    def _cut_line_hint(self, window: Window, problem: ExportDataError | None) -> str:
        """With ``max_bad_records`` 0, how a last line Cordial wrote so can be set aside."""
        if self.max_bad_records or not self._is_last_line_of_the_export(window, problem):
            return ""
        return (
            " If the file is complete and Cordial wrote its last line so, set `max_bad_records`"
            " to set that line aside in `activity_rejects`."
        )

    def _settled_files(self, window: Window) -> list[str]:
        """Wait briefly, then list until the export's files have the same sizes twice running."""
        time.sleep(self.short_wait)
        previous: dict[str, int | None] | None = None
        for _ in range(10):
            files = self.export_files(window.export, window.job or {})
            sizes = {f: self.sizes.get(f) for f in files}
            if sizes == previous:
                break
            previous = sizes
            time.sleep(self.poll_interval)
        return files

    def _reconcile(self, window: Window, problem: ExportDataError | None) -> None:
        """Compare the records read with Cordial's count: fail, warn, or note."""
        reported, read, job = window.reported, window.read, window.job_id
        span = f"{to_rfc3339(window.start)} .. {to_rfc3339(window.end)}"
        if reported is None:
            self.logger.warning(
                "Window %s could not be reconciled: Cordial reported no record count for job %s",
                span, job,
            )
            return
        if read > reported:
            self.logger.warning(
                "Cordial job %s reported %d records for %s, but its files hold %d: all were read",
                job, reported, span, read,
            )
        if read >= reported:
            return
        message = (
            f"Cordial job {job} reported {reported} records for {span}, but its file(s) "
            f"{', '.join(window.files)} hold {read}"
            + (f" ({problem})" if problem else "")
        )
        if problem is None and self.count_mismatch == "warn":
            self.logger.warning("%s; going on (`count_mismatch`: warn)", message)
            return
        raise ExportCountError(
            f"{message}. The window fails: no STATE moves past it, and the next run exports it "
            f"again.{self._cut_line_hint(window, problem)}"
        )

    def _read_files(
        self, window: Window, files: list[str], replay: int
    ) -> Iterator[dict[str, Any] | None]:
        """The records of ``files`` inside ``window``, with checkpoints; skips ``replay``.

        Counts every record read in ``window.read``; skipped ones count only past ``replay``.
        """
        export_format = setting(self.config, "export_format")
        start, end, skip_ids = window.start, window.end, window.skip_ids
        known, warned, skips = KNOWN_FIELDS, self._warned_fields, self.actions.skips
        every, read = self.checkpoint_records, 0
        last_file = files[-1]
        progress = ReadProgress(
            self.logger, self.progress_interval, window,
            sum(self.sizes.get(f, 0) for f in files),
        )
        try:
            for file_name in files:
                began = time.monotonic()
                remote = self.store.open(file_name)
                progress.file = remote
                try:
                    for parsed, moment, line in read_records(
                        remote, file_name, export_format, bad_records=True
                    ):
                        read += 1
                        if not read & 1023:
                            progress.maybe_log(read)
                        if moment < start or moment > end:
                            # A bad record's moment is before every window (BAD_MOMENT).
                            if isinstance(parsed, BadRecord):
                                # Set aside (counted as read), unless a resumed run did already.
                                if read > replay:
                                    # Not read if it fails the run: a re-read meets it again.
                                    read -= 1
                                    self._set_aside(window, file_name, line, parsed)
                                    read += 1
                                continue
                            window.outside += read > replay
                            continue
                        record: dict[str, Any] = parsed  # type: ignore[assignment]
                        if skips(record.get("action")):
                            if read > replay:
                                window.skipped_actions[str(record.get("action"))] += 1
                            continue
                        if moment == start and record["_id"] in skip_ids:
                            window.duplicates += read > replay
                            continue
                        if moment == end:
                            window.boundary_ids.add(record["_id"])
                        if read <= replay:
                            continue
                        if not known.issuperset(record):
                            self._warn_unknown(record.keys() - known - warned)
                        window.emitted += 1
                        yield record
                        if read - window.records_read >= every:
                            window.records_read = read
                            yield None
                    # A file boundary is a natural checkpoint (the last file's is the window's end).
                    if file_name != last_file and read > window.records_read:
                        window.records_read = read
                        yield None
                finally:
                    remote.close()
                progress.file_done(remote)
                elapsed = max(time.monotonic() - began, 1e-9)
                self.logger.info(
                    "Read %s: %d bytes in %.1fs (%.1f MB/s)%s", file_name, remote.offset,
                    elapsed, remote.offset / elapsed / 1e6,
                    f", {remote.reconnects} reconnects" if remote.reconnects else "",
                )
        finally:
            window.read = read

    def _set_aside(self, window: Window, file_name: str, line: int, bad: BadRecord) -> None:
        """Note a bad record for ``activity_rejects``; raise when ``max_bad_records`` is reached.

        With ``max_bad_records`` 0 the :class:`ExportDataError` is raised as before the setting
        existed (the caller does not count the line as read, so a re-read meets it again).
        """
        limit = self.max_bad_records
        if limit == 0:
            raise ExportDataError(
                file_name, line, f"{bad.problem} (`max_bad_records` is 0: a bad record fails "
                "the run; set it to N to set up to N bad records per run aside in the "
                "`activity_rejects` stream)",
            )
        if self.rejected >= limit:
            raise BadRecordLimitError(
                file_name, line, f"{bad.problem}. That is bad record {self.rejected + 1} of this "
                f"run, over `max_bad_records` ({limit}): the run fails and no STATE moves past "
                f"the window {to_rfc3339(window.start)} .. {to_rfc3339(window.end)}",
            )
        self.rejected += 1
        window.rejected += 1
        raw: bytes = bad.raw.rstrip(b"\r\n")
        window.rejects.append({
            "export_name": window.export, "file": file_name, "line": line,
            "error": bad.problem, "raw": raw[:MAX_RAW_BYTES].decode("utf-8", errors="replace"),
            "raw_bytes": len(raw), "raw_truncated": len(raw) > MAX_RAW_BYTES,
            "job_id": window.job_id, "window_start": to_rfc3339(window.start),
            "window_end": to_rfc3339(window.end),
            "rejected_at": to_rfc3339(datetime.datetime.now(datetime.UTC).replace(microsecond=0)),
        })
        self.logger.warning(
            "Set aside a bad record (%d of at most %d this run, `max_bad_records`) in "
            "`activity_rejects`: %s line %d: %s", self.rejected, limit, file_name, line,
            bad.problem,
        )

    def delete_confirmed_files(
        self, read_files: Iterable[Any], reason: str = "its window was delivered"
    ) -> None:
        """Delete the export files that the incoming STATE lists as read (``read_files``).

        A window's files are listed in the STATE that ends the window, and deleted only when a
        later run starts from that STATE: the orchestrator stores a target's STATE once the
        records before it were delivered, so a run that failed after reading the files can
        still resume from their checkpoints. A refused delete is a warning.
        """
        for path in read_files:
            try:
                deleted = self.store.remove(str(path))
            except StoreError as exc:
                self.logger.warning("%s; the file is kept", exc)
                continue
            self.logger.info(
                "%s %s (delete_exported_files: %s)",
                "Deleted" if deleted else "Already gone:", path, reason,
            )

    def _warn_unknown(self, names: Iterable[str]) -> None:
        """Name, once per run, top-level fields the schema does not describe."""
        new = sorted(set(names))
        if new:
            self._warned_fields.update(new)
            self.logger.warning(
                "Cordial sent top-level field(s) the schema does not describe: %s. They are "
                "emitted as they are (the schema allows extra fields).", ", ".join(new),
            )

