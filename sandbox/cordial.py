"""Cordial API stand-in: health, contact activity exports written into the SFTP folder, and jobs.

Faithful to ../shared/reference/cordial-api.md: HTTP Basic auth with the API key as the user name
(401 ``{"error": "Access Denied: Authentication Failure"}``), export validation (406 for the export
configuration, 400 for the destination, 415 for a wrong content type), jobs that move
Pending -> Processing -> Done (or Failed, or never finish), 404 ``RECORD_NOT_FOUND`` for an unknown
job, and 429 with ``Retry-After`` above a configurable request rate.

Events are stored compactly, one orjson-encoded ``bytes`` per event, so a million of them fit, and a
JSON Lines export writes them as they are. The export is written by a background thread as soon as
the job is created, streamed to disk; the job reports ``Done`` only once the files are complete.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import csv
import dataclasses
import gzip
import io
import itertools
import math
import re
import secrets
import threading
import time
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import orjson

from sandbox.events import RESERVED_ACTIONS, generate_events, parse_cordial_time
from sandbox.httpbase import HttpStandIn, Request, Response

if TYPE_CHECKING:
    from sandbox.sftp import SftpServer

DEFAULT_API_KEY = "sandbox-cordial-key"
#: The savedKey names the stand-in accepts when it checks destinations against an SFTP server.
DEFAULT_SAVED_KEY = "sandbox-sftp-key"
DEFAULT_EVENT_COUNT = 500
_RESERVED = frozenset(RESERVED_ACTIONS)
_NAME_RE = re.compile(r"^[A-Za-z0-9-]+$")
_REQUIRED = (
    "name",
    "exportType",
    "destination",
    "selected_timeframe_start",
    "selected_timeframe_end",
)
_EXPORT_TYPES = ("json", "csv")
#: CSV column order: the documented fields first, then any other field seen, sorted.
CSV_COLUMNS: tuple[str, ...] = (
    "_id",
    "cID",
    "mcID",
    "bmID",
    "mdtID",
    "msID",
    "action",
    "time",
    "first",
    "email",
    "chnl",
    "chnl-type",
    "mTags",
    "name",
    "subject",
    "message_name",
    "message_sent",
    "properties",
    "sp",
    "d",
)
_BATCH = 5000  # records joined per write call


@dataclass
class CordialOptions:
    """Behaviour switches; a job takes a copy when it is created."""

    pending_polls: int = 1
    processing_polls: int = 1
    fail_jobs: bool = False
    never_finish: bool = False
    json_array: bool = False
    omit_file_name: bool = False
    rate_limit_per_second: float | None = None
    write_delay_seconds: float = 0.0
    truncate_gzip: bool = False
    corrupt_line: int | None = None
    #: gzip level of compressed exports: 1 keeps a million-event export to a few seconds.
    gzip_level: int = 1
    #: savedKey names accepted when destinations are checked against an SFTP server.
    saved_keys: tuple[str, ...] = (DEFAULT_SAVED_KEY,)
    fail_message: str = "Export failed: the destination SFTP server could not be written to"

    def update(self, values: dict[str, Any]) -> None:
        """Set several options by name (unknown names raise ``KeyError``)."""
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key not in names:
                raise KeyError(key)
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
    written: threading.Event = field(default_factory=threading.Event)

    def advance(self) -> None:
        """One poll: Pending, Processing, then Done/Failed (or Processing forever)."""
        self.polls += 1
        opts = self.options
        if self.status in ("Done", "Failed"):
            return
        if self.polls <= opts.pending_polls:
            self.status = "Pending"
        elif (
            self.polls <= opts.pending_polls + opts.processing_polls
            or opts.never_finish
            or not self.written.is_set()  # still writing: Done means the files are complete
        ):
            self.status = "Processing"
        else:
            self.status = "Failed" if self.error else "Done"
            self.finished = datetime.now(UTC)
            if self.status == "Done":
                self.completed_items = self.total_items

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
            metadata["fileName"] = self.files[0]
        result: dict[str, Any] = {}
        if self.status == "Done":
            result = {"totalRecords": self.total_items}
        elif self.status == "Failed":
            result = {"totalRecords": 0, "message": self.error}
        progress = self.completed_items if self.status != "Pending" else 0
        return {
            "_id": self.id,
            "type": "contactactivityexport",
            "status": self.status,
            "totalItems": self.total_items,
            "completedItems": progress,
            "times": {
                "start": _cordial_timestamp(self.created),
                "end": _cordial_timestamp(self.finished) if self.finished else None,
            },
            "result": result,
            "metadata": metadata,
        }


def _cordial_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


class _ApiError(Exception):
    """An error answer in Cordial's ``{"error": true, "errorKey", "message"}`` shape."""

    def __init__(self, status: int, error_key: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_key = error_key
        self.message = message


class EventStore(Sequence[dict[str, Any]]):
    """Cordial's activity "database", compact enough for millions of events.

    Each event is kept as its orjson text plus a newline in one ``bytearray`` (``_offsets[i]`` is
    where event ``i`` starts), with its time and action code in typed arrays. A JSON Lines export of
    consecutive events is then a single slice of that buffer. (Keeping one ``bytes`` per event
    would cost about 4 KB each: orjson's output buffers fragment the heap.) Reading the store as a
    sequence decodes events on access.
    """

    _ADD_CHUNK = 10_000  # events encoded per lock acquisition

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = bytearray()
        self._offsets = array("Q", [0])
        self._times = array("d")  # epoch seconds; inf when missing or unparsable
        self._codes = array("H")  # action code per event
        self._action_codes: dict[str, int] = {}
        self._action_names: list[str] = []
        self._untimed: list[int] = []
        self._sorted = True
        self._max_time = -math.inf
        self._days: dict[str, float] = {}
        self.keys: set[str] = set()

    def _epoch(self, raw: Any) -> float:
        """Epoch seconds of an event's ``time``; inf when missing or unparsable."""
        if not isinstance(raw, str):
            return math.inf
        # Fast path for Cordial's own "YYYY-MM-DDTHH:MM:SS+0000" (a per-day cache).
        if len(raw) == 24 and raw.endswith("+0000") and raw[10] == "T":
            day = self._days.get(raw[:10])
            try:
                if day is None:
                    day = datetime.fromisoformat(raw[:10]).replace(tzinfo=UTC).timestamp()
                    self._days[raw[:10]] = day
                return day + int(raw[11:13]) * 3600 + int(raw[14:16]) * 60 + int(raw[17:19])
            except ValueError:
                return math.inf
        try:
            return parse_cordial_time(raw).timestamp()
        except ValueError:
            return math.inf

    def _code(self, action: Any) -> int:
        name = action if isinstance(action, str) else ""
        code = self._action_codes.get(name)
        if code is None:
            code = self._action_codes[name] = len(self._action_names)
            self._action_names.append(name)
        return code

    def add(self, events: Iterable[dict[str, Any]]) -> int:
        """Store events; returns how many were added."""
        added = 0
        iterator = iter(events)
        while True:
            chunk = list(itertools.islice(iterator, self._ADD_CHUNK))
            if not chunk:
                return added
            self._add_chunk(chunk)
            added += len(chunk)

    def _add_chunk(self, events: list[dict[str, Any]]) -> None:
        dumps, inf = orjson.dumps, math.inf
        data = bytearray()
        ends: list[int] = []
        times: list[float] = []
        codes: list[int] = []
        keys: set[str] = set()
        for event in events:
            data += dumps(event)
            data.append(10)  # newline
            ends.append(len(data))
            times.append(self._epoch(event.get("time")))
            codes.append(self._code(event.get("action")))
            keys.update(event)
        with self._lock:
            base_index, base_offset = len(self._times), len(self._data)
            last = self._times[-1] if self._times else -inf
            for offset, ts in enumerate(times):
                if ts == inf:
                    self._untimed.append(base_index + offset)
                elif ts > self._max_time:
                    self._max_time = ts
                if ts < last:
                    self._sorted = False
                last = ts
            self._data += data
            self._offsets.extend(base_offset + end for end in ends)
            self._times.extend(times)
            self._codes.extend(codes)
            self.keys |= keys

    def latest_time(self) -> float | None:
        """The latest event time (epoch seconds), or None without timed events."""
        return self._max_time if self._max_time != -math.inf else None

    def select(self, start: float, end: float, actions: frozenset[str] | None) -> list[int]:
        """Indices (in time order) of events with ``start <= time <= end`` and a selected action.

        ``actions`` None selects every action; ``"custom"`` in it selects every non-reserved
        action. Events without a usable time are added to every export (tests feed bad records so).
        """
        with self._lock:
            times = self._times
            if self._sorted:
                lo, hi = bisect.bisect_left(times, start), bisect.bisect_right(times, end)
                indices = list(range(lo, hi))
            else:
                indices = sorted(
                    (i for i, t in enumerate(times) if start <= t <= end), key=times.__getitem__
                )
            indices.extend(self._untimed)
            if actions is None:
                return indices
            custom = "custom" in actions
            wanted = {
                code
                for name, code in self._action_codes.items()
                if name in actions or (custom and name not in _RESERVED)
            }
            codes = self._codes
            return [i for i in indices if codes[i] in wanted]

    def records(self, indices: Sequence[int]) -> list[bytes]:
        """The JSON text of the given events (no newline)."""
        with self._lock:
            data, offsets = self._data, self._offsets
            return [bytes(data[offsets[i] : offsets[i + 1] - 1]) for i in indices]

    def jsonl(self, indices: Sequence[int]) -> bytes:
        """The given events as JSON Lines (each line ends with a newline).

        Runs of consecutive indices are copied as one slice of the buffer.
        """
        parts: list[bytes] = []
        with self._lock:
            data, offsets = self._data, self._offsets
            run_start = prev = -2
            for i in indices:
                if i != prev + 1:
                    if run_start >= 0:
                        parts.append(bytes(data[offsets[run_start] : offsets[prev + 1]]))
                    run_start = i
                prev = i
            if run_start >= 0:
                parts.append(bytes(data[offsets[run_start] : offsets[prev + 1]]))
        return b"".join(parts)

    def __len__(self) -> int:
        """Number of stored events."""
        return len(self._times)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        """Decode one event (or a slice of them)."""
        if isinstance(index, slice):
            return [orjson.loads(b) for b in self.records(range(len(self))[index])]
        position = range(len(self))[index]  # negative indices, IndexError
        event: dict[str, Any] = orjson.loads(self.records([position])[0])
        return event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Decode events one by one (a snapshot of the current length)."""
        total = len(self)
        for start in range(0, total, _BATCH):
            for blob in self.records(range(start, min(start + _BATCH, total))):
                yield orjson.loads(blob)


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
    ) -> None:
        """``events`` None generates 500 events over the 48 hours before the current hour
        (``default_start`` .. ``default_end``).

        With ``sftp`` given, an export's destination must name that server (host, port, user)
        and carry its password or a savedKey from ``options.saved_keys``; otherwise the job
        ends ``Failed``, as Cordial's would when it cannot log in.
        """
        super().__init__()
        self.sftp_root = Path(sftp_root)
        self.sftp_path = sftp_path.rstrip("/") or "/"
        self.api_key = api_key
        self.seed = seed
        self.sftp = sftp
        self.options = CordialOptions()
        self.exports: list[dict[str, Any]] = []
        self.jobs: dict[str, Job] = {}
        #: (method, path, status) of every API request, in order.
        self.request_log: list[tuple[str, str, int]] = []
        self._store = EventStore()
        self._lock = threading.Lock()
        self._recent: deque[float] = deque()
        self._writers: list[threading.Thread] = []
        self._generated_batches = 0
        anchor = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
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
        """Add events to the activity database; returns how many."""
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
        """Stop serving and wait for export writers."""
        super().stop()
        for writer in list(self._writers):
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
        limited = self._rate_limit()
        if limited is not None:
            return limited
        if not self._authorized(request.header("Authorization")):
            return self.error(401, "")
        path, method = request.path.rstrip("/"), request.method
        try:
            if path == "/v2/health" and method == "GET":
                return Response.json(200, {"status": "ok"})
            if path == "/v2/contactactivityexport" and method == "POST":
                return self._create_export(request)
            if path.startswith("/v2/jobs/") and method == "GET":
                return self._get_job(path.removeprefix("/v2/jobs/"))
        except _ApiError as exc:
            return Response.json(
                exc.status, {"error": True, "errorKey": exc.error_key, "message": exc.message}
            )
        return Response.json(
            404, {"error": True, "errorKey": "NOT_FOUND", "message": f"No route {method} {path}"}
        )

    def _rate_limit(self) -> Response | None:
        limit = self.options.rate_limit_per_second
        if not limit:
            return None
        now = time.monotonic()
        with self._lock:
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) >= limit:
                wait = max(1, math.ceil(1.0 - (now - self._recent[0])))
                headers = {
                    "Retry-After": str(wait),
                    "X-Rate-Limit-Limit": f"{limit:g}",
                    "X-Rate-Limit-Remaining": "0",
                    "X-Rate-Limit-Reset": str(int(time.time()) + wait),
                }
                return self.error(429, "Too many requests: rate limit exceeded", headers)
            self._recent.append(now)
        return None

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
                raise _ApiError(404, "RECORD_NOT_FOUND", f"Job {job_id} not found")
            job.advance()
            return Response.json(200, job.to_json())

    def _create_export(self, request: Request) -> Response:
        content_type = request.header("Content-Type").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            raise _ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json")
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise _ApiError(400, "INVALID_JSON", f"Request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise _ApiError(400, "INVALID_JSON", "Request body must be a JSON object")
        start, end, actions = _validate_export(body)
        job_id = secrets.token_hex(12)
        options = dataclasses.replace(self.options)
        selected = self._store.select(start.timestamp(), end.timestamp(), actions)
        job = Job(
            id=job_id,
            request=body,
            options=options,
            total_items=len(selected),
            created=datetime.now(UTC),
        )
        with self._lock:
            self.exports.append(body)
            self.jobs[job_id] = job
        writer = threading.Thread(
            target=self._write_job, args=(job, selected), name=f"export-{job_id}", daemon=True
        )
        self._writers.append(writer)
        writer.start()
        return Response.json(200, {"jobId": job_id})

    # -- export writing ---------------------------------------------------------------------
    def _write_job(self, job: Job, selected: list[int]) -> None:
        try:
            if job.options.write_delay_seconds:
                time.sleep(job.options.write_delay_seconds)
            if job.options.fail_jobs:
                job.error = job.options.fail_message
                return
            problem = self._check_destination(job.request["destination"])
            if problem:
                job.error = problem
                return
            folder = self._local_folder(job.request["destination"]["path"])
            if folder is None:
                job.error = (
                    f"Export failed: destination path {job.request['destination']['path']!r} "
                    "does not exist on the SFTP server"
                )
                return
            job.files = write_export(job, self._store, selected, folder)
        except Exception as exc:  # a failed write is a Failed job, as in Cordial
            job.error = f"Export failed: {type(exc).__name__}: {exc}"
        finally:
            job.written.set()
            if threading.current_thread() in self._writers:
                self._writers.remove(threading.current_thread())

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
        path = path.rstrip("/") or "/"
        if path == self.sftp_path:
            folder = self.sftp_root
        elif path.startswith(self.sftp_path.rstrip("/") + "/"):
            folder = self.sftp_root / path[len(self.sftp_path.rstrip("/")) + 1 :]
        else:
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
            return Response.json(200, dataclasses.asdict(self.options))
        return None


def _optional_time(value: Any) -> datetime | None:
    return parse_cordial_time(value) if value else None


def _validate_export(body: dict[str, Any]) -> tuple[datetime, datetime, frozenset[str] | None]:
    """Check an export request as Cordial does; returns (start, end, selected actions)."""
    for name in _REQUIRED:
        if body.get(name) in (None, ""):
            raise _ApiError(
                406, "INVALID_EXPORT_CONFIGURATION", f"Field '{name}' should be specified"
            )
    if not isinstance(body["name"], str) or not _NAME_RE.match(body["name"]):
        raise _ApiError(
            406,
            "INVALID_EXPORT_CONFIGURATION",
            "Field 'name' may contain only letters, digits and dashes",
        )
    if body["exportType"] not in _EXPORT_TYPES:
        raise _ApiError(
            406, "INVALID_EXPORT_CONFIGURATION", "Field 'exportType' must be one of: json, csv"
        )
    destination = body["destination"]
    if not isinstance(destination, dict):
        raise _ApiError(400, "INVALID_DESTINATION", "The destination field must be an object.")
    if destination.get("type", "sftp") != "sftp":
        raise _ApiError(400, "INVALID_DESTINATION", "The destination.type must be sftp.")
    for name in ("server", "username", "path"):
        if not destination.get(name):
            raise _ApiError(
                400, "INVALID_DESTINATION", f"The destination.{name} field is required."
            )
    if not destination.get("password") and not destination.get("savedKey"):
        raise _ApiError(
            400,
            "INVALID_DESTINATION",
            "The destination.password or destination.savedKey field is required.",
        )
    try:
        start = parse_cordial_time(str(body["selected_timeframe_start"]))
        end = parse_cordial_time(str(body["selected_timeframe_end"]))
    except ValueError as exc:
        raise _ApiError(
            406, "INVALID_EXPORT_CONFIGURATION", f"Timeframe is not an ISO 8601 date-time: {exc}"
        ) from exc
    if end < start:
        raise _ApiError(
            406,
            "INVALID_EXPORT_CONFIGURATION",
            "Field 'selected_timeframe_end' must not be before 'selected_timeframe_start'",
        )
    single, several = body.get("selected_action_name"), body.get("selected_action_names")
    if single is not None and several is not None:
        raise _ApiError(
            406,
            "INVALID_EXPORT_CONFIGURATION",
            "Fields 'selected_action_name' and 'selected_action_names' cannot be used together",
        )
    if several is not None:
        if not isinstance(several, list) or not all(isinstance(a, str) for a in several):
            raise _ApiError(
                406, "INVALID_EXPORT_CONFIGURATION", "Field 'selected_action_names' must be a list"
            )
        actions: frozenset[str] | None = frozenset(several)
    elif single is not None:
        actions = frozenset([str(single)])
    else:
        actions = None
    limit = body.get("limitRecordsPerFile", 0)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise _ApiError(
            406,
            "INVALID_EXPORT_CONFIGURATION",
            "Field 'limitRecordsPerFile' must be an integer >= 0",
        )
    return start, end, actions


def export_file_names(
    name: str, export_type: str, compress: bool, parts: int, split: bool
) -> list[str]:
    """``{name}.json`` or ``{name}-{n}.json`` (n from 1) when split, ``.gz`` when compressed."""
    suffix = f".{export_type}" + (".gz" if compress else "")
    if not split:
        return [f"{name}{suffix}"]
    return [f"{name}-{n}{suffix}" for n in range(1, parts + 1)]


def write_export(job: Job, store: EventStore, selected: list[int], folder: Path) -> list[str]:
    """Write the selected events as the job asked; returns the file names (first first)."""
    req, opts = job.request, job.options
    limit = int(req.get("limitRecordsPerFile") or 0)
    split = limit > 0
    parts = max(1, math.ceil(len(selected) / limit)) if split else 1
    compress = bool(req.get("compress"))
    names = export_file_names(req["name"], req["exportType"], compress, parts, split)
    per_file = limit if split else max(len(selected), 1)
    columns = [*CSV_COLUMNS, *sorted(k for k in store.keys if k not in CSV_COLUMNS)]
    for number, file_name in enumerate(names):
        first = number * per_file
        chunk = selected[first : first + per_file]
        with _open_output(folder / file_name, compress, opts.gzip_level) as out:
            if req["exportType"] == "csv":
                _write_csv(out, store, chunk, first, columns, bool(req.get("showHeader")), job)
            else:
                _write_json(out, store, chunk, first, opts.json_array, job)
        job.completed_items = min(first + len(chunk), job.total_items)
    if compress and opts.truncate_gzip:
        target = folder / names[-1]
        size = target.stat().st_size
        with target.open("r+b") as handle:
            handle.truncate(max(10, size - max(16, size // 4)))
    return names


def _open_output(path: Path, compress: bool, level: int) -> io.BufferedIOBase:
    return _GzipOut(path, level) if compress else path.open("wb")


class _GzipOut(gzip.GzipFile):
    """A GzipFile that owns (and closes) its underlying file."""

    def __init__(self, path: Path, level: int) -> None:
        self._raw = path.open("wb")
        super().__init__(
            filename=path.name.removesuffix(".gz"),
            mode="wb",
            compresslevel=level,
            fileobj=self._raw,
        )

    def close(self) -> None:
        """Finish the gzip stream, then close the file."""
        try:
            super().close()
        finally:
            self._raw.close()


def _damaged(blob: bytes) -> bytes:
    """A record cut in half: no longer JSON."""
    return blob[: max(1, len(blob) // 2)]


def _write_json(
    out: io.BufferedIOBase,
    store: EventStore,
    indices: list[int],
    first: int,
    array: bool,
    job: Job,
) -> None:
    corrupt = job.options.corrupt_line
    if array:
        out.write(b"[\n")
    for start in range(0, len(indices), _BATCH):
        batch = indices[start : start + _BATCH]
        damaged_at = corrupt - first - start - 1 if corrupt is not None else -1
        if not array and not 0 <= damaged_at < len(batch):
            out.write(store.jsonl(batch))  # the fast path: slices of the store, as they are
        else:
            records = store.records(batch)
            if 0 <= damaged_at < len(records):
                records[damaged_at] = _damaged(records[damaged_at])
            if array:
                if start:
                    out.write(b",\n")
                out.write(b",\n".join(records))
            else:
                out.write(b"\n".join(records) + b"\n")
        job.completed_items = min(first + start + len(batch), job.total_items)
    if array:
        out.write(b"\n]\n")


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def _write_csv(
    out: io.BufferedIOBase,
    store: EventStore,
    indices: list[int],
    first: int,
    columns: list[str],
    header: bool,
    job: Job,
) -> None:
    # Rows go through an in-memory text buffer that is flushed every batch: cheap and bounded.
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(columns)
    corrupt = job.options.corrupt_line
    time_column = columns.index("time")
    for start in range(0, len(indices), _BATCH):
        for offset, blob in enumerate(store.records(indices[start : start + _BATCH]), start + 1):
            event = orjson.loads(blob)
            row = [_csv_value(event.get(column)) for column in columns]
            if corrupt is not None and first + offset == corrupt:
                row[time_column] = "not-a-time"
            writer.writerow(row)
        out.write(buffer.getvalue().encode())
        buffer.seek(0)
        buffer.truncate()
        job.completed_items = min(first + start + _BATCH, job.total_items)
    out.write(buffer.getvalue().encode())
