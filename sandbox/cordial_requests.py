"""Request checks of the Cordial stand-in: export bodies validated as Cordial validates them, and
its rate limits (429 with ``Retry-After`` and ``X-Rate-Limit-*``)."""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from datetime import datetime
from typing import Any

from sandbox.events import parse_cordial_time

_NAME_RE = re.compile(r"^[A-Za-z0-9-]+$")
_REQUIRED = (
    "name",
    "exportType",
    "destination",
    "selected_timeframe_start",
    "selected_timeframe_end",
)
_EXPORT_TYPES = ("json", "csv")


class ApiError(Exception):
    """An error answer in Cordial's ``{"error": true, "errorKey", "message"}`` shape."""

    def __init__(
        self, status: int, error_key: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_key = error_key
        self.message = message
        self.headers = dict(headers or {})


class RateWindow:
    """Requests counted over a sliding window; above the limit they get Cordial's 429."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: deque[float] = deque()

    def take(self, limit: float | None, window_seconds: float) -> dict[str, str]:
        """Count one request; returns the ``X-Rate-Limit-*`` headers, or raises the 429.

        ``limit`` None (or 0) means no limit and no headers. A refused request is not counted.
        """
        if not limit:
            return {}
        now = time.monotonic()
        with self._lock:
            while self._times and now - self._times[0] >= window_seconds:
                self._times.popleft()
            if len(self._times) >= limit:
                wait = max(1, math.ceil(window_seconds - (now - self._times[0])))
                headers = {
                    "Retry-After": str(wait),
                    "X-Rate-Limit-Limit": f"{limit:g}",
                    "X-Rate-Limit-Remaining": "0",
                    "X-Rate-Limit-Reset": str(int(time.time()) + wait),
                }
                raise ApiError(
                    429, "RATE_LIMIT_EXCEEDED", "Too many requests: rate limit exceeded", headers
                )
            self._times.append(now)
            reset = math.ceil(window_seconds - (now - self._times[0]))
            return {
                "X-Rate-Limit-Limit": f"{limit:g}",
                "X-Rate-Limit-Remaining": f"{max(0, limit - len(self._times)):g}",
                "X-Rate-Limit-Reset": str(int(time.time()) + reset),
            }



def validate_export(
    body: dict[str, Any], *, s3_keys_required: bool = False
) -> tuple[datetime, datetime, frozenset[str] | None, bool]:
    """Check an export request as Cordial does; returns (start, end, selected actions, whether
    they came from ``selected_action_names``).

    Follows ``SourceCAE_2`` and the 400/406/415 answers of ``POST /v2/contactactivityexport`` in
    Cordial's v2 definitions (messages as the definitions list them where they list one).
    """
    for name in _REQUIRED:
        if body.get(name) in (None, ""):
            raise ApiError(
                406, "INVALID_EXPORT_CONFIGURATION", f"Field '{name}' should be specified"
            )
    if not isinstance(body["name"], str) or not _NAME_RE.match(body["name"]):
        raise ApiError(
            406,
            "INVALID_EXPORT_CONFIGURATION",
            "Field 'name' may contain only letters, digits and dashes",
        )
    if body["exportType"] not in _EXPORT_TYPES:
        raise ApiError(
            406, "INVALID_EXPORT_CONFIGURATION", "Field 'exportType' must be one of: json, csv"
        )
    destination = body["destination"]
    if not isinstance(destination, dict):
        raise ApiError(400, "INVALID_DESTINATION", "The destination field must be an object.")
    # DestinationObject documents "SFTP"/"S3" (v2) and the enum values "sftp"/"s3": either case.
    kind = str(destination.get("type", "sftp")).lower()
    if kind == "s3":
        validate_s3_destination(destination, keys_required=s3_keys_required)
    elif kind != "sftp":
        raise ApiError(400, "INVALID_DESTINATION", "The destination.type must be sftp or s3.")
    else:
        for name in ("server", "username", "path"):
            if not destination.get(name):
                raise ApiError(
                    400, "INVALID_DESTINATION", f"The destination.{name} field is required."
                )
        if not destination.get("password") and not destination.get("savedKey"):
            raise ApiError(
                400,
                "INVALID_DESTINATION",
                "The destination.password or destination.savedKey field is required.",
            )
    try:
        start = parse_cordial_time(str(body["selected_timeframe_start"]))
        end = parse_cordial_time(str(body["selected_timeframe_end"]))
    except ValueError as exc:
        raise ApiError(
            406, "INVALID_EXPORT_CONFIGURATION", f"Timeframe is not an ISO 8601 date-time: {exc}"
        ) from exc
    if end < start:
        raise ApiError(
            406,
            "INVALID_EXPORT_CONFIGURATION",
            "'selected_timeframe_end' cannot be in past in comparison with "
            "'selected_timeframe_start'",
        )
    single, several = body.get("selected_action_name"), body.get("selected_action_names")
    if single is not None and several is not None:
        raise ApiError(
            406,
            "INVALID_EXPORT_CONFIGURATION",
            "Please use only one from existing filters 'selected_action_name' OR "
            "'selected_action_names'",
        )
    if several is not None:
        if not isinstance(several, list) or not all(isinstance(a, str) for a in several):
            raise ApiError(
                406, "INVALID_EXPORT_CONFIGURATION", "Incorrect format for 'selected_action_names'"
            )
        actions: frozenset[str] | None = frozenset(several)
    elif single is not None:
        actions = frozenset([str(single)])
    else:
        actions = None
    limit = body.get("limitRecordsPerFile", 0)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ApiError(
            406,
            "INVALID_EXPORT_CONFIGURATION",
            "Field 'limitRecordsPerFile' must be an integer >= 0",
        )
    return start, end, actions, several is not None


def validate_s3_destination(destination: dict[str, Any], *, keys_required: bool) -> None:
    """An S3 ``DestinationObject``: ``aws_bucket``, ``aws_region`` and ``path`` are required.

    The keys are "Required if destination is S3 and IAM role is not configured"
    (``DestinationObject``); the older destination object marks them "(required for s3)".
    ``keys_required`` is that reading; otherwise an export without keys is written with the
    account's IAM role, and a key given without its other half is still refused. Messages are
    the ones the definitions list for 400.
    """
    for name in ("aws_bucket", "aws_region", "path"):
        if not destination.get(name):
            label = name.replace("_", " ")
            raise ApiError(
                400, "INVALID_DESTINATION", f"The destination.{label} field is required."
            )
    keys = ("aws_access_key_id", "aws_secret_access_key")
    given = [k for k in keys if destination.get(k)]
    if keys_required or given:
        for name in keys:
            if not destination.get(name):
                label = name.replace("_", " ")
                raise ApiError(
                    400, "INVALID_DESTINATION", f"The destination.{label} field is required."
                )
