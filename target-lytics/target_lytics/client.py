"""LyticsClient: uploads JSON array bodies to ``POST {api_url}/collect/json/{stream}``.

One ``requests.Session`` (keep-alive) per client, shared by the upload threads. The API token goes
only into the ``Authorization`` header (the raw token, as Lytics expects), never into a URL or a
log line. 429, 5xx, timeouts and connection errors are retried with exponential backoff and full
jitter, honouring ``Retry-After``; 400/401/403/413 and ``rejected_count`` > 0 end the run with a
message that says what to do. Errors about reaching Lytics name the host and the ``api_url``
setting. :class:`AdaptiveLimit` bounds the attempts in flight and halves that bound after a 429.

Only a verified success counts: Lytics' success envelope (``application/json``, an object whose
``status`` is not an error, ``data.message_count``), as
``openapi/lytics-data-upload-api-openapi.yml`` (``api-evangelist/lytics``) describes the answer
of ``POST /collect/json/{stream}``. An HTML page, an empty body, another content type or a
``status`` of 400 inside a 200 names the URL and what came back; redirects are not followed (a
302 would turn the POST into a GET elsewhere). Error bodies are read in the published
``models.ApiErrorResponse`` shape (``errors[].message`` and ``code``) and in the older one (a
top-level ``message``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import orjson
import requests
import requests.adapters
import requests.auth

from target_lytics import __version__
from target_lytics.errors import LyticsError, RejectedEventsError
from target_lytics.retries import RetryPolicy, Transient, parse_retry_after

__all__ = ["AdaptiveLimit", "LyticsClient", "RetryPolicy", "UploadResult", "parse_retry_after"]

logger = logging.getLogger(__name__)

#: What to do about each status that ends the run.
_FATAL_HINTS: dict[int, str] = {
    400: "Lytics rejected the data as invalid; check the stream mapping and the record values",
    401: "the token is invalid or missing: check api_token",
    403: (
        "the token lacks permission: check the token's role (it needs to write to streams) "
        "and that this machine's IP address is in the account's IP allow-list"
    ),
    404: "no such endpoint: check api_url (e.g. https://api.lytics.io)",
    413: "the request body is too large: lower max_request_bytes",
}
_RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))


@dataclass(frozen=True)
class UploadResult:
    """What Lytics reported for one accepted request."""

    message_count: int
    rejected_count: int
    status: Any
    #: Requests sent for this body (1 when it was not retried).
    attempts: int = 1


class ShortCountError(RejectedEventsError):
    """Lytics counted fewer events than the body held: the missing ones are lost like rejected ones.

    ``unaccounted`` is how many; which ones Lytics does not say, so a bad-records limit can only
    set the whole body aside (or count them) rather than pick them out.
    """

    def __init__(self, message: str, *, accepted: int, rejected: int, unaccounted: int) -> None:
        """``rejected`` includes the ``unaccounted`` events."""
        super().__init__(message, accepted=accepted, rejected=rejected)
        self.unaccounted = unaccounted


class UnverifiedAnswerError(LyticsError):
    """A 2xx or 3xx answer that is not Lytics' success envelope (probably a wrong ``api_url``)."""


class AdaptiveLimit:
    """How many attempts may be in flight at once: AIMD, like TCP's congestion window.

    Starts at ``maximum``. A 429 halves the limit (at most once per :attr:`COOLDOWN_SECONDS`, so
    the answers to requests already in flight count as one signal); after that many seconds
    without a 429, each run of ``limit`` accepted requests raises it by one, up to ``maximum``.
    """

    #: 429s closer together than this lower the limit once.
    COOLDOWN_SECONDS = 5.0

    def __init__(self, maximum: int) -> None:
        """Allow ``maximum`` attempts in flight."""
        self.maximum = maximum
        self.limit = maximum
        self.in_flight = 0
        self._successes = 0
        self._throttled_at = -float("inf")
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``limit`` slots while one request is sent."""
        with self._changed:
            while self.in_flight >= self.limit:
                self._changed.wait()
            self.in_flight += 1
        try:
            yield
        finally:
            with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()

    def throttled(self) -> None:
        """Lytics answered 429: halve the limit (not below 1)."""
        with self._changed:
            now = time.monotonic()
            if now - self._throttled_at >= self.COOLDOWN_SECONDS:
                self.limit = max(1, self.limit // 2)
                logger.info(
                    "Lytics is rate limiting: at most %d upload requests in flight for now",
                    self.limit,
                )
            self._throttled_at = now
            self._successes = 0

    def succeeded(self) -> None:
        """A request was accepted: after the cooldown, grow the limit by one per full round."""
        with self._changed:
            if self.limit >= self.maximum:
                return
            if time.monotonic() - self._throttled_at < self.COOLDOWN_SECONDS:
                return
            self._successes += 1
            if self._successes >= self.limit:
                self.limit += 1
                self._successes = 0
                self._changed.notify_all()


def lytics_error_text(payload: Any) -> str:
    """What Lytics said in an error body (without the request id).

    ``errors[].message`` with their ``code`` (``models.ApiErrorResponse``), else a top-level
    ``message`` (older docs).
    """
    if not isinstance(payload, dict):
        return ""
    parts = []
    for error in payload.get("errors") or []:
        if isinstance(error, dict) and (error.get("message") or error.get("code")):
            code = f" [{error['code']}]" if error.get("code") else ""
            parts.append(f"{error.get('message') or 'no message'}{code}")
    if not parts and payload.get("message"):
        parts.append(str(payload["message"]))
    return "; ".join(parts)


def _error_message(response: requests.Response, secret: str = "") -> str:
    """What Lytics put in an error body; the first 200 bytes when it is not JSON."""
    try:
        payload = response.json()
    except ValueError:
        return redact(response.text.strip()[:200], secret)
    parts = [lytics_error_text(payload)] if lytics_error_text(payload) else []
    if isinstance(payload, dict) and payload.get("request_id"):
        parts.append(f"request_id={payload['request_id']}")
    return redact("; ".join(parts), secret)


def redact(text: str, secret: str) -> str:
    """``text`` with every occurrence of ``secret`` replaced (an answer might echo the token)."""
    return text.replace(secret, "***") if secret else text


def describe_answer(response: requests.Response, secret: str = "") -> str:
    """An answer in a few words: status, content type, redirect target, first 200 bytes.

    A redirect's target is shown without its query string.
    """
    content_type = response.headers.get("Content-Type") or "none"
    parts = [f"HTTP {response.status_code}", f"content type {content_type}"]
    location = response.headers.get("Location")
    if location:
        target = urlsplit(location)
        host = target.netloc.rsplit("@", 1)[-1]  # no user or password, no query: may hold secrets
        parts.append(f"redirect to {urlunsplit((target.scheme, host, target.path, '', ''))}")
    head = response.content[:200].decode("utf-8", "replace")
    parts.append(f"body {redact(head, secret)!r}" if head.strip() else "empty body")
    return ", ".join(parts)


def success_status(status: Any) -> bool:
    """A ``status`` inside a success envelope: absent, 2xx, or ``"success"``/``"ok"``."""
    if status is None:
        return True
    if isinstance(status, bool):
        return False
    if isinstance(status, int):
        return 200 <= status < 300
    text = str(status).strip().lower()
    return text in ("success", "ok") or (text.isdigit() and 200 <= int(text) < 300)


def json_envelope(response: requests.Response) -> dict[str, Any] | None:
    """The answer's JSON object when it is ``application/json``, else None."""
    content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        return None
    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be an HTTP header value (never quoting it), or None."""
    if not value:
        return "is empty"
    for char in value:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return "holds a control character (a line break or tab inside the token?)"
        if ord(char) > 0xFF:
            return "holds a character that cannot be sent in an HTTP header (not Latin-1)"
    return None


def url_userinfo_problem(url: str) -> str | None:
    """Why ``url`` must not be used as it is (a user name or password in it), or None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None  # other checks name a URL that does not parse
    if "@" in parts.netloc:
        return (
            "holds a user name or password (user:password@host); Lytics takes only the "
            "api_token: remove them from the URL"
        )
    return None


class _TokenHeaderOnly(requests.auth.AuthBase):
    """Leaves the request as it is.

    With a session ``auth`` set, requests never derives Basic auth from a ``user:password@`` in
    the URL or from ~/.netrc.
    """

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


def lytics_session(api_token: str) -> requests.Session:
    """A keep-alive session sending the token as Lytics wants it (raw ``Authorization``).

    Raises:
        LyticsError: the token cannot be a header value (the message never quotes it).
    """
    token = api_token.strip()
    problem = header_value_problem(token)
    if problem is not None:
        raise LyticsError(f"`api_token` {problem}.")
    session = requests.Session()
    session.headers.update(
        {
            "Authorization": token,
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"target-lytics/{__version__}",
        }
    )
    # Never pick up credentials from ~/.netrc or proxies' env by surprise; the header is ours.
    session.trust_env = False
    session.auth = _TokenHeaderOnly()
    return session


class LyticsClient:
    """Sends event batches to Lytics' collect API."""

    def __init__(
        self,
        *,
        api_url: str,
        api_token: str,
        timeout_seconds: float,
        retry: RetryPolicy,
        pool_size: int = 32,
    ) -> None:
        """Create a client with one keep-alive session of up to ``pool_size`` connections.

        Raises:
            LyticsError: ``api_url`` holds a user name or password, or the token is unusable.
        """
        problem = url_userinfo_problem(api_url)
        if problem is not None:
            raise LyticsError(f"`api_url` {problem}.")
        self.api_url = api_url.rstrip("/")
        self.host = urlsplit(self.api_url).netloc or self.api_url
        #: Only to keep it out of quoted answers.
        self._secret = api_token.strip()
        self.timeout_seconds = timeout_seconds
        self.retry = retry
        #: Set by :meth:`cancel`: backoff waits end at once and no new attempt starts.
        self.cancelled = threading.Event()
        self.session = lytics_session(api_token)
        # Keep a connection alive per request that may be in flight (every sink's uploads).
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)

    def close(self) -> None:
        """Close the session's pooled connections."""
        self.session.close()

    def cancel(self) -> None:
        """Give up: uploads waiting to retry fail now instead of after their backoff."""
        self.cancelled.set()

    @property
    def where(self) -> str:
        """Where requests go, for error messages: the host and the ``api_url`` setting."""
        return f"{self.host} (api_url setting: {self.api_url})"

    def collect_url(self, stream: str) -> str:
        """URL of the collect endpoint for a Lytics stream."""
        return f"{self.api_url}/collect/json/{quote(stream, safe='')}"

    def upload(
        self,
        stream: str,
        body: bytes,
        *,
        timestamp_field: str | None = None,
        dry_run: bool = False,
        event_count: int | None = None,
        limit: AdaptiveLimit | None = None,
    ) -> UploadResult:
        """POST one JSON array body; retry transient failures; raise :class:`LyticsError`.

        Each attempt holds a slot of ``limit`` (if given) only while it is sent, so requests
        waiting to retry leave room to the others; a 429 lowers the limit.
        """
        params: dict[str, str] = {}
        if timestamp_field:
            params["timestamp_field"] = timestamp_field
        if dry_run:
            params["dryrun"] = "true"
        url = self.collect_url(stream)
        what = f"upload of {event_count} events to Lytics stream '{stream}'"
        slot = limit.slot if limit is not None else contextlib.nullcontext

        def attempt(number: int) -> UploadResult:
            """One POST: the result, a fatal LyticsError, or Transient (retried)."""
            if self.cancelled.is_set():
                raise LyticsError(f"{what} was cancelled: the run is ending after an error.")
            try:
                with slot():
                    # No redirects: requests would re-send a 302'd POST as a GET elsewhere.
                    response = self.session.post(
                        url,
                        params=params,
                        data=body,
                        timeout=self.timeout_seconds,
                        allow_redirects=False,
                    )
            except requests.Timeout as exc:
                raise Transient(f"timed out after {self.timeout_seconds}s", cause=exc) from exc
            except requests.ConnectionError as exc:
                raise Transient(f"connection error ({_root_cause(exc)})", cause=exc) from exc
            status = response.status_code
            if 200 <= status < 400:
                result = self._accepted(response, url, stream, event_count, what)
                if limit is not None:
                    limit.succeeded()
                return dataclasses.replace(result, attempts=number)
            message = _error_message(response, self._secret)
            if status in _FATAL_HINTS or status not in _RETRYABLE_STATUSES:
                hint = _FATAL_HINTS.get(status, "unexpected response from Lytics")
                detail = f" ({message})" if message else ""
                raise LyticsError(
                    f"{what} failed with HTTP {status}{detail} from {self.where}: {hint}."
                )
            if status == 429 and limit is not None:
                limit.throttled()
            raise Transient(
                f"HTTP {status}" + (f" ({message})" if message else ""),
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )

        def on_retry(error: Transient, retry: int, delay: float) -> None:
            logger.warning(
                "%s: %s from %s; retry %d of %d in %.2fs",
                what,
                error.problem,
                self.host,
                retry,
                self.retry.max_retries,
                delay,
            )

        def give_up(error: Transient, attempts: int) -> LyticsError:
            return LyticsError(
                f"{what} failed after {attempts} attempts, last: {error.problem} from "
                f"{self.where}. Check api_url and the network; Lytics may be unavailable "
                "or rate limiting: try again later or raise max_retries."
            )

        # A cancelled run ends the wait at once (the next attempt then refuses to start).
        return self.retry.call(
            attempt, on_retry=on_retry, give_up=give_up, sleep=self.cancelled.wait
        )

    def _accepted(
        self,
        response: requests.Response,
        url: str,
        stream: str,
        event_count: int | None,
        what: str,
    ) -> UploadResult:
        """Read a 2xx/3xx answer: only Lytics' success envelope with its counts is a delivery.

        Rejected events, and events the count leaves out, end the run since they would be lost.
        """
        payload = json_envelope(response) if response.status_code < 300 else None
        data = payload.get("data") if payload is not None else None
        if (
            payload is None
            or not success_status(payload.get("status"))
            or not isinstance(data, dict)
            or not _is_count(data.get("message_count"))
        ):
            raise UnverifiedAnswerError(
                f"{what}: {url} answered {describe_answer(response, self._secret)}, which is not "
                f"Lytics' success envelope (JSON with data.message_count), so nothing counts as "
                f"delivered. Check api_url (the API, e.g. https://api.lytics.io, not the web "
                f"app's address): {self.where}."
            )
        rejected = _as_int(data.get("rejected_count"))
        count = _as_int(data.get("message_count"))
        status = payload.get("status")
        unaccounted = max((event_count or 0) - count, 0)
        stop = (
            "would be lost, so the run stops without advancing the state. Check the events' "
            "fields and the stream's schema in Lytics."
        )
        if unaccounted:
            accepted = max(count - rejected, 0)
            also = f" and rejected {rejected}" if rejected else ""
            raise ShortCountError(
                f"Lytics counted {count} of the {event_count} events sent to stream '{stream}'"
                f"{also} (accepted {accepted}); the {unaccounted + rejected} missing or rejected "
                f"events {stop}",
                accepted=accepted,
                rejected=unaccounted + rejected,
                unaccounted=unaccounted,
            )
        if rejected > 0:
            accepted = max((count or event_count or 0) - rejected, 0)
            raise RejectedEventsError(
                f"Lytics rejected {rejected} of {count or event_count} events sent to stream "
                f"'{stream}' (accepted {accepted}); the rejected events {stop}",
                accepted=accepted,
                rejected=rejected,
            )
        return UploadResult(message_count=count, rejected_count=rejected, status=status)


def _root_cause(error: BaseException) -> str:
    """The innermost cause's type and text, e.g. ``ConnectionRefusedError: [Errno 111] ...``."""
    seen: set[int] = set()
    while error.__cause__ is not None or error.__context__ is not None:
        if id(error) in seen:
            break
        seen.add(id(error))
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    text = str(error).split(": ", 1)[-1] if isinstance(error, OSError) else str(error)
    return f"{type(error).__name__}: {text}"[:200] if text else type(error).__name__


def _is_count(value: Any) -> bool:
    """A count as Lytics writes it: a whole number >= 0, or a numeric string.

    The definitions type it ``number``, so ``2.0`` is one too.
    """
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    if isinstance(value, float):
        return value.is_integer() and value >= 0
    return isinstance(value, str) and value.strip().isdigit()


def _as_int(value: Any) -> int:
    """Counts may come as numbers or numeric strings."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
