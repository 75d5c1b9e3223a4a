"""Lytics API stand-in: ``POST /collect/json/{stream}``, the v2 user schema and user profiles.

Faithful to Lytics' published definitions and docs (docs/design.md names them): the raw token in
``Authorization`` (401 otherwise), a JSON object or array body, ``dryrun`` (validate, store
nothing), ``timestamp_field`` recorded, 413 above 10,000,000 bytes, events holding an array of
objects, events of an array body over ``max_event_bytes_in_batch`` (Lytics' limits page: "16 KB per
record inside a batch"; default 16,384, the generous reading of KB) and events matching
``refuse_where`` (``{"field": F, "equals": V}``: Lytics refusing for a reason it does not state)
refused and counted in ``rejected_count``, in real and dry-run requests alike (a dry run stores
nothing), answers in Lytics' envelope ``{"status", "message", "data"}``. Errors come in the
published ``models.ApiErrorResponse`` shape ``{"errors": [{"code", "level", "message",
"timestamp"}], "request_id", "status"}`` (``openapi/lytics-schema-api-openapi.yml`` in
``api-evangelist/lytics``), or with ``error_shape="message"`` in the older documented shape
``{"status", "message", "request_id"}``.

``wrong_answer`` makes the stand-in answer every API call as something that is not Lytics would
(a wrong ``api_url``): ``html_login`` (200, an HTML login page), ``empty`` (200, no body),
``status_in_body`` (200, JSON ``{"status": 400, ...}``), ``redirect`` (302 to a login page),
``text_plain`` (200, ``text/plain``), or, on collect only, ``short_count`` (the success envelope
with a ``message_count`` one short of the events sent, and one event fewer stored).

The schema calls (``/v2/schema/...``, the ``enable_schema_patches`` account setting) are served by
:mod:`sandbox.lytics_schema`; once a schema is published, ``GET /api/entity/user/{field}/{value}``
serves profiles built by :mod:`sandbox.lytics_profiles` from every stored event. Optional slow-link
timing: ``latency_seconds`` per request and ``upload_bytes_per_second`` for request bodies.

Accepted events are kept compactly: each request body is kept once as bytes (with the positions of
the refused events) and decoded only when read. ``count_only=True`` keeps counts alone, for
benchmarks.
"""

from __future__ import annotations

import re
import secrets
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

from sandbox.httpbase import HttpStandIn, Request, Response
from sandbox.lytics_profiles import Profile, StoredEvent, build_profiles
from sandbox.lytics_schema import (
    PATCH_PREFIX,
    SCHEMA_PREFIX,
    SETTING_PATH,
    SchemaRefused,
    SchemaStore,
)

DEFAULT_TOKEN = "sandbox-lytics-token"  # noqa: S105 - the sandbox default, not a real secret
#: Lytics' documented cap per request body.
MAX_BODY_BYTES = 10_000_000
_COLLECT_PREFIX = "/collect/json/"
_ENTITY_PREFIX = "/api/entity/user/"
#: Settings of ``POST /_sandbox/options`` (and constructor keyword arguments of the same names).
OPTION_NAMES = frozenset(
    {
        "count_only",
        "schema_patches",
        "setting_refusal",
        "latency_seconds",
        "upload_bytes_per_second",
        "error_shape",
        "id_ranks",
        "wrong_answer",
        "max_event_bytes_in_batch",
        "refuse_where",
    }
)
#: Lytics' platform limits page: "16 KB per record inside a batch"; the stand-in's default reads
#: KB as 1,024 bytes (the target sets aside above 16,000: it holds under either reading).
MAX_EVENT_BYTES_IN_BATCH = 16 * 1024
#: ``error_shape`` values: the published envelope, or the older top-level ``message``.
ERROR_SHAPES = ("errors", "message")
#: ``wrong_answer`` values (None: answer as Lytics).
WRONG_ANSWERS = ("html_login", "empty", "status_in_body", "redirect", "text_plain", "short_count")
#: Lytics error codes (``lioerrors.ApiV2ErrorOut.code``) the stand-in gives per status.
_ERROR_CODES = {
    400: "BADREQ-001",
    401: "UNAUTHORIZED-017",
    403: "FORBIDDEN-026",
    404: "NOTFOUND-003",
    500: "INTERNAL-019",
}
_LOGIN_PAGE = (
    b"<!doctype html><html><head><title>Sign in - Lytics</title></head>"
    b"<body><form action='/login' method='post'><input name='email'></form></body></html>"
)
# An array whose first element is an object. A body without it beyond the outer array cannot hold
# an event with an array of objects, so the exact per-event check is skipped for most bodies.
_ARRAY_OF_OBJECTS = re.compile(rb"\[\s*\{")
_TRUE = {"true", "1", "yes"}
_ABSENT = object()
_RAW_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])
_RAW_VALUE = msgspec.json.Decoder(msgspec.Raw)


@dataclass
class RequestRecord:
    """One ``POST /collect/json/{stream}`` as received and answered."""

    stream: str
    query: dict[str, str]
    body: bytes
    status: int
    message_count: int = 0
    rejected_count: int = 0
    dryrun: bool = False
    timestamp_field: str | None = None


@dataclass
class _Chunk:
    """The accepted events of one request: its body and the positions refused in it."""

    body: bytes
    rejected: frozenset[int] = field(default_factory=frozenset)
    timestamp_field: str | None = None

    def decode(self) -> list[dict[str, Any]]:
        data = orjson.loads(self.body)
        items = data if isinstance(data, list) else [data]
        return [e for i, e in enumerate(items) if i not in self.rejected]


class StreamEvents(Mapping[str, list[dict[str, Any]]]):
    """Read-only view ``stream -> accepted events``, decoded on access."""

    def __init__(self, owner: LyticsStandIn) -> None:
        self._owner = owner

    def __getitem__(self, stream: str) -> list[dict[str, Any]]:
        """The accepted events of ``stream``, in arrival order."""
        with self._owner._lock:
            chunks = list(self._owner._chunks[stream])
        return [event for chunk in chunks for event in chunk.decode()]

    def __iter__(self) -> Iterator[str]:
        """Stream names that received events."""
        with self._owner._lock:
            return iter(list(self._owner._chunks))

    def __len__(self) -> int:
        """Number of streams that received events."""
        return len(self._owner._chunks)


def _split_body(body: bytes) -> list[msgspec.Raw] | str | None:
    """The events of a body as raw JSON slices; an error text when it is not JSON; None when it
    is neither an object nor an array.

    msgspec validates the JSON and finds each element's bounds without building Python objects:
    ~15x faster than decoding a 5 MB body, which matters when the benchmark pushes a million
    events through here.
    """
    first = body.lstrip()[:1]
    try:
        if first == b"[":
            return _RAW_ITEMS.decode(body)
        raw = _RAW_VALUE.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return str(exc)
    return [raw] if first == b"{" else None


def _rejected_positions(
    body: bytes,
    items: list[msgspec.Raw],
    *,
    max_event_bytes: int | None = None,
    refuse_where: Mapping[str, Any] | None = None,
) -> frozenset[int]:
    """Positions of events Lytics refuses: not an object, or holding an array of objects.

    Also, in an array body, an event over ``max_event_bytes``; and any event whose field
    ``refuse_where["field"]`` equals ``refuse_where["equals"]`` (a refusal Lytics does not explain).
    """
    is_array = body.lstrip()[:1] == b"["
    inner_start = body.find(b"[") + 1 if is_array else 0
    suspicious = _ARRAY_OF_OBJECTS.search(body, inner_start) is not None
    refused_field = refused_value = None
    if refuse_where:
        refused_field, refused_value = refuse_where["field"], refuse_where["equals"]
        # Only events holding the value's JSON text can match: decode those alone.
        if orjson.dumps(refused_value) not in body:
            refused_field = None
    rejected = []
    for position, raw in enumerate(items):
        view = memoryview(raw)
        oversized = is_array and max_event_bytes is not None and len(view) > max_event_bytes
        if (
            view[:1] != b"{"
            or oversized
            or (
                refused_field is not None
                and orjson.loads(view.tobytes()).get(refused_field, _ABSENT) == refused_value
            )
        ):
            rejected.append(position)
        elif suspicious:
            text = view.tobytes()
            # The pattern may sit inside a string: decode to be sure.
            if _ARRAY_OF_OBJECTS.search(text) and holds_array_of_objects(orjson.loads(text)):
                rejected.append(position)
    return frozenset(rejected)


def holds_array_of_objects(value: Any) -> bool:
    """True when ``value`` (an event's field) contains a list holding an object, at any depth."""
    if isinstance(value, dict):
        return any(holds_array_of_objects(v) for v in value.values())
    if isinstance(value, list):
        return any(isinstance(v, dict) or holds_array_of_objects(v) for v in value)
    return False


class LyticsStandIn(HttpStandIn):
    """The Lytics collect API (see docs/design.md, "sandbox.lytics")."""

    # Bodies above the cap are drained unread (see httpbase) and answered 413.
    max_body_bytes = MAX_BODY_BYTES

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        count_only: bool = False,
        schema_patches: bool = False,
        latency_seconds: float = 0.0,
        upload_bytes_per_second: float | None = None,
        error_shape: str = "errors",
        wrong_answer: str | None = None,
    ) -> None:
        """``count_only`` keeps per-stream counts only (no events, no request bodies);
        ``schema_patches`` is the account setting ``enable_schema_patches``;
        ``latency_seconds`` is added to every API request and ``upload_bytes_per_second`` paces
        the reading of request bodies (a slow link); ``error_shape`` and ``wrong_answer``: see
        the module's docstring."""
        super().__init__()
        self.error_shape = "errors"
        self.wrong_answer: str | None = None
        #: None: no size limit per event (the other reading of the limits page).
        self.max_event_bytes_in_batch: int | None = MAX_EVENT_BYTES_IN_BATCH
        self.refuse_where: dict[str, Any] | None = None
        self.token = token
        self.count_only = count_only
        self.latency_seconds = float(latency_seconds)
        self.upload_bytes_per_second = upload_bytes_per_second
        #: The account's user schema (fields, mappings, publishes, patches, the patch setting).
        self.schema = SchemaStore(schema_patches=schema_patches)
        # Profiles are rebuilt when the published schema or the stored events changed.
        self._events_generation = 0
        self._profiles_cache: tuple[tuple[int, int], list[str], list[Profile]] | None = None
        self.requests: list[RequestRecord] = []
        #: Accepted events per stream (kept in count_only mode too).
        self.counts: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self._chunks: dict[str, list[_Chunk]] = {}
        self._lock = threading.Lock()
        self.set_options(error_shape=error_shape, wrong_answer=wrong_answer)

    @property
    def url(self) -> str:
        """The target's ``api_url``: ``http://127.0.0.1:PORT``."""
        return self.base_url

    @property
    def events(self) -> StreamEvents:
        """Accepted events per stream, decoded on access."""
        return StreamEvents(self)

    def reset(self) -> None:
        """Forget every event, request, queued fault and the schema (the options stay)."""
        with self._lock:
            self.requests.clear()
            self.counts.clear()
            self.rejected.clear()
            self._chunks.clear()
            self._events_generation += 1
            self._profiles_cache = None
        self.schema.reset()
        self.clear_faults()

    def total(self) -> int:
        """Accepted events over all streams."""
        with self._lock:
            return sum(self.counts.values())

    # -- HTTP -------------------------------------------------------------------------------
    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        """Lytics' error shape (see ``error_shape``), with a request id."""
        payload: dict[str, Any]
        if self.error_shape == "message":
            payload = {"status": status, "message": message, "request_id": _request_id()}
        else:
            error = {
                "code": _ERROR_CODES.get(status, "UNKNOWN-000"),
                "level": "error",
                "message": message,
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            }
            payload = {"errors": [error], "request_id": _request_id(), "status": status}
        return Response.json(status, payload, headers)

    def _wrong(self, request: Request) -> Response | None:
        """What a server that is not Lytics answers (``wrong_answer``), or None."""
        kind = self.wrong_answer
        if kind == "html_login":
            return Response(200, _LOGIN_PAGE, content_type="text/html; charset=utf-8")
        if kind == "empty":
            return Response(200, b"", content_type="application/json")
        if kind == "status_in_body":
            return Response.json(200, {"status": 400, "message": "bad request"})
        if kind == "redirect":
            return Response(302, b"", {"Location": f"{self.url}/login?next=/app"}, "text/html")
        if kind == "text_plain":
            return Response(200, b"OK", content_type="text/plain")
        return None

    def _authorized(self, request: Request) -> bool:
        token = request.header("Authorization")
        return bool(token) and secrets.compare_digest(token.encode(), self.token.encode())

    def route(self, request: Request) -> Response:
        """Answer one API request."""
        path = request.path
        wrong = self._wrong(request)
        if wrong is not None:
            return wrong
        if path.startswith((SCHEMA_PREFIX, PATCH_PREFIX)) or path == SETTING_PATH:
            return self._schema_call(request)
        if path.startswith(_ENTITY_PREFIX):
            return self._entity(request)
        if not path.startswith(_COLLECT_PREFIX):
            return self.error(404, f"not found: {request.path}")
        if request.method != "POST":
            return self.error(405, f"method not allowed: {request.method}")
        stream = request.path.removeprefix(_COLLECT_PREFIX).strip("/")
        query = request.query
        record = RequestRecord(
            stream=stream,
            query=dict(query),
            body=b"" if self.count_only else request.body,
            status=0,
            dryrun=query.get("dryrun", "").lower() in _TRUE,
            timestamp_field=query.get("timestamp_field") or None,
        )
        response = self._collect(request, record)
        record.status = response.status
        with self._lock:
            self.requests.append(record)
        return response

    def _envelope(self, data: Any, message: str = "success") -> Response:
        payload = {"data": data, "status": 200, "message": message, "request_id": _request_id()}
        return Response.json(200, payload)

    def _schema_call(self, request: Request) -> Response:
        if not self._authorized(request):
            return self.error(401, "Unauthorized: the API token is missing or invalid")
        body: Any = None
        if request.method == "POST" and request.body.strip():
            try:
                body = orjson.loads(request.body)
            except orjson.JSONDecodeError as exc:
                return self.error(400, f"invalid JSON body: {exc}")
        try:
            _, data = self.schema.handle(request.method, request.path, body)
        except SchemaRefused as refusal:
            return self.error(refusal.status, refusal.message)
        return self._envelope(data)

    def _entity(self, request: Request) -> Response:
        if not self._authorized(request):
            return self.error(401, "Unauthorized: the API token is missing or invalid")
        if request.method != "GET":
            return self.error(405, f"method not allowed: {request.method}")
        parts = request.path.removeprefix(_ENTITY_PREFIX).split("/", 1)
        if len(parts) != 2 or not all(parts):
            return self.error(400, "use /api/entity/user/{field}/{value}")
        field_name, value = parts[0], urllib.parse.unquote(parts[1])
        identifiers, profiles = self.profiles()
        if field_name not in identifiers:
            return self.error(
                400, f"field {field_name!r} is not an identifier field of the published schema"
            )
        for profile in profiles:
            state = profile.fields.get(field_name)
            if state is not None and str(state.value) == value:
                return self._envelope(profile.as_dict())
        return self.error(404, f"entity not found: user {field_name}={value}")

    def profiles(self) -> tuple[list[str], list[Profile]]:
        """``(identifier fields, profiles)`` from the published schema and every stored event."""
        with self._lock:
            key = (self.schema.version, self._events_generation)
            cached = self._profiles_cache
            chunks = {stream: list(items) for stream, items in self._chunks.items()}
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        fields, mappings = self.schema.published()
        events_of: dict[str, list[StoredEvent]] = {}
        for stream, stream_chunks in chunks.items():
            stored = events_of.setdefault(stream, [])
            for chunk in stream_chunks:
                for event in chunk.decode():
                    stored.append(StoredEvent(event, chunk.timestamp_field, len(stored)))
        identifiers, profiles = build_profiles(fields, mappings, events_of)
        with self._lock:
            self._profiles_cache = (key, identifiers, profiles)
        return identifiers, profiles

    def _collect(self, request: Request, record: RequestRecord) -> Response:
        if not self._authorized(request):
            return self.error(401, "Unauthorized: the API token is missing or invalid")
        if request.too_large:
            return self.error(
                413,
                f"Request entity too large: {request.content_length} bytes, "
                f"the limit is {MAX_BODY_BYTES} bytes",
            )
        if not record.stream or "/" in record.stream:
            return self.error(400, f"invalid stream name {record.stream!r}")
        items = _split_body(request.body)
        if items is None:
            return self.error(400, "the body must be a JSON object or an array of objects")
        if isinstance(items, str):
            return self.error(400, f"invalid JSON body: {items}")
        rejected = _rejected_positions(
            request.body,
            items,
            max_event_bytes=self.max_event_bytes_in_batch,
            refuse_where=self.refuse_where,
        )
        counted = len(items)
        if self.wrong_answer == "short_count" and items:
            # The last event goes missing: counted nowhere, stored nowhere.
            counted -= 1
            rejected = frozenset(p for p in rejected if p < counted)
            stored_out = rejected | {counted}
        else:
            stored_out = rejected
        record.message_count = counted
        record.rejected_count = len(rejected)
        accepted = counted - len(rejected)
        if not record.dryrun:
            with self._lock:
                stream = record.stream
                self.counts[stream] = self.counts.get(stream, 0) + accepted
                if rejected:
                    self.rejected[stream] = self.rejected.get(stream, 0) + len(rejected)
                if not self.count_only and accepted:
                    chunk = _Chunk(request.body, stored_out, record.timestamp_field)
                    self._chunks.setdefault(stream, []).append(chunk)
                    self._events_generation += 1
        data_out: dict[str, Any] = {
            "message_count": counted,
            "rejected_count": len(rejected),
            # DataUploadModel of openapi/lytics-data-upload-api-openapi.yml also lists these.
            "content-type": request.header("Content-Type") or "application/json",
            "droperrors": False,
            "dryrun": record.dryrun,
            "stream": record.stream,
        }
        if record.timestamp_field:
            data_out["timestamp_field"] = record.timestamp_field
        if "filename" in request.query:
            data_out["filename"] = request.query["filename"]
        return Response.json(200, {"status": 200, "message": "success", "data": data_out})

    # -- admin --------------------------------------------------------------------------------
    def value_counts(self, stream: str, field_name: str | None = None) -> dict[str, Any]:
        """Accepted events of ``stream`` per value of a field (default: the event action)."""
        events = self.events.get(stream, [])
        if field_name is None:
            candidates = ("cr_event_action", "action")
            field_name = next((f for f in candidates if any(f in e for e in events)), candidates[0])
        values: dict[str, int] = {}
        for event in events:
            value = str(event.get(field_name, "(missing)"))
            values[value] = values.get(value, 0) + 1
        return {"stream": stream, "field": field_name, "values": values}

    def summary(self) -> dict[str, Any]:
        """Counts for the admin endpoint and the CLI."""
        with self._lock:
            return {
                "url": self.url,
                "streams": dict(self.counts),
                "rejected": dict(self.rejected),
                "requests": len(self.requests),
                "statuses": _count([r.status for r in self.requests]),
                "count_only": self.count_only,
                "pending_faults": self.pending_faults(),
                "options": self.options(),
                "schema_version": self.schema.version,
            }

    def options(self) -> dict[str, Any]:
        """The current values of the settable options (see :data:`OPTION_NAMES`)."""
        return {
            "count_only": self.count_only,
            "schema_patches": self.schema.schema_patches,
            "setting_refusal": self.schema.setting_refusal,
            "latency_seconds": self.latency_seconds,
            "upload_bytes_per_second": self.upload_bytes_per_second,
            "error_shape": self.error_shape,
            "id_ranks": self.schema.id_ranks,
            "wrong_answer": self.wrong_answer,
            "max_event_bytes_in_batch": self.max_event_bytes_in_batch,
            "refuse_where": self.refuse_where,
        }

    def set_options(self, **values: Any) -> dict[str, Any]:
        """Change options at runtime (unknown names: KeyError); returns them all."""
        unknown = sorted(set(values) - OPTION_NAMES)
        if unknown:
            raise KeyError(unknown)
        if "count_only" in values:
            self.count_only = bool(values["count_only"])
        if "schema_patches" in values:
            self.schema.schema_patches = bool(values["schema_patches"])
        if "setting_refusal" in values:
            refusal = values["setting_refusal"]
            self.schema.setting_refusal = None if refusal is None else int(refusal)
        if "latency_seconds" in values:
            latency = float(values["latency_seconds"] or 0)
            if latency < 0:
                raise ValueError("latency_seconds must be >= 0")
            self.latency_seconds = latency
        if "upload_bytes_per_second" in values:
            rate = values["upload_bytes_per_second"]
            if rate is not None and float(rate) <= 0:
                raise ValueError("upload_bytes_per_second must be > 0 (or null: unlimited)")
            self.upload_bytes_per_second = None if rate is None else float(rate)
        if "error_shape" in values:
            if values["error_shape"] not in ERROR_SHAPES:
                raise ValueError(f"error_shape must be one of {', '.join(ERROR_SHAPES)}")
            self.error_shape = values["error_shape"]
        if "wrong_answer" in values:
            if values["wrong_answer"] not in (None, *WRONG_ANSWERS):
                raise ValueError(f"wrong_answer must be null or one of {', '.join(WRONG_ANSWERS)}")
            self.wrong_answer = values["wrong_answer"]
        if "max_event_bytes_in_batch" in values:
            limit = values["max_event_bytes_in_batch"]
            if limit is not None and int(limit) < 1:
                raise ValueError("max_event_bytes_in_batch must be >= 1 (or null: no limit)")
            self.max_event_bytes_in_batch = None if limit is None else int(limit)
        if "refuse_where" in values:
            where = values["refuse_where"]
            if where is not None and not (
                isinstance(where, dict) and set(where) == {"field", "equals"}
            ):
                raise ValueError('refuse_where must be {"field": name, "equals": value} or null')
            self.refuse_where = None if where is None else dict(where)
        if "id_ranks" in values:
            ranks = values["id_ranks"]
            if ranks is not None and not (
                isinstance(ranks, list) and all(isinstance(r, str) for r in ranks)
            ):
                raise ValueError("id_ranks must be a list of field names or null (no ranking)")
            self.schema.id_ranks = None if ranks is None else list(ranks)
        return self.options()

    def admin_route(self, path: str, method: str, request: Request) -> Response | None:
        """Admin ``GET /events``, ``GET /counts``, ``POST /reset`` and ``POST /options``."""
        if path == "/events" and method == "GET":
            stream = request.query["stream"]
            events = self.events.get(stream, [])
            limit = int(request.query.get("limit", len(events)))
            return Response.json(
                200, {"stream": stream, "total": len(events), "events": events[:limit]}
            )
        if path == "/counts" and method == "GET":
            return Response.json(
                200, self.value_counts(request.query["stream"], request.query.get("field"))
            )
        if path == "/reset" and method == "POST":
            self.reset()
            return Response.json(200, self.summary())
        if path == "/options" and method == "POST":
            return Response.json(200, self.set_options(**orjson.loads(request.body or b"{}")))
        if path == "/options" and method == "GET":
            return Response.json(200, self.options())
        if path == "/profiles" and method == "GET":
            identifiers, profiles = self.profiles()
            limit = int(request.query.get("limit", len(profiles)))
            ranked = sorted(profiles, key=lambda p: -p.events)[:limit]
            return Response.json(
                200,
                {
                    "schema_version": self.schema.version,
                    "identifier_fields": identifiers,
                    "total": len(profiles),
                    "profiles": [{"events": p.events, "fields": p.as_dict()} for p in ranked],
                },
            )
        return None


def _request_id() -> str:
    return secrets.token_hex(8)


def _count(values: list[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return counts
