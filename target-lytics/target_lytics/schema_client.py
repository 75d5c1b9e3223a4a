"""LyticsSchemaClient: the v2 Schema API of the ``user`` table and the schema-patch setting.

Same conventions as :class:`target_lytics.client.LyticsClient`: the raw token in the
``Authorization`` header only, 429/5xx/timeouts/connection errors retried with full-jitter backoff
honouring ``Retry-After``, redirects not followed. Calls and shapes follow Lytics' published v2
Schema API (``openapi/lytics-schema-api-openapi.yml`` in ``api-evangelist/lytics``): a success is
``models.ApiResponse`` (``application/json``, ``{"data", "status", "request_id"}``) whose ``data``
has the shape the call expects (a list of ``models.Field`` / ``models.Mapping``, a
``models.VersionDiff``, a ``models.RankList``, a ``models.SchemaResponse``); anything else (an HTML
page, an empty body, ``{"status": 400}`` in a 200) raises :class:`SchemaApiError` naming the URL
and what came back. A refusal (``models.ApiErrorResponse``, or the older top-level ``message``)
raises :class:`SchemaApiError`, whose message ends with Lytics' own words and the ``request_id``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests

from target_lytics.client import (
    describe_answer,
    json_envelope,
    lytics_error_text,
    lytics_session,
    redact,
    success_status,
    url_userinfo_problem,
)
from target_lytics.errors import LyticsError
from target_lytics.retries import RetryPolicy, Transient, parse_retry_after

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


def _error_payload(response: requests.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {"message": response.text.strip()[:200]}
    return payload if isinstance(payload, dict) else {}


def lytics_said(payload: dict[str, Any]) -> str:
    """``Lytics: <message> [code] (request_id=<id>)``, the tail of every schema error."""
    text = lytics_error_text(payload) or "no message"
    request_id = payload.get("request_id")
    return f"Lytics: {text}" + (f" (request_id={request_id})" if request_id else "")


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
        problem = url_userinfo_problem(api_url)
        if problem is not None:
            raise SchemaApiError(f"`api_url` {problem}.")
        self.api_url = api_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.retry = retry
        self._sleep = sleep
        self.session = lytics_session(api_token)
        #: Only to keep it out of quoted answers.
        self._secret = api_token.strip()

    def close(self) -> None:
        """Close the session's pooled connections."""
        self.session.close()

    # -- reads -------------------------------------------------------------------------------
    def fields(self) -> dict[str, dict[str, Any]]:
        """The account's user fields by id (published or in the draft)."""
        data = self.call("GET", f"{SCHEMA}/field", what="reading the user fields", expect=list)
        return {str(f["id"]): f for f in data if isinstance(f, dict) and "id" in f}

    def mappings(self) -> list[dict[str, Any]]:
        """The account's user-field mappings."""
        what = "reading the user-field mappings"
        data = self.call("GET", f"{SCHEMA}/mapping", what=what, expect=list)
        return [m for m in data if isinstance(m, dict)]

    def compare(self) -> dict[str, Any]:
        """The ``models.VersionDiff`` of the latest version against the previous one.

        When a draft exists, that is the draft against the live version.
        """
        return dict(
            self.call("GET", f"{SCHEMA}/compare", what="reading the unpublished draft", expect=dict)
        )

    def rank(self) -> list[str] | None:
        """The identifier ranking (``models.RankList.fields``); None when Lytics has none (404)."""
        try:
            data = self.call("GET", f"{SCHEMA}/rank", what="reading the identifier ranking")
        except SchemaApiError as exc:
            if exc.status == 404:
                return None
            raise
        fields = data.get("fields") if isinstance(data, dict) else None
        return [str(f) for f in fields] if isinstance(fields, list) else []

    def schema_patches_enabled(self) -> bool:
        """The account setting ``enable_schema_patches`` (SchemaApiError when refused)."""
        data = self.call("GET", PATCH_SETTING, what="reading the account setting")
        value = data.get("value") if isinstance(data, dict) else data
        return value is True or str(value).lower() == "true"

    # -- writes ------------------------------------------------------------------------------
    def create_field(self, body: dict[str, Any], patch_id: str | None = None) -> None:
        """Create (upsert) a user field, directly or inside a patch."""
        path = f"{PATCH}/{quote(patch_id)}/field" if patch_id else f"{SCHEMA}/field"
        self.call("POST", path, body, what=f"creating user field '{body['id']}'", expect=dict)

    def create_mapping(self, body: dict[str, Any], patch_id: str | None = None) -> None:
        """Create a mapping from a stream key to a field, directly or inside a patch."""
        path = f"{PATCH}/{quote(patch_id)}/mapping" if patch_id else f"{SCHEMA}/mapping"
        what = f"creating the mapping of '{body['field']}' from stream '{body['stream']}'"
        self.call("POST", path, body, what=what, expect=dict)

    def publish(self, tag: str, description: str) -> None:
        """Publish the draft."""
        body = {"tag": tag, "description": description}
        # Answers the new live models.SchemaResponse.
        what = f"publishing the schema as '{tag}'"
        self.call("POST", f"{SCHEMA}/publish", body, what=what, expect=dict)

    def create_patch(self, tag: str, description: str) -> str:
        """Open a schema patch; returns its id."""
        body = {"tag": tag, "description": description}
        data = self.call("POST", PATCH, body, what=f"creating schema patch '{tag}'", expect=dict)
        patch_id = data.get("id") if isinstance(data, dict) else None
        if not patch_id:
            raise SchemaApiError(f"creating schema patch '{tag}': Lytics answered without an id")
        return str(patch_id)

    def apply_patch(self, patch_id: str) -> None:
        """Apply a schema patch (its changes take effect)."""
        self.call("POST", f"{PATCH}/{quote(patch_id)}/apply", what=f"applying patch {patch_id}")

    # -- transport ---------------------------------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        what: str,
        expect: type | None = None,
    ) -> Any:
        """One API call; returns the envelope's ``data`` (of type ``expect`` when given).

        Transient failures are retried; an answer that is not Lytics' success envelope is not.
        """
        url = self.api_url + path

        def attempt(number: int) -> Any:
            """One call: the data, a fatal SchemaApiError, or Transient (retried)."""
            try:
                response = self.session.request(
                    method, url, json=body, timeout=self.timeout_seconds, allow_redirects=False
                )
            except requests.Timeout as exc:
                raise Transient(f"timed out after {self.timeout_seconds}s") from exc
            except requests.ConnectionError as exc:
                raise Transient(
                    f"connection error ({type(exc).__name__}) reaching {self.api_url}"
                ) from exc
            status = response.status_code
            if 200 <= status < 400:
                return self._data(response, url, what, expect)
            payload = _error_payload(response)
            if status not in _RETRYABLE:
                hint = _HINTS.get(status, "unexpected answer")
                raise SchemaApiError(
                    f"{what} failed with HTTP {status}: {hint}. "
                    f"{redact(lytics_said(payload), self._secret)}",
                    status=status,
                )
            raise Transient(
                f"HTTP {status}. {redact(lytics_said(payload), self._secret)}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )

        def on_retry(error: Transient, retry: int, delay: float) -> None:
            logger.warning(
                "%s: %s; retry %d of %d in %.2fs",
                what,
                error.problem,
                retry,
                self.retry.max_retries,
                delay,
            )

        def give_up(error: Transient, attempts: int) -> SchemaApiError:
            return SchemaApiError(
                f"{what} failed after {attempts} attempts (api_url {self.api_url}); "
                f"last: {error.problem}"
            )

        return self.retry.call(attempt, on_retry=on_retry, give_up=give_up, sleep=self._sleep)

    def _data(self, response: requests.Response, url: str, what: str, expect: type | None) -> Any:
        """The ``data`` of a verified success envelope (SchemaApiError otherwise)."""
        payload = json_envelope(response) if response.status_code < 300 else None
        if (
            payload is not None
            and success_status(payload.get("status"))
            and "data" in payload
            and (expect is None or isinstance(payload["data"], expect))
        ):
            return payload["data"]
        shape = f" whose data is a {'list' if expect is list else 'object'}" if expect else ""
        raise SchemaApiError(
            f"{what}: {url} answered {describe_answer(response, self._secret)}, which is not "
            f"Lytics' success envelope (JSON{shape}), so nothing is taken as done. Check api_url "
            "(the API, e.g. https://api.lytics.io, not the web app's address).",
            status=response.status_code,
        )
