"""LyticsSchemaClient: the v2 Schema API of the ``user`` table and the schema-patch setting.

Same conventions as :class:`target_lytics.client.LyticsClient`: the raw token in the
``Authorization`` header only, 429/5xx/timeouts/connection errors retried with full-jitter backoff
honouring ``Retry-After``. Every answer is Lytics' envelope ``{"data", "status", "message",
"request_id"}``; a refusal raises :class:`SchemaApiError`, whose message ends with Lytics' own
message and the ``request_id``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests

from target_lytics.client import RetryPolicy, lytics_session, parse_retry_after
from target_lytics.errors import LyticsError

logger = logging.getLogger(__name__)

SCHEMA = "/v2/schema/user"
PATCH = "/v2/schema/patch/user"
PATCH_SETTING = "/api/account/setting/enable_schema_patches"
_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))
_HINTS: dict[int, str] = {
    400: "Lytics refused the schema change",
    401: "the token is invalid or missing: check api_token",
    403: (
        "the token may not do this: it needs a role that may manage the user schema (for example "
        "Admin or Data Manager), and this machine's IP address must be in the account's allow-list"
    ),
    404: "no such endpoint or object: check api_url (e.g. https://api.lytics.io)",
}


class SchemaApiError(LyticsError):
    """A schema call Lytics refused, or that failed for good."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        """``status`` is the HTTP status, when there was an answer."""
        super().__init__(message)
        self.status = status


def _envelope(response: requests.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {"message": response.text.strip()[:200]}
    return payload if isinstance(payload, dict) else {}


def lytics_said(payload: dict[str, Any]) -> str:
    """``Lytics: <message> (request_id=<id>)``, the tail of every schema error."""
    message = str(payload.get("message") or "no message")
    request_id = payload.get("request_id")
    return f"Lytics: {message}" + (f" (request_id={request_id})" if request_id else "")


class LyticsSchemaClient:
    """Reads and writes the account's user schema."""

    def __init__(
        self,
        *,
        api_url: str,
        api_token: str,
        timeout_seconds: float,
        retry: RetryPolicy,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Create a client with its own keep-alive session."""
        self.api_url = api_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.retry = retry
        self._sleep = sleep
        self.session = lytics_session(api_token)

    def close(self) -> None:
        """Close the session's pooled connections."""
        self.session.close()

    # -- reads -------------------------------------------------------------------------------
    def fields(self) -> dict[str, dict[str, Any]]:
        """The account's user fields by id (published or in the draft)."""
        data = self.call("GET", f"{SCHEMA}/field", what="reading the user fields") or []
        return {str(f["id"]): f for f in data if isinstance(f, dict) and "id" in f}

    def mappings(self) -> list[dict[str, Any]]:
        """The account's user-field mappings."""
        data = self.call("GET", f"{SCHEMA}/mapping", what="reading the user-field mappings")
        return [m for m in data or [] if isinstance(m, dict)]

    def compare(self) -> dict[str, Any]:
        """The unpublished draft (what a publish would change)."""
        data = self.call("GET", f"{SCHEMA}/compare", what="reading the unpublished draft")
        return data if isinstance(data, dict) else {}

    def schema_patches_enabled(self) -> bool:
        """The account setting ``enable_schema_patches`` (SchemaApiError when refused)."""
        data = self.call("GET", PATCH_SETTING, what="reading the account setting")
        value = data.get("value") if isinstance(data, dict) else data
        return value is True or str(value).lower() == "true"

    # -- writes ------------------------------------------------------------------------------
    def create_field(self, body: dict[str, Any], patch_id: str | None = None) -> None:
        """Create (upsert) a user field, directly or inside a patch."""
        path = f"{PATCH}/{quote(patch_id)}/field" if patch_id else f"{SCHEMA}/field"
        self.call("POST", path, body, what=f"creating user field '{body['id']}'")

    def create_mapping(self, body: dict[str, Any], patch_id: str | None = None) -> None:
        """Create a mapping from a stream key to a field, directly or inside a patch."""
        path = f"{PATCH}/{quote(patch_id)}/mapping" if patch_id else f"{SCHEMA}/mapping"
        what = f"creating the mapping of '{body['field']}' from stream '{body['stream']}'"
        self.call("POST", path, body, what=what)

    def publish(self, tag: str, description: str) -> None:
        """Publish the draft."""
        body = {"tag": tag, "description": description}
        self.call("POST", f"{SCHEMA}/publish", body, what=f"publishing the schema as '{tag}'")

    def create_patch(self, tag: str, description: str) -> str:
        """Open a schema patch; returns its id."""
        body = {"tag": tag, "description": description}
        data = self.call("POST", PATCH, body, what=f"creating schema patch '{tag}'")
        patch_id = data.get("id") if isinstance(data, dict) else None
        if not patch_id:
            raise SchemaApiError(f"creating schema patch '{tag}': Lytics answered without an id")
        return str(patch_id)

    def apply_patch(self, patch_id: str) -> None:
        """Apply a schema patch (its changes take effect)."""
        self.call("POST", f"{PATCH}/{quote(patch_id)}/apply", what=f"applying patch {patch_id}")

    # -- transport ---------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None, *, what: str) -> Any:
        """One API call; returns the envelope's ``data``. Transient failures are retried."""
        url = self.api_url + path
        attempt = 0
        while True:
            attempt += 1
            wait: float | None = None
            try:
                response = self.session.request(
                    method, url, json=body, timeout=self.timeout_seconds
                )
            except requests.Timeout:
                problem = f"timed out after {self.timeout_seconds}s"
            except requests.ConnectionError as exc:
                problem = f"connection error ({type(exc).__name__}) reaching {self.api_url}"
            else:
                status = response.status_code
                payload = _envelope(response)
                if 200 <= status < 300:
                    return payload.get("data")
                if status not in _RETRYABLE:
                    hint = _HINTS.get(status, "unexpected answer")
                    raise SchemaApiError(
                        f"{what} failed with HTTP {status}: {hint}. {lytics_said(payload)}",
                        status=status,
                    )
                problem = f"HTTP {status}. {lytics_said(payload)}"
                wait = parse_retry_after(response.headers.get("Retry-After"))
            if attempt > self.retry.max_retries:
                raise SchemaApiError(
                    f"{what} failed after {attempt} attempts (api_url {self.api_url}); "
                    f"last: {problem}"
                )
            delay = self.retry.backoff(attempt)
            if wait is not None:
                delay = max(delay, min(wait, self.retry.max_retry_after_seconds))
            logger.warning(
                "%s: %s; retry %d of %d in %.2fs",
                what,
                problem,
                attempt,
                self.retry.max_retries,
                delay,
            )
            self._sleep(delay)
