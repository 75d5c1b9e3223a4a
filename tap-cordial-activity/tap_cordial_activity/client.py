"""CordialClient: the few Cordial v2 calls the tap makes, with retries and clear errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests

from tap_cordial_activity.errors import CordialError
from tap_cordial_activity.retries import RetryPolicy, Transient, parse_retry_after

__all__ = ["CordialClient", "CordialError", "RetryPolicy"]

#: Job statuses that mean "still running" (anything else but Done/Failed is treated alike).
RUNNING_STATUSES = frozenset({"Scheduled", "Pending", "Processing", "Throttled"})
_AUTH_HINT = (
    " Check the Cordial API key (`api_key`) and that this machine's public IP address is in the"
    " key's IP allow-list, and that the key may call this endpoint."
)


def masked(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with each secret replaced by ``***``.

    Cordial may echo what it was sent (say a destination's password in a 400), and its words go
    into log lines and errors.
    """
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def cordial_message(response: requests.Response, secrets: tuple[str, ...]) -> str:
    """What Cordial said in an error body (see :func:`_said`), with ``secrets`` hidden."""
    return masked(_said(response), secrets)


def _said(response: requests.Response) -> str:
    """What Cordial said in an error body: ``message``, a string ``error``, or the raw text."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:500] if text else response.reason or "no message"
    if isinstance(body, Mapping):
        parts = []
        if isinstance(body.get("message"), str):
            parts.append(body["message"])
        elif isinstance(body.get("error"), str):
            parts.append(body["error"])
        if isinstance(body.get("errorKey"), str):
            parts.append(f"({body['errorKey']})")
        if parts:
            return " ".join(parts)
    return str(body)[:500]


class TransientAnswer(Transient):
    """A 429 or 5xx answer: repeated, and described from ``response`` once retries run out."""

    def __init__(
        self, response: requests.Response, secrets: tuple[str, ...], *, retry_after: float | None
    ) -> None:
        """Keep the answer for the final error message (``secrets`` hidden in its words)."""
        said = cordial_message(response, secrets)
        super().__init__(f"HTTP {response.status_code} ({said})", retry_after=retry_after)
        self.response = response


class CordialClient:
    """Cordial v2 API over ``requests``; Basic auth with the key as user name, empty password."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        retry: RetryPolicy,
        timeout_seconds: float,
        logger: logging.Logger | None = None,
        sleep: Callable[[float], None] = time.sleep,
        secrets: tuple[str, ...] = (),
    ) -> None:
        """Prepare a session; nothing is sent yet. ``secrets`` are hidden in Cordial's words."""
        self.api_url = api_url.rstrip("/")
        self.secrets = (api_key, *secrets)
        self.retry = retry
        self.timeout_seconds = timeout_seconds
        self.logger = logger or logging.getLogger(__name__)
        self.sleep = sleep
        self.session = requests.Session()
        # The key travels only in the Authorization header, never in a URL or a log line.
        self.session.auth = (api_key, "")
        self.session.headers["Accept"] = "application/json"

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        what: str,
        job_id: str | None = None,
        before_retry: Callable[[], None] | None = None,
    ) -> Any:
        """Send one call with retries; return the decoded JSON body or raise :class:`CordialError`.

        ``what`` names the call in messages (e.g. "creating the export job"); ``before_retry``
        runs before each repeated attempt (it may change ``json_body``).
        """
        url = f"{self.api_url}/{path.lstrip('/')}"
        job = f" (job {job_id})" if job_id else ""
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and before_retry is not None:
                before_retry()
            try:
                response = self.session.request(
                    method, url, json=json_body, timeout=self.timeout_seconds
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise Transient(type(exc).__name__) from exc
            status = response.status_code
            if status < 400:
                try:
                    return response.json()
                except ValueError as exc:
                    raise CordialError(
                        f"Cordial answered {what}{job} with HTTP {status} but a body that is not "
                        f"JSON: {masked(response.text[:200], self.secrets)!r}",
                        status=status,
                        job_id=job_id,
                    ) from exc
            if status == 429 or status >= 500:
                # Cordial says when to come back (429); the backoff covers a missing header.
                after = parse_retry_after(response.headers.get("Retry-After"))
                raise TransientAnswer(
                    response, self.secrets, retry_after=after if status == 429 and after else None
                )
            said = cordial_message(response, self.secrets)
            raise self._error(status, method, url, what, job, said, job_id)

        def warn(failure: Transient, retry: int, delay: float) -> None:
            self.logger.warning(
                "Cordial %s %s: %s; retry %d/%d in %.1fs",
                method, path, failure.problem, retry, self.retry.max_retries, delay,
            )

        try:
            return self.retry.call(attempt, on_retry=warn)
        except Transient as failure:
            if not isinstance(failure, TransientAnswer):
                raise CordialError(
                    f"Cordial API unreachable while {what}{job}: {method} {url} failed "
                    f"{failure.attempts} times, last with {failure.problem}.",
                    job_id=job_id,
                ) from failure.__cause__
            response = failure.response
            error = self._error(
                response.status_code, method, url, what, job,
                cordial_message(response, self.secrets), job_id, gave_up=failure.attempts,
            )
            raise error from None

    @staticmethod
    def _error(
        status: int, method: str, url: str, what: str, job: str, said: str, job_id: str | None,
        gave_up: int = 0,
    ) -> CordialError:
        """The error of a call Cordial refused with HTTP ``status``."""
        message = f"Cordial API error while {what}{job}: HTTP {status} from {method} {url}: {said}."
        if gave_up:
            message += f" Gave up after {gave_up} attempts."
        if status in {401, 403}:
            message += _AUTH_HINT
        return CordialError(message, status=status, job_id=job_id)

    def health(self) -> Any:
        """``GET /health``: a cheap check of the URL, the key and its IP allow-list.

        Not in Cordial's published v2 definitions (an account may answer 404): see
        :meth:`check_access`.
        """
        return self.request("GET", "health", what="checking /health")

    def list_one_job(self) -> Any:
        """``GET /jobs?page=1&per_page=1``: read-only, one job at most.

        ``getjobs`` in Cordial's v2 definitions: an array of ``JobJ_2``, paged by ``page`` and
        ``per_page``.
        """
        return self.request("GET", "jobs?page=1&per_page=1", what="listing one job")

    def check_access(self) -> str:
        """Check the URL, the key and its allow-list without creating anything.

        Returns the call that answered.
        ``/health`` first; when it answers 404 (no such route) or 403 (the key may not call
        it), the documented ``GET /jobs`` limited to one job, a call the tap's key needs
        anyway for polling. A 401 (wrong key) fails at once.
        """
        try:
            self.health()
        except CordialError as exc:
            if exc.status not in {403, 404}:
                raise
            self.logger.info(
                "Cordial /health answered HTTP %d (it is not in Cordial's published API); "
                "checking with GET /jobs (one job) instead", exc.status,
            )
            try:
                answer = self.list_one_job()
            except CordialError as listing:
                # getjobs answers 404 RecordNotFound where there is no job: the key got through.
                if listing.status != 404 or "(RECORD_NOT_FOUND)" not in str(listing):
                    raise
                answer = []
            if not isinstance(answer, list):
                raise CordialError(
                    f"Cordial answered GET {self.api_url}/jobs with "
                    f"{masked(str(answer)[:200], self.secrets)!r} "
                    "instead of a list of jobs: is `api_url` Cordial's API "
                    "(e.g. https://api.cordial.io/v2)?"
                ) from exc
            return "/jobs"
        return "/health"

    def create_export(self, body: dict[str, Any], new_name: Callable[[], str]) -> str:
        """``POST /contactactivityexport``; return the job id.

        Each retry goes out under a new ``name`` from ``new_name()``: an attempt whose answer was
        lost may still have started a job, and its files must not be taken for this job's (the
        tap reads the files whose names begin with the export name). ``body["name"]`` is left as
        the returned job's name.
        """

        def rename() -> None:
            body["name"] = new_name()
            self.logger.info("The export is sent again as %r", body["name"])

        answer = self.request(
            "POST", "contactactivityexport", json_body=body,
            what=f"creating the export job {body.get('name')!r}", before_retry=rename,
        )
        job_id = answer.get("jobId") if isinstance(answer, Mapping) else None
        if not job_id:
            raise CordialError(
                f"Cordial accepted the export {body.get('name')!r} but returned no jobId: "
                f"{masked(str(answer)[:200], self.secrets)}"
            )
        return str(job_id)

    def get_job(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/{jobId}``."""
        answer = self.request("GET", f"jobs/{job_id}", what="polling", job_id=job_id)
        if not isinstance(answer, dict):
            raise CordialError(
                f"Cordial job {job_id}: unexpected answer "
                f"{masked(str(answer)[:200], self.secrets)}"
            )
        return answer

    def poll_job(self, job_id: str, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One poll; logs the status when it changed since ``previous``; raises on ``Failed``."""
        job = self.get_job(job_id)
        status = job.get("status")
        if previous is None or job_progress(job) != job_progress(previous):
            self.logger.info(
                "Cordial job %s: %s, %s of %s items",
                job_id, status, job.get("completedItems", "?"), job.get("totalItems", "?"),
            )
        if status == "Failed":
            raise CordialError(
                f"Cordial export job {job_id} failed: "
                f"{masked(job_result_message(job), self.secrets)}",
                job_id=job_id,
            )
        if status != "Done" and status not in RUNNING_STATUSES and (
            previous is None or previous.get("status") != status
        ):
            self.logger.warning("Cordial job %s has unknown status %r", job_id, status)
        return job

    def wait_for_job(
        self,
        job_id: str,
        *,
        poll_interval_seconds: float,
        timeout_seconds: float,
    ) -> dict[str, Any]:
        """Poll until the job is ``Done``; raise :class:`CordialError` on ``Failed`` or timeout."""
        deadline = time.monotonic() + timeout_seconds
        job: dict[str, Any] | None = None
        while True:
            job = self.poll_job(job_id, job)
            if job.get("status") == "Done":
                return job
            if time.monotonic() + poll_interval_seconds > deadline:
                raise job_timeout_error(job_id, job, timeout_seconds)
            self.sleep(poll_interval_seconds)


def job_progress(job: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """What the job-status line shows: status, completed and total items."""
    return (job.get("status"), job.get("completedItems"), job.get("totalItems"))


def reported_count(job: Mapping[str, Any]) -> int | None:
    """How many records Cordial says a Done job exported (None when it says nothing).

    ``result.totalRecords``, else ``totalItems``.
    """
    result = job.get("result")
    for value in (
        result.get("totalRecords") if isinstance(result, Mapping) else None,
        job.get("totalItems"),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def job_timeout_error(job_id: str, job: Mapping[str, Any], timeout_seconds: float) -> CordialError:
    """The error of a job that did not finish within ``job_timeout_seconds``."""
    return CordialError(
        f"Cordial export job {job_id} did not finish within {timeout_seconds:g}s "
        f"(`job_timeout_seconds`); last status {job.get('status')!r}, "
        f"{job.get('completedItems', '?')} of {job.get('totalItems', '?')} items.",
        job_id=job_id,
    )


def job_result_message(job: Mapping[str, Any]) -> str:
    """What Cordial said about a failed job (its ``result``), as text.

    ``ResultJ_2`` (v2 definitions) types ``result.error`` as a count of records, not a message:
    only text (or a list of messages) is taken as what Cordial said.
    """
    result = job.get("result")
    if isinstance(result, Mapping):
        for key in ("message", "error", "errors", "reason"):
            value = result.get(key)
            if value and isinstance(value, str | list):
                return str(value)
        return str(dict(result)) if result else "no result message"
    return str(result) if result else "no result message"
