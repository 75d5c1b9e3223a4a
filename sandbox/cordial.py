"""Cordial API stand-in: health, contact activity exports written to SFTP or S3, and jobs.

Faithful to Cordial's published v2 definitions and docs (docs/design.md names them): HTTP Basic auth
with the API key as the user name (401 ``{"error": "Access Denied: Authentication Failure"}``),
export validation (406 for the export configuration, 400 for the destination, 415 for a wrong
content type), jobs that move Pending -> Processing -> Done (or Failed, or never finish) over a
configurable work time, answer ``Throttled`` while too many others run, 404 ``RECORD_NOT_FOUND`` for
an unknown job, and 429 with ``Retry-After`` and ``X-Rate-Limit-*`` above a configurable request or
export-creation rate. Events may be recorded late (see :data:`RECORDING_DELAY_KEY`), and files may
be partial on purpose.

This module is the HTTP API; the event store is :mod:`sandbox.cordial_events`, the jobs and their
options :mod:`sandbox.cordial_jobs`, the request checks :mod:`sandbox.cordial_requests` and the
export writer :mod:`sandbox.cordial_exports`. The export is written by a background thread as soon
as the job is created, streamed to disk; the job reports ``Done`` only once the files are complete.
An S3 export (``destination.type`` s3) is written into a staging folder the same way and uploaded
to the connected S3 server (moto's, :mod:`sandbox.s3`) under ``destination.path``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from sandbox.cordial_events import RECORDING_DELAY_KEY, EventStore
from sandbox.cordial_exports import CSV_COLUMNS, export_file_names, write_export
from sandbox.cordial_jobs import DEFAULT_SAVED_KEY, CordialOptions, Job, JobScheduler
from sandbox.cordial_requests import ApiError, RateWindow, validate_export
from sandbox.events import generate_events, parse_cordial_time
from sandbox.httpbase import HttpStandIn, Request, Response

if TYPE_CHECKING:
    from sandbox.s3 import MotoS3Server
    from sandbox.sftp import SftpServer

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_API_KEY",
    "DEFAULT_EVENT_COUNT",
    "DEFAULT_SAVED_KEY",
    "RECORDING_DELAY_KEY",
    "CordialOptions",
    "CordialStandIn",
    "EventStore",
    "Job",
    "export_file_names",
    "write_export",
]

DEFAULT_API_KEY = "sandbox-cordial-key"
DEFAULT_EVENT_COUNT = 500


class CordialStandIn(HttpStandIn):
    """The Cordial v2 API as far as the tap uses it (see docs/design.md, "sandbox.cordial")."""

    def __init__(
        self,
        *,
        sftp_root: Path,
        sftp_path: str,
        api_key: str = DEFAULT_API_KEY,
        events: Iterable[dict[str, Any]] | None = None,
        seed: int = 7,
        sftp: SftpServer | None = None,
        options: CordialOptions | None = None,
        s3: MotoS3Server | None = None,
    ) -> None:
        """``events`` None generates 500 events over the 48 hours before the current hour
        (``default_start`` .. ``default_end``).

        With ``sftp`` given, an export's destination must name that server (host, port, user)
        and carry its password or a savedKey from ``options.saved_keys``; otherwise the job
        ends ``Failed``, as Cordial's would when it cannot log in. With ``s3`` given, exports
        to an S3 destination are uploaded there (see :meth:`_write_s3`).
        """
        super().__init__()
        self.sftp_root = Path(sftp_root)
        self.sftp_path = sftp_path.rstrip("/") or "/"
        self.api_key = api_key
        self.seed = seed
        self.sftp = sftp
        self.s3 = s3
        self.options = options if options is not None else CordialOptions()
        self.exports: list[dict[str, Any]] = []
        self.jobs: dict[str, Job] = {}
        #: (method, path, status) of every API request, in order.
        self.request_log: list[tuple[str, str, int]] = []
        self._store = EventStore()
        self._lock = threading.Lock()
        self._requests = RateWindow()
        self._creates = RateWindow()
        self._stopping = threading.Event()
        self._scheduler = JobScheduler(lambda: self.options.max_running_jobs)
        self._writers: list[threading.Thread] = []
        self._generated_batches = 0
        # An hour back from the last full hour: the default events are always older than the
        # tap's settle_minutes, whatever the minute a test starts at.
        anchor = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        #: The time range of the default events (also the fixtures' ``start_date``).
        self.default_start = anchor - timedelta(hours=48)
        self.default_end = anchor
        if events is None:
            events = generate_events(
                DEFAULT_EVENT_COUNT, seed=seed, start=self.default_start, end=self.default_end
            )
        self._store.add(events)

    @property
    def url(self) -> str:
        """The tap's ``api_url``: ``http://127.0.0.1:PORT/v2``."""
        return f"{self.base_url}/v2"

    @property
    def events(self) -> EventStore:
        """The stored events (decoded on access)."""
        return self._store

    def add_events(self, events: Iterable[dict[str, Any]]) -> int:
        """Add events to the activity database; returns how many.

        An event may carry ``RECORDING_DELAY_KEY`` (``"_recording_delay_seconds"``): Cordial
        records it that many seconds after its ``time``, and exports created before that leave it
        out. The key is not stored.
        """
        return self._store.add(events)

    def add_generated(
        self,
        count: int,
        *,
        seed: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> tuple[datetime, datetime]:
        """Generate and add ``count`` events "that just happened"; returns their time range.

        By default they fall after every stored event and after every timeframe already exported,
        and not after now, so the next incremental run picks them all up.
        """
        now = datetime.now(UTC).replace(microsecond=0)
        if start is None:
            floor = max(
                [self._store.latest_time() or 0.0]
                + [
                    parse_cordial_time(e["selected_timeframe_end"]).timestamp()
                    for e in self.exports
                ]
            )
            start = max(
                datetime.fromtimestamp(math.floor(floor) + 1, UTC), now - timedelta(hours=1)
            )
        end = end or max(now, start)
        if seed is None:
            self._generated_batches += 1
            seed = self.seed * 1000 + self._generated_batches
        self._store.add(generate_events(count, seed=seed, start=start, end=end))
        return start, end

    def stop(self) -> None:
        """Stop serving and wait for export writers (waiting ones end, growing files complete)."""
        super().stop()
        self._stopping.set()
        self._scheduler.stop()
        with self._lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            job.done_reported.set()
        with self._lock:
            writers = list(self._writers)
        for writer in writers:
            writer.join()

    # -- HTTP -------------------------------------------------------------------------------
    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        """Cordial's error shape (401 has its own)."""
        if status == 401:
            return Response.json(401, {"error": "Access Denied: Authentication Failure"}, headers)
        key = {429: "RATE_LIMIT_EXCEEDED", 500: "INTERNAL_SERVER_ERROR"}.get(status, "ERROR")
        return Response.json(status, {"error": True, "errorKey": key, "message": message}, headers)

    def route(self, request: Request) -> Response:
        """Answer one API request."""
        response = self._route(request)
        self.request_log.append((request.method, request.path, response.status))
        return response

    def _route(self, request: Request) -> Response:
        path, method = request.path.rstrip("/"), request.method
        try:
            headers = self._requests.take(self.options.rate_limit_per_second, 1.0)
            if not self._authorized(request.header("Authorization")):
                return self.error(401, "")
            if path == "/v2/health" and method == "GET" and self.options.health_route:
                return Response.json(200, {"status": "ok"}, headers)
            if path == "/v2/jobs" and method == "GET":
                response = self._list_jobs(request)
                response.headers.update(headers)
                return response
            if path == "/v2/contactactivityexport" and method == "POST":
                opts = self.options
                limits = self._creates.take(opts.create_rate_limit, opts.create_rate_window_seconds)
                return self._create_export(request, limits or headers)
            if path.startswith("/v2/jobs/") and method == "GET":
                response = self._get_job(path.removeprefix("/v2/jobs/"))
                response.headers.update(headers)
                return response
        except ApiError as exc:
            payload = {"error": True, "errorKey": exc.error_key, "message": exc.message}
            return Response.json(exc.status, payload, exc.headers)
        return Response.json(
            404, {"error": True, "errorKey": "NOT_FOUND", "message": f"No route {method} {path}"}
        )

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, _password = decoded.partition(":")
        return secrets.compare_digest(user.encode(), self.api_key.encode())

    def _get_job(self, job_id: str) -> Response:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                raise ApiError(404, "RECORD_NOT_FOUND", f"record not found: job {job_id}")
            self._scheduler.refresh()
            job.advance()
            return Response.json(200, job.to_json())

    def _list_jobs(self, request: Request) -> Response:
        """``GET /v2/jobs`` as the v2 definitions shape it: an array of ``JobJ_2``, newest first,
        filtered by ``jobName`` and ``status``, paged by ``page`` (from 1) and ``per_page``; a
        paging value that is not a positive integer is 422 (``JobsFilterError``)."""
        query = request.query
        paging: dict[str, int] = {}
        for name, default in (("page", 1), ("per_page", 25)):
            raw = query.get(name, str(default))
            if not raw.isdigit() or int(raw) < 1:
                raise ApiError(422, "GENERIC_ERROR_KEY", f"Parameter {name} is incorrect")
            paging[name] = int(raw)
        with self._lock:
            self._scheduler.refresh()
            jobs = [job.to_json() for job in reversed(self.jobs.values())]
        if not jobs and self.options.empty_jobs_list_404:
            # getjobs lists a 404 RecordNotFound answer: an account without jobs may give it.
            raise ApiError(404, "RECORD_NOT_FOUND", "record not found")
        jobs = [
            job for job in jobs
            if query.get("jobName", job["jobName"]) == job["jobName"]
            and query.get("status", job["status"]) == job["status"]
        ]
        first = (paging["page"] - 1) * paging["per_page"]
        return Response.json(200, jobs[first : first + paging["per_page"]])

    def _create_export(self, request: Request, headers: dict[str, str]) -> Response:
        content_type = request.header("Content-Type").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            # The definitions' message also names form bodies; the stand-in reads JSON only.
            raise ApiError(
                415, "UNSUPPORTED_MEDIA_TYPE",
                "Unsupported Media Type: Content-Type header must be application/json or "
                "application/x-www-form-urlencoded.",
            )
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "INVALID_JSON", f"Request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "INVALID_JSON", "Request body must be a JSON object")
        start, end, actions, from_array = validate_export(
            body, s3_keys_required=self.options.s3_keys_required
        )
        job_id = secrets.token_hex(12)
        options = dataclasses.replace(self.options)
        selected = self._store.select(
            start.timestamp(), end.timestamp(), actions, recorded_by=time.time(),
            # ``custom`` is documented for selected_action_name; inside the array either reading.
            custom_wildcard=not from_array or options.custom_in_action_names == "wildcard",
        )
        job = Job(
            id=job_id,
            request=body,
            options=options,
            total_items=len(selected),
            created=datetime.now(UTC),
            stopping=self._stopping,
        )
        with self._lock:
            self.exports.append(body)
            self.jobs[job_id] = job
        self._scheduler.submit(job)
        writer = threading.Thread(
            target=self._write_job, args=(job, selected), name=f"export-{job_id}", daemon=True
        )
        with self._lock:
            self._writers.append(writer)
        writer.start()
        return Response.json(200, {"jobId": job_id}, headers)

    # -- export writing ---------------------------------------------------------------------
    def _write_job(self, job: Job, selected: list[int]) -> None:
        try:
            if self._scheduler.wait_for_work_done(job):
                self._write_files(job, selected)
        finally:
            with self._lock:
                self._writers.remove(threading.current_thread())

    def _write_files(self, job: Job, selected: list[int]) -> None:
        """Write the job's files once its work is done; a problem makes it ``Failed``."""
        try:
            if job.options.write_delay_seconds:
                self._stopping.wait(job.options.write_delay_seconds)
            if job.options.fail_jobs:
                job.error = job.options.fail_message
                return
            if str(job.request["destination"].get("type", "sftp")).lower() == "s3":
                self._write_s3(job, selected, job.request["destination"])
                return
            problem = self._check_destination(job.request["destination"])
            if problem:
                job.error = problem
                return
            folder = self._local_folder(job.request["destination"]["path"])
            if folder is None:
                job.error = (
                    f"Export failed: destination path {job.request['destination']['path']!r} "
                    "does not exist on the SFTP server (or is outside the served folder)"
                )
                return
            job.files = write_export(job, self._store, selected, folder)
        except Exception as exc:  # a failed write is a Failed job, as in Cordial
            job.error = f"Export failed: {type(exc).__name__}: {exc}"
        finally:
            job.files_ready()
            job.complete.set()

    def _write_s3(self, job: Job, selected: list[int], destination: dict[str, Any]) -> None:
        """Write the export into a staging folder and upload it as ``{path}/{file name}``.

        The files are uploaded when they are ready (before Done can be reported); with
        ``grow_after_done_seconds`` the last object is uploaded with its first half first and
        replaced by the whole file later; ``truncate_gzip`` and ``cut_last_line`` damage the
        staged file before its upload.
        """
        problem = self._check_s3_destination(destination)
        if problem:
            job.error = problem
            return
        assert self.s3 is not None
        client = self.s3.client()
        bucket = str(destination["aws_bucket"])
        # The key of each file: path without its outer slashes, "/", the file name.
        prefix = str(destination["path"]).strip("/")
        staging = Path(tempfile.mkdtemp(prefix="cordial-s3-"))

        def upload() -> None:
            for path in sorted(staging.iterdir()):
                key = f"{prefix}/{path.name}" if prefix else path.name
                client.upload_file(str(path), bucket, key)

        try:
            job.publish = upload
            job.files = write_export(job, self._store, selected, staging)
            job.publish = None
            upload()
        finally:
            job.publish = None
            shutil.rmtree(staging, ignore_errors=True)

    def _check_s3_destination(self, destination: dict[str, Any]) -> str | None:
        """Why Cordial could not write to this S3 destination, or None."""
        server = self.s3
        if server is None:
            return "Export failed: the stand-in has no S3 server to write to"
        bucket = str(destination["aws_bucket"])
        if destination["aws_region"] != server.region:
            return (
                f"Export failed: S3 bucket {bucket!r} is not in region "
                f"{destination['aws_region']!r}"
            )
        key_id = destination.get("aws_access_key_id")
        if key_id is not None and not (
            key_id == server.access_key_id
            and secrets.compare_digest(
                str(destination.get("aws_secret_access_key", "")).encode(),
                server.secret_access_key.encode(),
            )
        ):
            return f"Export failed: access denied writing to S3 bucket {bucket!r}"
        try:
            server.client().head_bucket(Bucket=bucket)
        except Exception:  # botocore's ClientError: 404 or 403
            return f"Export failed: S3 bucket {bucket!r} does not exist or is not writable"
        return None

    def _check_destination(self, destination: dict[str, Any]) -> str | None:
        server = self.sftp
        if server is None:
            return None
        host_ok = str(destination.get("server")) in {server.host, "localhost"}
        port_ok = int(destination.get("port") or 22) == server.port
        if not (host_ok and port_ok):
            return (
                f"Export failed: could not connect to SFTP server {destination.get('server')}:"
                f"{destination.get('port') or 22}"
            )
        saved_key = destination.get("savedKey")
        if saved_key is not None:
            login_ok = destination.get("username") == server.username and (
                saved_key in self.options.saved_keys
            )
        else:
            login_ok = destination.get("username") == server.username and secrets.compare_digest(
                str(destination.get("password", "")).encode(), server.password.encode()
            )
        if not login_ok:
            return "Export failed: SFTP authentication failed for the destination"
        return None

    def _local_folder(self, path: str) -> Path | None:
        """The served folder (or an existing folder below it) that ``path`` names, else None.

        Resolved before the check, so ``..`` and symbolic links cannot lead outside the
        served folder: the stand-in writes nowhere else.
        """
        path = path.rstrip("/") or "/"
        if path == self.sftp_path:
            folder = self.sftp_root
        elif path.startswith(self.sftp_path.rstrip("/") + "/"):
            folder = self.sftp_root / path[len(self.sftp_path.rstrip("/")) + 1 :]
        else:
            return None
        root = self.sftp_root.resolve()
        folder = folder.resolve()
        if not folder.is_relative_to(root):
            return None
        return folder if folder.is_dir() else None

    # -- admin --------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Counts and state for the admin endpoint and the CLI."""
        with self._lock:
            jobs = {job_id: job.status for job_id, job in self.jobs.items()}
        return {
            "url": self.url,
            "events": len(self._store),
            "exports": len(self.exports),
            "jobs": jobs,
            "running_jobs": self._scheduler.running(),
            "options": dataclasses.asdict(self.options),
            "pending_faults": self.pending_faults(),
        }

    def admin_route(self, path: str, method: str, request: Request) -> Response | None:
        """Admin ``POST /events`` (a list, or ``generate`` N) and ``POST /options``."""
        if path == "/events" and method == "POST":
            payload = orjson.loads(request.body or b"{}")
            if isinstance(payload, list):
                return Response.json(200, {"added": self.add_events(payload)})
            start, end = self.add_generated(
                int(payload.get("generate", 0)),
                seed=payload.get("seed"),
                start=_optional_time(payload.get("start")),
                end=_optional_time(payload.get("end")),
            )
            return Response.json(
                200,
                {
                    "added": int(payload.get("generate", 0)),
                    "start": start.isoformat(),
                    "end": end.isoformat(),
                },
            )
        if path == "/options" and method == "POST":
            self.options.update(orjson.loads(request.body or b"{}"))
            self._scheduler.refresh()  # a raised max_running_jobs admits waiting jobs
            return Response.json(200, dataclasses.asdict(self.options))
        return None



def _optional_time(value: Any) -> datetime | None:
    return parse_cordial_time(value) if value else None


