"""The one shared HTTP-server helper of the stand-ins.

A stand-in subclasses :class:`HttpStandIn` and implements :meth:`HttpStandIn.route`. The helper owns
the listening socket (127.0.0.1, a free port chosen by the kernel), the serving thread, HTTP/1.1
keep-alive, request-body reading, JSON replies, fault injection and a clean stop that closes idle
keep-alive connections and joins every thread.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, urlsplit

import orjson

from sandbox.service import LocalService

#: Bodies are read in chunks of this size when they are drained rather than kept.
_DRAIN_CHUNK = 1 << 20


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, consumed by one matching request.

    ``status`` answers with that HTTP status (and ``Retry-After`` when ``retry_after`` is set);
    ``delay_seconds`` waits before answering; ``reset`` closes the socket without an answer;
    ``after_store`` first handles the request normally (so its effects are kept) and only then
    answers with ``status`` or resets.
    """

    status: int | None = None
    retry_after: float | None = None
    delay_seconds: float = 0.0
    reset: bool = False
    after_store: bool = False

    def __post_init__(self) -> None:
        """Reject faults that would do nothing."""
        if self.status is None and not self.reset and not self.delay_seconds:
            raise ValueError("a Fault needs a status, reset=True or delay_seconds")
        if self.after_store and self.status is None and not self.reset:
            raise ValueError("after_store needs a status or reset=True")


@dataclass
class Request:
    """A parsed HTTP request as a stand-in sees it."""

    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    body: bytes
    #: Length announced by the client; the body is left unread (empty) when it exceeds the limit.
    content_length: int = 0
    too_large: bool = False

    def header(self, name: str, default: str = "") -> str:
        """A header value (case-insensitive name)."""
        value = self.headers.get(name)
        return default if value is None else value


@dataclass
class Response:
    """What a stand-in answers."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
        """A JSON response, serialized with orjson."""
        return cls(status, orjson.dumps(payload), dict(headers or {}))


class _Throttle:
    """Paces body reads to a rate in bytes per second (None: unpaced), like a slow uplink."""

    #: Bytes read between pauses: small enough to keep the pace smooth for small bodies.
    STEP = 64 * 1024

    def __init__(self, bytes_per_second: float | None) -> None:
        self.rate = float(bytes_per_second) if bytes_per_second else None
        self.started = time.monotonic()
        self.done = 0

    def read(self, stream: Any, size: int) -> bytes:
        """Read ``size`` bytes (fewer at end of stream) no faster than the rate."""
        if self.rate is None:
            return bytes(stream.read(size))
        parts: list[bytes] = []
        remaining = size
        while remaining > 0:
            part = stream.read(min(self.STEP, remaining))
            if not part:
                break
            parts.append(part)
            remaining -= len(part)
            self.done += len(part)
            wait = self.started + self.done / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        return b"".join(parts)


class _ResetConnection(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a handler to close the socket without any answer."""


class _Handler(BaseHTTPRequestHandler):
    """Bridges http.server to :meth:`HttpStandIn.route`."""

    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    # Headers and body leave in separate writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    server: _Server
    # An idle keep-alive connection is closed after this; stop() closes them sooner.
    timeout = 120

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: request lines could be noisy, and headers must never be logged."""

    def setup(self) -> None:
        """Track the connection so that stop() can close it."""
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        """Untrack the connection."""
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def do_GET(self) -> None:
        """Serve a GET."""
        self._serve()

    def do_POST(self) -> None:
        """Serve a POST."""
        self._serve()

    def do_PUT(self) -> None:
        """Serve a PUT."""
        self._serve()

    def do_DELETE(self) -> None:
        """Serve a DELETE."""
        self._serve()

    def _read_body(self, limit: int | None, rate: float | None) -> tuple[bytes, int, bool]:
        """Read the body (Content-Length or chunked); drain it instead when above ``limit``.

        ``rate`` (bytes per second) paces the reading; None reads as fast as the body comes.
        """
        throttle = _Throttle(rate)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailer lines end with an empty line.
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunk = throttle.read(self.rfile, size)
                self.rfile.readline(3)
                total += size
                if limit is None or total <= limit:
                    parts.append(chunk)
                else:
                    parts.clear()
            too_large = limit is not None and total > limit
            return (b"" if too_large else b"".join(parts)), total, too_large
        length = int(self.headers.get("Content-Length") or 0)
        if limit is not None and length > limit:
            remaining = length
            while remaining > 0:
                chunk = throttle.read(self.rfile, min(_DRAIN_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
            return b"", length, True
        return (throttle.read(self.rfile, length) if length else b""), length, False

    def _serve(self) -> None:
        owner = self.server.owner
        split = urlsplit(self.path)
        # The admin endpoints are the sandbox's own: no simulated slow link for them.
        rate = None if owner.is_admin_path(split.path) else owner.upload_bytes_per_second
        body, length, too_large = self._read_body(owner.max_body_bytes, rate)
        request = Request(
            method=self.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=self.headers,  # type: ignore[arg-type]
            body=body,
            content_length=length,
            too_large=too_large,
        )
        try:
            response = owner.dispatch(request)
        except _ResetConnection:
            self._reset()
            return
        self._send(response)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), as a crashed proxy would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its stand-in and its live connections."""

    daemon_threads = False  # stop() joins the handler threads
    block_on_close = True
    request_queue_size = 128

    def __init__(self, owner: HttpStandIn) -> None:
        self.owner = owner
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        #: Set by close_connections: a handler thread that starts after it closes its own.
        self._closing = False
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer is expected here (tests kill clients): stay quiet;
        any other handler error is printed as usual."""
        if isinstance(sys.exc_info()[1], ConnectionError):  # BrokenPipe, ConnectionReset...
            return
        super().handle_error(request, client_address)

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._conns_lock:
            if not add:
                self._conns.discard(conn)
                return
            if not self._closing:
                self._conns.add(conn)
                return
        # Accepted just before stop() and set up after it: left open, its thread would idle
        # for the keep-alive timeout (120 s) while stop() joins it.
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)

    def close_connections(self) -> None:
        """Shut every live connection down, which ends idle keep-alive handler threads."""
        with self._conns_lock:
            self._closing = True
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class HttpStandIn(LocalService):
    """Base of the HTTP stand-ins: free port, serving thread, faults, JSON helpers.

    Subclasses implement :meth:`route` and :meth:`error`, and may set :attr:`max_body_bytes`
    (bodies above it are drained unread and the request is flagged ``too_large``).
    """

    #: URL path prefix of the sandbox's own admin endpoints (no auth, out of the API's tree).
    ADMIN_PREFIX: ClassVar[str] = "/_sandbox"
    max_body_bytes: int | None = None
    #: Added before answering each API request (not the admin endpoints): a link's round trip.
    latency_seconds: float = 0.0
    #: Request bodies are read at most this fast (None: as fast as they come): a slow uplink.
    upload_bytes_per_second: float | None = None

    def __init__(self) -> None:
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._faults: dict[str, deque[Fault]] = {}
        self._faults_lock = threading.Lock()
        self.host = "127.0.0.1"
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve in a background thread."""
        if self._server is not None:
            return self
        self._server = _Server(self)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close live connections and join every thread."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.close_connections()
        server.server_close()  # joins the handler threads (block_on_close)
        if thread is not None:
            thread.join()


    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no path)."""
        return f"http://{self.host}:{self.port}"

    # -- faults ----------------------------------------------------------------------------
    def inject(self, path_prefix: str, *faults: Fault) -> None:
        """Queue faults for the next requests whose path starts with ``path_prefix``."""
        with self._faults_lock:
            self._faults.setdefault(path_prefix, deque()).extend(faults)

    def clear_faults(self) -> None:
        """Forget every queued fault."""
        with self._faults_lock:
            self._faults.clear()

    def pending_faults(self) -> int:
        """How many queued faults are not consumed yet."""
        with self._faults_lock:
            return sum(len(q) for q in self._faults.values())

    def _take_fault(self, path: str) -> Fault | None:
        with self._faults_lock:
            # The longest matching prefix wins, so a specific path beats a general one.
            for prefix in sorted(self._faults, key=len, reverse=True):
                queue = self._faults[prefix]
                if queue and path.startswith(prefix):
                    return queue.popleft()
        return None

    # -- dispatch --------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response:
        """Apply admin routing and faults around :meth:`route`."""
        if self.is_admin_path(request.path):
            return self.admin(request)
        if self.latency_seconds > 0:
            time.sleep(self.latency_seconds)
        fault = self._take_fault(request.path)
        if fault is None:
            return self.route(request)
        if fault.delay_seconds:
            time.sleep(fault.delay_seconds)
        if fault.after_store:
            self.route(request)
        elif fault.status is None and not fault.reset:
            return self.route(request)  # a pure delay
        if fault.reset:
            raise _ResetConnection
        assert fault.status is not None
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = _format_retry_after(fault.retry_after)
        return self.error(fault.status, f"injected fault: HTTP {fault.status}", headers)

    def is_admin_path(self, path: str) -> bool:
        """True for the sandbox's own ``/_sandbox`` endpoints."""
        return path == self.ADMIN_PREFIX or path.startswith(self.ADMIN_PREFIX + "/")

    def route(self, request: Request) -> Response:
        """Answer one API request (implemented by each stand-in)."""
        raise NotImplementedError

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        """An error response in the stand-in's own error shape."""
        raise NotImplementedError

    def admin(self, request: Request) -> Response:
        """Answer ``/_sandbox/...``: ``GET /summary``, ``POST``/``DELETE /faults``, and the
        stand-in's own endpoints (:meth:`admin_route`); a malformed request gets a 400."""
        path, method = request.path.removeprefix(self.ADMIN_PREFIX), request.method
        try:
            if path == "/summary" and method == "GET":
                return Response.json(200, self.summary())
            if path == "/faults" and method == "POST":
                payload = orjson.loads(request.body)
                self.inject(payload["path_prefix"], *(Fault(**f) for f in payload["faults"]))
                return Response.json(200, {"pending_faults": self.pending_faults()})
            if path == "/faults" and method == "DELETE":
                self.clear_faults()
                return Response.json(200, {"pending_faults": 0})
            response = self.admin_route(path, method, request)
        except (KeyError, TypeError, ValueError) as exc:
            return Response.json(400, {"error": f"bad admin request: {exc!r}"})
        if response is None:
            return Response.json(404, {"error": f"no admin endpoint {method} {request.path}"})
        return response

    def summary(self) -> dict[str, Any]:
        """Counts and state for ``GET /_sandbox/summary`` and the CLI."""
        return {"url": self.base_url, "pending_faults": self.pending_faults()}

    def admin_route(self, path: str, method: str, request: Request) -> Response | None:
        """The stand-in's own admin endpoints (``path`` without the prefix); None if unknown."""
        return None


def _format_retry_after(seconds: float) -> str:
    """``Retry-After`` is an integer number of seconds on the wire; keep fractions for tests."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def parse_json_body(request: Request) -> Any:
    """orjson-decode a request body (raises ``orjson.JSONDecodeError``)."""
    return orjson.loads(request.body)
