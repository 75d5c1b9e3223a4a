"""One window's export: the job request, its files on SFTP, resuming, and the window's records.

No singer-sdk here: the stream hands in the settings, the clients and a logger, and turns what
:meth:`ExportRunner.window_records` yields into messages.
"""

from __future__ import annotations

import datetime
import logging
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from tap_cordial_activity.client import CordialClient
from tap_cordial_activity.errors import SftpError
from tap_cordial_activity.records import read_records
from tap_cordial_activity.schema import KNOWN_FIELDS
from tap_cordial_activity.settings import integer, number, setting
from tap_cordial_activity.sftp import SftpReader
from tap_cordial_activity.timeutil import to_cordial, to_rfc3339
from tap_cordial_activity.windows import Window

_SPLIT_INDEX = re.compile(r"-(\d+)\.")


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
    destination: dict[str, Any] = {
        "type": "sftp",
        "server": config["sftp_host"],
        "port": integer(config, "sftp_port"),
        "username": config["sftp_username"],
        "path": config["sftp_path"],
    }
    # Clarification: a saved key wins over the password when both are set.
    if config.get("cordial_saved_key"):
        destination["savedKey"] = config["cordial_saved_key"]
    else:
        destination["password"] = config["sftp_password"]
    export_format = setting(config, "export_format")
    body: dict[str, Any] = {
        "name": name,
        "exportType": export_format,
        "destination": destination,
        "selected_timeframe_start": to_cordial(window.start),
        "selected_timeframe_end": to_cordial(window.end),
        "selected_action_names": list(setting(config, "actions") or []),
        "compress": bool(setting(config, "compress")),
    }
    if export_format == "csv":
        body["showHeader"] = True
    limit = integer(config, "limit_records_per_file")
    if limit:
        body["limitRecordsPerFile"] = limit
    return body


class ExportRunner:
    """Runs (or resumes) each window's export job and reads the window's records from SFTP."""

    def __init__(
        self,
        config: Mapping[str, Any],
        client: CordialClient,
        sftp: SftpReader,
        logger: logging.Logger,
        *,
        checkpoint_records: int,
    ) -> None:
        """Use these settings, clients and logger; checkpoint about every that many records."""
        self.config = config
        self.client = client
        self.sftp = sftp
        self.logger = logger
        self.checkpoint_records = checkpoint_records
        self.folder = str(config["sftp_path"])
        self._warned_fields: set[str] = set()

    def export_files(self, name: str, job: Mapping[str, Any]) -> list[str]:
        """The job's file names: those beginning with the export name, plus ``fileName``."""
        listed = {entry.filename for entry in self.sftp.list_files(self.folder)}
        files = {f for f in listed if f.startswith(name)}
        metadata = job.get("metadata")
        given = str(metadata.get("fileName") or "") if isinstance(metadata, dict) else ""
        given = given.strip()
        if given:
            given = given.rsplit("/", 1)[-1]
            if given not in listed:
                raise SftpError(
                    f"Cordial job {job.get('_id') or job.get('jobId')} names the file {given!r}, "
                    f"but it is not in SFTP folder {self.folder!r}"
                )
            files.add(given)
        return sorted(files, key=lambda f: file_order(name, f))

    def resume_files(self, progress: Mapping[str, Any]) -> list[str] | None:
        """The checkpointed export's files, or None (with a warning) if one is gone."""
        listed = {entry.filename for entry in self.sftp.list_files(self.folder)}
        missing = [f for f in progress["files"] if f not in listed]
        if missing:
            self.logger.warning(
                "Cannot resume export %r: %s no longer in SFTP folder %r. Exporting the window "
                "%s .. %s again (events already delivered from it are sent again).",
                progress["export"], ", ".join(missing), self.folder, progress["window_start"],
                progress["window_end"],
            )
            return None
        return list(progress["files"])

    def _run_export(self, window: Window) -> tuple[str, str, list[str], Any]:
        """Create the window's export job, wait for it; its name, id, files and record count."""
        name = export_name()
        self.logger.info(
            "Exporting activity %s .. %s as %r", to_rfc3339(window.start),
            to_rfc3339(window.end), name,
        )
        body = export_body(self.config, name, window)
        job_id = self.client.create_export(body, export_name)
        name = body["name"]
        job = self.client.wait_for_job(
            job_id,
            poll_interval_seconds=number(self.config, "poll_interval_seconds"),
            timeout_seconds=number(self.config, "job_timeout_seconds"),
        )
        job.setdefault("jobId", job_id)
        result = job.get("result")
        total = result.get("totalRecords") if isinstance(result, dict) else None
        return name, job_id, self.export_files(name, job), total

    def window_records(self, window: Window) -> Iterator[dict[str, Any] | None]:
        """Run the export job for ``window`` and yield its records that belong to it.

        A ``None`` among the records is a checkpoint: every record read so far has been
        yielded, and ``window.records_read`` says how many were consumed from the files.
        """
        resume = window.resume
        files = self.resume_files(resume) if resume else None
        replay = 0
        total = None
        if resume and files:
            name, job_id = str(resume["export"]), str(resume["job_id"])
            # The interrupted run emitted these; they are read again only for boundary_ids.
            replay = window.records_read = int(resume["records_read"])
            self.logger.info(
                "Resuming export %r (job %s) of %s .. %s after its first %d records",
                name, job_id, to_rfc3339(window.start), to_rfc3339(window.end), replay,
            )
        else:
            name, job_id, files, total = self._run_export(window)
        window.export, window.job_id, window.files = name, job_id, list(files)
        if not files:
            if total:
                raise SftpError(
                    f"Cordial job {job_id} is Done with {total} records, but no file beginning "
                    f"with {name!r} is in SFTP folder {self.folder!r}"
                )
            self.logger.info("Job %s wrote no file: the window has no events", job_id)
            return
        yield from self._read_files(window, files, replay)

    def _read_files(
        self, window: Window, files: list[str], replay: int
    ) -> Iterator[dict[str, Any] | None]:
        """The records of ``files`` inside ``window``, with checkpoints; skips ``replay``."""
        folder = self.folder.rstrip("/")
        export_format = setting(self.config, "export_format")
        start, end, skip_ids = window.start, window.end, window.skip_ids
        known, warned = KNOWN_FIELDS, self._warned_fields
        every, read = self.checkpoint_records, 0
        last_file = files[-1]
        for file_name in files:
            began = time.monotonic()
            remote = self.sftp.open(f"{folder}/{file_name}")
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

    def delete_confirmed_files(self, read_files: Iterable[Any]) -> None:
        """Delete the export files that the incoming STATE lists as read (``read_files``).

        A window's files are listed in the STATE that ends the window, and deleted only when a
        later run starts from that STATE: the orchestrator stores a target's STATE once the
        records before it were delivered, so a run that failed after reading the files can
        still resume from their checkpoints. A refused delete is a warning.
        """
        for path in read_files:
            try:
                deleted = self.sftp.remove(str(path))
            except SftpError as exc:
                self.logger.warning("%s; the file is kept", exc)
                continue
            self.logger.info(
                "%s %s (delete_exported_files: its window was delivered)",
                "Deleted" if deleted else "Already gone:", path,
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
