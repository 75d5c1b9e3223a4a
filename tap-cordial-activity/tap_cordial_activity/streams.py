"""ActivityStream: time windows -> one Cordial export job each -> SFTP files -> records -> STATE."""

from __future__ import annotations

import datetime
import re
import secrets
import sys
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from singer_sdk import Stream
from singer_sdk.exceptions import MaxRecordsLimitException
from singer_sdk.mapper import SameRecordTransform

from tap_cordial_activity.client import CordialClient
from tap_cordial_activity.records import KNOWN_FIELDS, read_records
from tap_cordial_activity.sftp import SftpError, SftpReader

if TYPE_CHECKING:
    from singer_sdk.helpers.types import Context

_NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}
_NULLABLE_OBJECT: dict[str, Any] = {"type": ["object", "null"], "additionalProperties": True}
_NULLABLE_DATETIME: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}

#: Every documented field of a Cordial activity event; other top-level fields are kept as well.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "_id": {"type": "string"},
        "cID": _NULLABLE_STRING,
        "mcID": _NULLABLE_STRING,
        "bmID": _NULLABLE_STRING,
        "mdtID": _NULLABLE_STRING,
        "msID": _NULLABLE_STRING,
        "action": _NULLABLE_STRING,
        "time": {"type": "string", "format": "date-time"},
        "first": {"type": ["boolean", "null"]},
        "message_name": _NULLABLE_STRING,
        "message_sent": _NULLABLE_DATETIME,
        "email": _NULLABLE_STRING,
        "chnl": _NULLABLE_STRING,
        "chnl-type": _NULLABLE_STRING,
        "mTags": {"type": ["array", "null"], "items": {"type": "string"}},
        "name": _NULLABLE_STRING,
        "subject": _NULLABLE_STRING,
        "properties": _NULLABLE_OBJECT,
        "sp": _NULLABLE_OBJECT,
        "d": _NULLABLE_OBJECT,
    },
    "required": ["_id", "time"],
    # Cordial may add fields; they are emitted (and named once in a warning), never dropped.
    "additionalProperties": True,
}

#: Records are written in batches of this many lines (fewer syscalls, bounded memory).
_WRITE_BATCH = 1000
_SPLIT_INDEX = re.compile(r"-(\d+)\.")


def to_rfc3339(moment: datetime.datetime) -> str:
    """UTC RFC 3339 text, as kept in STATE (``2024-05-01T06:00:00+00:00``)."""
    return moment.astimezone(datetime.UTC).isoformat()


def to_cordial(moment: datetime.datetime) -> str:
    """The form Cordial's timeframe fields document (``2017-11-01T15:28:04.124Z``)."""
    utc = moment.astimezone(datetime.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_moment(value: str) -> datetime.datetime:
    """``yyyy-mm-dd`` (midnight UTC) or an ISO 8601 date-time; naive means UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


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


def export_name(now: datetime.datetime | None = None) -> str:
    """``singer-activity-{YYYYmmddHHMMSS}-{8 hex}``: letters, digits and dashes, unique."""
    moment = now or datetime.datetime.now(datetime.UTC)
    return f"singer-activity-{moment:%Y%m%d%H%M%S}-{secrets.token_hex(4)}"


def _file_order(export: str, file_name: str) -> tuple[int, str]:
    """Split files in their numeric order (``name-2`` before ``name-10``)."""
    match = _SPLIT_INDEX.match(file_name[len(export) :]) if file_name.startswith(export) else None
    return (int(match.group(1)) if match else 0, file_name)


class ActivityStream(Stream):
    """Cordial contact activity, exported in time windows and read from SFTP."""

    name = "activity"
    primary_keys = ("_id",)
    replication_key = "time"
    # Events inside one export are not in time order; the bookmark is the window end instead.
    is_sorted = False
    schema = SCHEMA
    #: Within a window, a STATE with ``progress`` follows about every this many records read
    #: (and each export file but the last), so a stopped run's successor resumes mid-window.
    CHECKPOINT_RECORDS = 20_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Set up the per-run bookkeeping."""
        super().__init__(*args, **kwargs)
        self._warned_fields: set[str] = set()
        self._run_started = datetime.datetime.now(datetime.UTC).replace(microsecond=0)

    # -- windows ---------------------------------------------------------------------------

    def get_replication_key_signpost(self, context: Context | None = None) -> None:
        """No signpost: the stream sets its bookmark itself, to each finished window's end."""
        return None

    def resumable_progress(self, start: datetime.datetime) -> dict[str, Any] | None:
        """The stream state's ``progress`` if it checkpoints a window beginning at ``start``."""
        progress = self.stream_state.get("progress")
        if not progress:
            return None
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
            self.logger.warning("Ignoring a malformed 'progress' in the stream state")
            return None
        if begins != start:
            self.logger.info(
                "Ignoring 'progress' of a window at %s: this run starts at %s",
                to_rfc3339(begins), to_rfc3339(start),
            )
            return None
        return dict(progress)

    def sync_range(self) -> tuple[datetime.datetime, datetime.datetime, frozenset[str]]:
        """Start (bookmark, else ``start_date``, else 7 days ago), end, and ids to skip."""
        state = self.stream_state
        bookmark = state.get("replication_key_value")
        if bookmark:
            start = parse_moment(str(bookmark))
            skip = frozenset(str(i) for i in state.get("boundary_ids") or ())
        elif self.config.get("start_date"):
            start, skip = parse_moment(self.config["start_date"]), frozenset()
        else:
            start, skip = self._run_started - datetime.timedelta(days=7), frozenset()
        end_setting = self.config.get("end_date")
        end = parse_moment(end_setting) if end_setting else self._run_started
        return start, end, skip

    def windows(self) -> Iterator[Window]:
        """Windows of at most ``export_window_hours`` from the start to the end, in time order."""
        start, end, skip = self.sync_range()
        span = datetime.timedelta(hours=float(self.config.get("export_window_hours", 24)))
        if start >= end:
            self.logger.info("Nothing to export: start %s is not before end %s", start, end)
            return
        # A checkpoint of the first window (from a run stopped midway through it) is resumed.
        progress = self.resumable_progress(start)
        while start < end:
            if progress is not None:
                window_end = parse_moment(str(progress["window_end"]))
                window = Window(start, window_end, skip, resume=progress)
                progress = None
            else:
                window = Window(start, min(start + span, end), skip)
            yield window
            start, skip = window.end, frozenset(window.boundary_ids)

    # -- one window ------------------------------------------------------------------------

    def export_body(self, name: str, window: Window) -> dict[str, Any]:
        """The ``contactactivityexport`` request for one window (holds a secret: never log it)."""
        config = self.config
        destination: dict[str, Any] = {
            "type": "sftp",
            "server": config["sftp_host"],
            "port": int(config.get("sftp_port", 22)),
            "username": config["sftp_username"],
            "path": config["sftp_path"],
        }
        # Clarification: a saved key wins over the password when both are set.
        if config.get("cordial_saved_key"):
            destination["savedKey"] = config["cordial_saved_key"]
        else:
            destination["password"] = config["sftp_password"]
        export_format = config.get("export_format", "json")
        body: dict[str, Any] = {
            "name": name,
            "exportType": export_format,
            "destination": destination,
            "selected_timeframe_start": to_cordial(window.start),
            "selected_timeframe_end": to_cordial(window.end),
            "selected_action_names": list(config.get("actions") or []),
            "compress": bool(config.get("compress", True)),
        }
        if export_format == "csv":
            body["showHeader"] = True
        if config.get("limit_records_per_file"):
            body["limitRecordsPerFile"] = int(config["limit_records_per_file"])
        return body

    def export_files(self, sftp: SftpReader, name: str, job: dict[str, Any]) -> list[str]:
        """The job's file names: those beginning with the export name, plus ``fileName``."""
        folder = self.config["sftp_path"]
        listed = {entry.filename for entry in sftp.list_files(folder)}
        files = {f for f in listed if f.startswith(name)}
        metadata = job.get("metadata")
        given = str(metadata.get("fileName") or "") if isinstance(metadata, dict) else ""
        given = given.strip()
        if given:
            given = given.rsplit("/", 1)[-1]
            if given not in listed:
                raise SftpError(
                    f"Cordial job {job.get('_id') or job.get('jobId')} names the file {given!r}, "
                    f"but it is not in SFTP folder {folder!r}"
                )
            files.add(given)
        return sorted(files, key=lambda f: _file_order(name, f))

    def resume_files(self, sftp: SftpReader, progress: dict[str, Any]) -> list[str] | None:
        """The checkpointed export's files, or None (with a warning) if one is gone."""
        folder = self.config["sftp_path"]
        listed = {entry.filename for entry in sftp.list_files(folder)}
        missing = [f for f in progress["files"] if f not in listed]
        if missing:
            self.logger.warning(
                "Cannot resume export %r: %s no longer in SFTP folder %r. Exporting the window "
                "%s .. %s again (events already delivered from it are sent again).",
                progress["export"], ", ".join(missing), folder, progress["window_start"],
                progress["window_end"],
            )
            return None
        return list(progress["files"])

    def window_records(
        self, window: Window, client: CordialClient, sftp: SftpReader
    ) -> Iterator[dict[str, Any] | None]:
        """Run the export job for ``window`` and yield its records that belong to it.

        A ``None`` among the records is a checkpoint: every record read so far has been
        yielded, and ``window.records_read`` says how many were consumed from the files.
        """
        config = self.config
        resume = window.resume
        files = self.resume_files(sftp, resume) if resume else None
        replay = 0
        if resume and files:
            name, job_id = str(resume["export"]), str(resume["job_id"])
            # The interrupted run emitted these; they are read again only for boundary_ids.
            replay = window.records_read = int(resume["records_read"])
            self.logger.info(
                "Resuming export %r (job %s) of %s .. %s after its first %d records",
                name, job_id, to_rfc3339(window.start), to_rfc3339(window.end), replay,
            )
        else:
            name = export_name()
            self.logger.info(
                "Exporting activity %s .. %s as %r", to_rfc3339(window.start),
                to_rfc3339(window.end), name,
            )
            body = self.export_body(name, window)
            job_id = client.create_export(body, export_name)
            name = body["name"]
            job = client.wait_for_job(
                job_id,
                poll_interval_seconds=float(config.get("poll_interval_seconds", 15)),
                timeout_seconds=float(config.get("job_timeout_seconds", 7200)),
            )
            job.setdefault("jobId", job_id)
            files = self.export_files(sftp, name, job)
        window.export, window.job_id, window.files = name, job_id, list(files or ())
        if not files:
            total = (job.get("result") or {}).get("totalRecords") if isinstance(
                job.get("result"), dict
            ) else None
            if total:
                raise SftpError(
                    f"Cordial job {job_id} is Done with {total} records, but no file beginning "
                    f"with {name!r} is in SFTP folder {config['sftp_path']!r}"
                )
            self.logger.info("Job %s wrote no file: the window has no events", job_id)
            return
        folder = str(config["sftp_path"]).rstrip("/")
        export_format = config.get("export_format", "json")
        start, end, skip_ids = window.start, window.end, window.skip_ids
        known, warned = KNOWN_FIELDS, self._warned_fields
        every, read = self.CHECKPOINT_RECORDS, 0
        last_file = files[-1]
        for file_name in files:
            began = time.monotonic()
            remote = sftp.open(f"{folder}/{file_name}")
            try:
                for record, moment, _line in read_records(remote, file_name, export_format):
                    read += 1
                    if moment < start or moment > end:
                        window.outside += 1
                        continue
                    if moment == start and record["_id"] in skip_ids:
                        window.duplicates += 1
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
            elapsed = max(time.monotonic() - began, 1e-9)
            self.logger.info(
                "Read %s: %d bytes in %.1fs (%.1f MB/s)%s", file_name, remote.offset, elapsed,
                remote.offset / elapsed / 1e6,
                f", {remote.reconnects} reconnects" if remote.reconnects else "",
            )
        if window.outside or window.duplicates:
            self.logger.info(
                "Window %s .. %s: %d events outside the window and %d already emitted at its "
                "start were skipped", to_rfc3339(start), to_rfc3339(end), window.outside,
                window.duplicates,
            )

    def delete_confirmed_files(self, sftp: SftpReader) -> None:
        """Delete the export files that the incoming STATE lists as read (``read_files``).

        A window's files are listed in the STATE that ends the window, and deleted only when a
        later run starts from that STATE: the orchestrator stores a target's STATE once the
        records before it were delivered, so a run that failed after reading the files can
        still resume from their checkpoints. A refused delete is a warning; either way the
        files leave the STATE.
        """
        listed = self.stream_state.pop("read_files", None) or []
        if not self.config.get("delete_exported_files"):
            return
        for path in listed:
            try:
                deleted = sftp.remove(str(path))
            except SftpError as exc:
                self.logger.warning("%s; the file is kept", exc)
                continue
            self.logger.info(
                "%s %s (delete_exported_files: its window was delivered)",
                "Deleted" if deleted else "Already gone:", path,
            )

    def _warn_unknown(self, names: Iterable[str]) -> None:
        new = sorted(set(names))
        if new:
            self._warned_fields.update(new)
            self.logger.warning(
                "Cordial sent top-level field(s) the schema does not describe: %s. They are "
                "emitted as they are (the schema allows extra fields).", ", ".join(new),
            )

    # -- sync ------------------------------------------------------------------------------

    def get_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        """Every record of every window (the state is handled by :meth:`_sync_records`)."""
        client, sftp = self._tap.cordial_client(), self._tap.sftp_reader()  # type: ignore[attr-defined]
        try:
            for window in self.windows():
                for record in self.window_records(window, client, sftp):
                    if record is not None:
                        yield record
        finally:
            sftp.close()
            client.close()

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
        self.stream_state["progress"] = {
            "export": window.export,
            "job_id": window.job_id,
            "window_start": to_rfc3339(window.start),
            "window_end": to_rfc3339(window.end),
            "files": list(window.files),
            "records_read": window.records_read,
        }
        self.state_manager.is_flushed = False
        self._write_state_message()

    def _finish_window(self, window: Window) -> None:
        """Move the bookmark to the window's end and emit STATE."""
        state = self.stream_state
        state["replication_key"] = self.replication_key
        state["replication_key_value"] = to_rfc3339(window.end)
        state["boundary_ids"] = sorted(window.boundary_ids)
        state.pop("progress", None)
        if self.config.get("delete_exported_files") and window.files:
            folder = str(self.config["sftp_path"]).rstrip("/")
            read = {*state.get("read_files", []), *(f"{folder}/{f}" for f in window.files)}
            state["read_files"] = sorted(read)
        self.logger.info(
            "Window %s .. %s done: %d records", to_rfc3339(window.start), to_rfc3339(window.end),
            window.emitted,
        )
        self.state_manager.is_flushed = False
        self._write_state_message()

    # Pinned to singer-sdk 0.54.x: this replaces Stream._sync_records (streams/core.py) so that
    # the bookmark moves once per finished export window, and so that RECORD lines are written with
    # orjson when nothing transforms them (see `fast_path_applies`). Anything else goes through the
    # SDK's own `_write_record_message`. tests/test_tap_fast_path.py checks both give the same
    # messages; re-check this method when upgrading singer-sdk.
    def _sync_records(
        self,
        context: Context | None = None,
        *,
        write_messages: bool = True,
    ) -> Generator[dict, Any, Any]:
        """Sync every window: records, then a STATE message with the window's end."""
        fast = write_messages and self.fast_path_applies()
        if write_messages:
            self.logger.info("Record output: %s", "orjson fast path" if fast else "singer-sdk")
        limit = self.ABORT_AT_RECORD_COUNT
        counter = self.get_record_counter()
        client, sftp = self._tap.cordial_client(), self._tap.sftp_reader()  # type: ignore[attr-defined]
        total = 0
        with counter, self.get_sync_timer():
            try:
                # Log in (and verify the host key) before asking Cordial for anything, so a bad
                # SFTP setting fails without leaving export jobs behind.
                sftp.connect()
                if write_messages:
                    self.delete_confirmed_files(sftp)
                for window in self.windows():
                    records = self.window_records(window, client, sftp)
                    if fast:
                        total = self._write_fast(window, records, counter, total, limit)
                    else:
                        for record in records:
                            if record is None:
                                if write_messages:
                                    self._checkpoint(window)
                                continue
                            if limit is not None and total >= limit:
                                self._abort_at_limit(limit)
                            if write_messages:
                                self._write_record_message(record)
                            counter.increment()
                            total += 1
                            yield record
                    if write_messages:
                        self._finish_window(window)
            finally:
                sftp.close()
                client.close()

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
            # The extraction time, stamped once per batch of _WRITE_BATCH records (a few ms
            # apart) rather than per record: the only way these lines differ from the SDK's.
            return b',"time_extracted":' + dumps(now(utc), option=utc_z) + b"}\n"

        end = tail()
        # As in the SDK's _write_record_message: records went out, so STATE is due again.
        self.state_manager.is_flushed = False
        for record in records:
            if record is None:
                # The checkpoint covers every record read so far: write them out first.
                counter.increment(len(batch))
                self._flush(out, batch)
                self._checkpoint(window)
                self.state_manager.is_flushed = False
                continue
            if limit is not None and total >= limit:
                self._flush(out, batch)
                self._abort_at_limit(limit)
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

    @staticmethod
    def _flush(out: Any, batch: list[bytes]) -> None:
        if batch:
            out.write(b"".join(batch))
            out.flush()
            batch.clear()

    def _abort_at_limit(self, limit: int) -> None:
        """Stop a dry run at its record limit, as singer-sdk's own loop does."""
        self._abort_sync(
            abort_reason=MaxRecordsLimitException(
                f"Stream prematurely aborted due to the stream's max dry run record limit ({limit})"
                " being reached."
            )
        )
