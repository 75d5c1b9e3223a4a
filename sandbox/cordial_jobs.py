"""The Cordial stand-in's export jobs: behaviour options, the job, and the running-job limit.

A job is admitted to run at once, or waits (``Throttled``) while ``max_running_jobs`` others run.
Once admitted it works for ``job_base_seconds + job_seconds_per_event * totalItems`` seconds, then
its files are written; it reports ``Done`` once they are (and once its status polls are used up).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: The savedKey names the stand-in accepts when it checks destinations against an SFTP server.
DEFAULT_SAVED_KEY = "sandbox-sftp-key"

#: Options that hold a number of seconds or a count, which may not be negative.
_NON_NEGATIVE = frozenset(
    {
        "pending_polls",
        "processing_polls",
        "write_delay_seconds",
        "job_base_seconds",
        "job_seconds_per_event",
        "max_running_jobs",
        "create_rate_limit",
        "create_rate_window_seconds",
        "drop_last_events",
        "grow_after_done_seconds",
    }
)
#: Options that take one of a few words: where the published definitions leave room.
_CHOICES: dict[str, tuple[Any, ...]] = {
    "custom_in_action_names": ("wildcard", "literal"),
    "file_name_key": ("fileName", "filename", "both"),
}


@dataclass
class CordialOptions:
    """Behaviour switches; a job takes a copy when it is created.

    ``max_running_jobs``, ``create_rate_limit`` and ``create_rate_window_seconds`` are the
    account's: they are read live, not from a job's copy.
    """

    pending_polls: int = 1
    processing_polls: int = 1
    fail_jobs: bool = False
    never_finish: bool = False
    json_array: bool = False
    omit_file_name: bool = False
    #: What ``custom`` inside ``selected_action_names`` means (the definitions document it only
    #: for ``selected_action_name``): "wildcard" = every custom event, "literal" = an event named
    #: ``custom`` (so it selects no custom event unless one has that name).
    custom_in_action_names: str = "wildcard"
    #: Which ``JobMetadataJ`` key names the first file (the definition has both): "fileName",
    #: "filename" or "both".
    file_name_key: str = "fileName"
    #: The metadata names the file by its path (``destination.path`` + "/" + name), not bare.
    file_name_path: bool = False
    #: The metadata names the file without the ``.gz`` that ``compress`` appended.
    file_name_without_gz: bool = False
    #: The metadata names this file instead (one that is not written), when set.
    metadata_file_name: str | None = None
    #: ``GET /v2/health`` exists (no ``/health`` is in the published v2 definitions: False answers
    #: it 404 like any unknown route).
    health_route: bool = True
    #: ``GET /v2/jobs`` on an account without jobs answers 404 ``RECORD_NOT_FOUND`` (the
    #: definitions list that answer for it) instead of ``[]``.
    empty_jobs_list_404: bool = False
    rate_limit_per_second: float | None = None
    write_delay_seconds: float = 0.0
    truncate_gzip: bool = False
    corrupt_line: int | None = None
    #: How record ``corrupt_line`` is damaged: ``cut`` (JSON cut in half; CSV ``time``
    #: ``not-a-time``), ``not_object`` (JSON: a JSON array in its place), ``no_id`` (the event
    #: without ``_id``), ``wide_row`` (CSV: one column more than the header).
    corrupt_kind: str = "cut"
    #: gzip level of compressed exports: 1-3 are ISA-L's (where ``isal`` is installed), the
    #: others zlib's (0 stores); 1 writes a million events in ~1.5 s of CPU (zlib's 1: ~4.5 s).
    gzip_level: int = 1
    #: savedKey names accepted when destinations are checked against an SFTP server.
    saved_keys: tuple[str, ...] = (DEFAULT_SAVED_KEY,)
    fail_message: str = "Export failed: the destination SFTP server could not be written to"
    #: Work time of a job once it runs: base plus a cost per selected event.
    job_base_seconds: float = 0.0
    job_seconds_per_event: float = 0.0
    #: Jobs running at once; later ones answer ``Throttled`` until one finishes (None: no limit).
    max_running_jobs: int | None = None
    #: Export creations allowed per sliding window (None: no limit); above it 429.
    create_rate_limit: int | None = None
    create_rate_window_seconds: float = 60.0
    #: Partial files with the full count reported: the last N events are not written ...
    drop_last_events: int = 0
    #: ... or the last line is cut in half (no newline; a JSON array loses its closing bracket).
    cut_last_line: bool = False
    #: When > 0 the last file is written in two parts: its first half of records before Done,
    #: the rest this many seconds after the job was first reported Done. On S3 the object is
    #: first uploaded with the first half, then replaced by the whole file.
    grow_after_done_seconds: float = 0.0
    #: S3 destinations must carry ``aws_access_key_id``/``aws_secret_access_key`` (the older
    #: destination object: "required for s3"); False: without them Cordial writes with an IAM
    #: role set up on its side (``DestinationObject``: "Required if ... IAM role is not
    #: configured").
    s3_keys_required: bool = False

    def update(self, values: dict[str, Any]) -> None:
        """Set several options by name (``KeyError``: unknown name, ``ValueError``: bad value)."""
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key not in names:
                raise KeyError(key)
            if key in _NON_NEGATIVE and value is not None and not _non_negative_number(value):
                raise ValueError(f"option {key} must be a number >= 0, not {value!r}")
            if key in _CHOICES and value not in _CHOICES[key]:
                raise ValueError(f"option {key} must be one of {_CHOICES[key]}, not {value!r}")
            setattr(self, key, tuple(value) if key == "saved_keys" else value)


@dataclass
class Job:
    """One export job, as ``GET /v2/jobs/{jobId}`` reports it."""

    id: str
    request: dict[str, Any]
    options: CordialOptions
    total_items: int
    created: datetime
    status: str = "Scheduled"
    polls: int = 0
    completed_items: int = 0
    finished: datetime | None = None
    files: list[str] = field(default_factory=list)
    error: str | None = None
    #: Set when the files are complete enough for Done (the first part when growing).
    written: threading.Event = field(default_factory=threading.Event)
    #: Set when every byte of every file is written.
    complete: threading.Event = field(default_factory=threading.Event)
    #: Set by the poll that first reports Done (or by the stand-in's stop).
    done_reported: threading.Event = field(default_factory=threading.Event)
    #: The stand-in's stop signal: waits end early when it is set.
    stopping: threading.Event = field(default_factory=threading.Event)
    #: ``time.monotonic()`` when the job was admitted to run; None while throttled.
    admitted_at: float | None = None
    #: Called once when the files are ready: frees the job's running slot.
    on_ready: Callable[[Job], None] | None = None
    #: Called when the files are ready, before Done may be reported: uploads S3 exports.
    publish: Callable[[], None] | None = None

    @property
    def run_seconds(self) -> float:
        """How long the job works once admitted."""
        return self.options.job_base_seconds + self.options.job_seconds_per_event * self.total_items

    def files_ready(self) -> None:
        """The files are complete enough for Done; a stuck (never finishing) job keeps its slot."""
        if self.written.is_set():
            return
        if self.publish is not None:
            self.publish()
        self.written.set()
        if self.on_ready is not None and not self.options.never_finish:
            self.on_ready(self)

    def advance(self) -> None:
        """One poll: Throttled while waiting to run, then Pending, Processing, Done/Failed."""
        if self.status in ("Done", "Failed"):
            return
        if self.admitted_at is None:
            self.status = "Throttled"  # not counted as a poll: the job has not started
            return
        self.polls += 1
        opts = self.options
        if self.polls <= opts.pending_polls:
            self.status = "Pending"
        elif (
            self.polls <= opts.pending_polls + opts.processing_polls
            or opts.never_finish
            or not self.written.is_set()  # still working or writing: Done means files are there
        ):
            self.status = "Processing"
        else:
            self.status = "Failed" if self.error else "Done"
            self.finished = datetime.now(UTC)
            if self.status == "Done":
                self.completed_items = self.total_items
            self.done_reported.set()

    def progress(self) -> int:
        """``completedItems``: 0 before running, then work and write progress; total when Done."""
        if self.status == "Done":
            return self.total_items
        if self.status in ("Scheduled", "Pending", "Throttled") or self.admitted_at is None:
            return 0
        worked = self.completed_items
        if self.run_seconds > 0:
            share = (time.monotonic() - self.admitted_at) / self.run_seconds
            worked = max(worked, int(self.total_items * min(1.0, share)))
        return min(worked, self.total_items)

    def to_json(self) -> dict[str, Any]:
        """The job object in Cordial's shape."""
        req = self.request
        metadata: dict[str, Any] = {
            "name": req["name"],
            "exportType": req["exportType"],
            "compress": bool(req.get("compress")),
            "limitRecordsPerFile": int(req.get("limitRecordsPerFile") or 0),
        }
        if self.status == "Done" and self.files and not self.options.omit_file_name:
            metadata.update(dict.fromkeys(self._file_name_keys(), self._metadata_file_name()))
        result: dict[str, Any] = {}
        if self.status == "Done":
            result = {"totalRecords": self.total_items}
        elif self.status == "Failed":
            result = {"totalRecords": 0, "message": self.error}
        # JobJ_2 (cordial-v2 definitions, GET /v2/jobs/{id}): status, jobName, totalItems,
        # completedItems, times, result (ResultJ_2), metadata (JobMetadataJ). ``_id`` and ``type``
        # are not in JobJ_2; kept as the fields a real job record is likely to carry too.
        return {
            "_id": self.id,
            "type": "contactactivityexport",
            "jobName": "ExportEvents",
            "status": self.status,
            "totalItems": self.total_items,
            "completedItems": self.progress(),
            "times": {
                "start": cordial_timestamp(self.created),
                "end": cordial_timestamp(self.finished) if self.finished else None,
            },
            "result": result,
            "metadata": metadata,
        }


    def _file_name_keys(self) -> tuple[str, ...]:
        key = self.options.file_name_key
        return ("fileName", "filename") if key == "both" else (key,)

    def _metadata_file_name(self) -> str:
        """The first file's name as the options make the metadata give it."""
        opts = self.options
        name = opts.metadata_file_name or self.files[0]
        if opts.file_name_without_gz:
            name = name.removesuffix(".gz")
        if opts.file_name_path:
            name = f"{str(self.request['destination']['path']).rstrip('/')}/{name}"
        return name


class JobScheduler:
    """Admits jobs to run, at most ``limit()`` at once; the others wait in creation order."""

    def __init__(self, limit: Callable[[], int | None]) -> None:
        """``limit`` gives the current maximum of running jobs (None: no limit)."""
        self._limit = limit
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: set[str] = set()
        self._stopping = False

    def submit(self, job: Job) -> None:
        """Queue a new job; it is admitted at once when a slot is free."""
        job.on_ready = self.release
        with self._cond:
            self._queue.append(job)
            self._admit()

    def refresh(self) -> None:
        """Admit waiting jobs after the limit was raised."""
        with self._cond:
            self._admit()

    def release(self, job: Job) -> None:
        """A job has finished its work: its slot goes to the next waiting job."""
        with self._cond:
            self._running.discard(job.id)
            self._admit()

    def running(self) -> int:
        """How many jobs hold a running slot."""
        with self._cond:
            return len(self._running)

    def wait_for_work_done(self, job: Job) -> bool:
        """Block until the job is admitted and its work time is over; False when stopping."""
        with self._cond:
            while job.admitted_at is None and not self._stopping:
                self._cond.wait(0.1)
                self._admit()  # the limit may have been changed by attribute
            if self._stopping or job.admitted_at is None:
                return False
            end = job.admitted_at + job.run_seconds
            while not self._stopping and (left := end - time.monotonic()) > 0:
                self._cond.wait(left)
            return not self._stopping

    def stop(self) -> None:
        """Wake every waiting writer so that it ends."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _admit(self) -> None:
        limit = self._limit()
        while self._queue and (limit is None or len(self._running) < limit):
            job = self._queue.popleft()
            job.admitted_at = time.monotonic()
            self._running.add(job.id)
            self._cond.notify_all()


def _non_negative_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def cordial_timestamp(value: datetime) -> str:
    """A date-time as Cordial writes it: ``2017-03-13T22:48:40+0000``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")
