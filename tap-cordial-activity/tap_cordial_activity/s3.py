"""S3Store: the export files in an S3 bucket under a prefix, read with ranged GETs (boto3).

Calls follow Amazon S3's API: ``ListObjectsV2`` (paginated, ``Delimiter=/``: the files directly
under the prefix, as the SFTP side lists one folder), ``GetObject`` with ``Range: bytes=a-b``
(``Content-Range`` gives the object's size; 416 ``InvalidRange`` means the offset is at its end),
``HeadObject`` and ``DeleteObject``. An S3-compatible store is reached through
``s3_endpoint_url``. Cordial writes into ``aws_bucket`` under ``path`` (its ``DestinationObject``).

boto3 retries the requests themselves (its "standard" mode, ``max_retries``); a connection that
drops while an object's bytes stream is retried here, from the byte reached, with the tap's
backoff (:class:`~tap_cordial_activity.retries.RetryPolicy`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tap_cordial_activity.errors import S3Error, StoreError
from tap_cordial_activity.export_store import CHECK_RETRIES, CHECK_TIMEOUT_SECONDS
from tap_cordial_activity.retries import RetryPolicy, Transient
from tap_cordial_activity.settings import number

#: Bytes asked for per ranged GET: few requests per file, each streamed in 1 MB reads.
RANGE_BYTES = 8 << 20
#: Keys per ``ListObjectsV2`` page (S3's maximum).
LIST_PAGE_KEYS = 1000

_REGION_HINT = "the bucket is in another region: check `s3_region`"
#: What to check, by the S3 error code (Amazon S3's "Error responses" list).
_HINTS = {
    "NoSuchBucket": "the bucket does not exist: check `s3_bucket` (and `s3_endpoint_url` for an "
    "S3-compatible store)",
    "InvalidAccessKeyId": "the access key is unknown: check `s3_access_key_id` (or the default "
    "AWS credential chain)",
    "SignatureDoesNotMatch": "the secret key does not match the access key: check "
    "`s3_secret_access_key`",
    "ExpiredToken": "the session token has expired: renew the credentials",
    "PermanentRedirect": _REGION_HINT,
    "AuthorizationHeaderMalformed": _REGION_HINT,
    "IllegalLocationConstraintException": _REGION_HINT,
}
_DENIED_HINT = (
    "access denied: check the tap's credentials (`s3_access_key_id` / `s3_secret_access_key`, or "
    "the default AWS credential chain when they are empty), `s3_region`, and that the bucket "
    "policy allows s3:ListBucket on the prefix and s3:GetObject (s3:DeleteObject with "
    "`delete_exported_files`)"
)


@dataclass(frozen=True)
class S3Settings:
    """Which bucket and prefix, and how the tap reads them."""

    bucket: str
    prefix: str
    region: str | None = None
    endpoint_url: str | None = None
    #: Empty: boto3's default credential chain (environment, ~/.aws, instance or task role).
    access_key_id: str | None = None
    # Out of the repr, so no log line or traceback can show it.
    secret_access_key: str | None = field(default=None, repr=False)
    timeout_seconds: float = 60.0
    retry: RetryPolicy = field(
        # The settings' defaults, read the one way the tap reads the retry settings.
        default_factory=lambda: RetryPolicy.from_config({})
    )

    @property
    def key_prefix(self) -> str:
        """The prefix as keys begin with it: ``exports/cordial/`` (``""``: the bucket's root)."""
        prefix = self.prefix.strip("/")
        return f"{prefix}/" if prefix else ""


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What a dropped or stalled connection raises while a response streams."""
    import urllib3.exceptions
    from botocore import exceptions

    return (
        exceptions.HTTPClientError,  # ResponseStreamingError, ConnectionClosedError, timeouts
        exceptions.ConnectionError,
        exceptions.IncompleteReadError,
        urllib3.exceptions.HTTPError,
        OSError,
    )


class S3Store:
    """``s3_prefix`` in ``s3_bucket``: list, stream, delete."""

    error: type[StoreError] = S3Error

    def __init__(self, settings: S3Settings, logger: logging.Logger | None = None) -> None:
        """Nothing connects until the first call."""
        self.settings = settings
        self.logger = logger or logging.getLogger(__name__)
        self._client: Any = None
        self.connection_errors = _connection_errors()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], logger: logging.Logger) -> S3Store:
        """The store the settings describe."""
        return cls(
            S3Settings(
                bucket=str(config["s3_bucket"]),
                prefix=str(config.get("s3_prefix") or ""),
                region=config.get("s3_region") or None,
                endpoint_url=config.get("s3_endpoint_url") or None,
                access_key_id=config.get("s3_access_key_id") or None,
                secret_access_key=config.get("s3_secret_access_key") or None,
                timeout_seconds=number(config, "request_timeout_seconds"),
                retry=RetryPolicy.from_config(config),
            ),
            logger,
        )

    @property
    def location(self) -> str:
        """``S3 bucket 'b' under prefix 'p/'``."""
        return f"S3 bucket {self.settings.bucket!r} under prefix {self.settings.key_prefix!r}"

    @property
    def client(self) -> Any:
        """The boto3 S3 client (built on first use; boto3 is imported only for S3)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            s = self.settings
            self._client = boto3.session.Session().client(
                "s3",
                region_name=s.region,
                endpoint_url=s.endpoint_url,
                aws_access_key_id=s.access_key_id,
                aws_secret_access_key=s.secret_access_key,
                config=Config(
                    connect_timeout=s.timeout_seconds,
                    read_timeout=s.timeout_seconds,
                    retries={"total_max_attempts": s.retry.max_retries + 1, "mode": "standard"},
                ),
            )
        return self._client

    def problem(self, exc: Exception, doing: str) -> S3Error:
        """One line naming the bucket and prefix, what failed and what to check (no secret)."""
        from botocore import exceptions

        s = self.settings
        where = f"S3 bucket {s.bucket!r} (prefix {s.key_prefix!r})"
        if isinstance(exc, exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            said = str(error.get("Message") or "").strip()
            hint = _HINTS.get(code) or (
                _DENIED_HINT if code == "AccessDenied" or status == 403 else ""
            )
            if not hint and status in (301, 400) and not code:
                hint = _REGION_HINT
            detail = f"HTTP {status} {code}".strip() + (f" ({said})" if said else "")
            return S3Error(f"{doing} in {where} failed: {detail}" + (f"; {hint}" if hint else ""))
        if isinstance(exc, exceptions.NoCredentialsError):
            return S3Error(
                f"{doing} in {where} failed: no AWS credentials found; set `s3_access_key_id` and "
                "`s3_secret_access_key`, or configure the default AWS credential chain "
                "(environment, ~/.aws, an instance or task role)"
            )
        if isinstance(exc, exceptions.EndpointConnectionError | exceptions.ConnectTimeoutError):
            return S3Error(
                f"{doing} in {where} failed: cannot reach the S3 endpoint "
                f"({type(exc).__name__}); check `s3_endpoint_url`, `s3_region` and the network"
            )
        return S3Error(f"{doing} in {where} failed: {type(exc).__name__}: {exc}")

    def _call(self, doing: str, operation: str, **params: Any) -> Any:
        """One S3 request (boto3 retries it); errors become :meth:`problem`."""
        from botocore import exceptions

        try:
            return getattr(self.client, operation)(Bucket=self.settings.bucket, **params)
        except (exceptions.BotoCoreError, exceptions.ClientError) as exc:
            raise self.problem(exc, doing) from exc

    def connect(self) -> None:
        """List one key under the prefix: a wrong bucket or denied access fails here, early."""
        self._call(
            "Listing", "list_objects_v2", Prefix=self.settings.key_prefix, MaxKeys=1
        )

    def list_files(self) -> dict[str, int]:
        """Objects directly under the prefix (not in deeper "folders"): name -> size."""
        prefix = self.settings.key_prefix
        files: dict[str, int] = {}
        token: str | None = None
        while True:
            page = self._call(
                "Listing", "list_objects_v2", Prefix=prefix, Delimiter="/",
                MaxKeys=LIST_PAGE_KEYS, **({"ContinuationToken": token} if token else {}),
            )
            for item in page.get("Contents", ()):
                name = str(item["Key"])[len(prefix):]
                if name:  # the prefix itself, as a "folder" object
                    files[name] = int(item.get("Size") or 0)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return files

    def path(self, name: str) -> str:
        """The object's key: ``{prefix}/{name}``."""
        return f"{self.settings.key_prefix}{name}"

    def open(self, name: str, offset: int = 0) -> S3Object:
        """A streaming reader of the object ``name`` under the prefix."""
        return S3Object(self, self.path(name), offset)

    def remove(self, path: str) -> bool:
        """Delete the object ``path`` (a key): True, or False when it is already gone.

        ``DeleteObject`` answers 204 whether or not the key exists, so ``HeadObject`` asks first.
        """
        from botocore import exceptions

        try:
            self.client.head_object(Bucket=self.settings.bucket, Key=path)
        except exceptions.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise self.problem(exc, f"Deleting {path!r}") from exc
        except exceptions.BotoCoreError as exc:
            raise self.problem(exc, f"Deleting {path!r}") from exc
        self._call(f"Deleting {path!r}", "delete_object", Key=path)
        return True

    def check(self) -> str:
        """List under the prefix with a short timeout and one retry."""
        s = self.settings
        probe = S3Store(
            replace(
                s,
                timeout_seconds=min(s.timeout_seconds, CHECK_TIMEOUT_SECONDS),
                retry=replace(s.retry, max_retries=min(s.retry.max_retries, CHECK_RETRIES)),
            ),
            self.logger,
        )
        try:
            files = probe.list_files()
        except S3Error as exc:
            raise S3Error(f"Connection check failed: {exc}") from exc
        finally:
            probe.close()
        return (
            f"S3 bucket {s.bucket!r}: listing under prefix {s.key_prefix!r} OK, "
            f"{len(files)} file(s)"
        )

    def close(self) -> None:
        """Close the client's connections (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


class S3Object:
    """One object read in order with ranged GETs; a dropped stream resumes at the byte reached.

    Memory is one read's worth whatever the object's size: each GET's body is streamed. At the
    end of what the last ``Content-Range`` said, one more GET at the offset finds the end (416)
    or bytes written since (an object replaced by a longer one), as the SFTP reader asks once
    more at its end.
    """

    def __init__(self, store: S3Store, key: str, offset: int = 0) -> None:
        """Nothing is requested until the first read."""
        self.store = store
        self.key = key
        self.offset = offset
        self.reconnects = 0
        #: The object's size as the last answer gave it (None before the first).
        self.size: int | None = None
        self._body: Any = None
        self._range_end = 0

    @property
    def _where(self) -> str:
        return f"s3://{self.store.settings.bucket}/{self.key}"

    def _get(self) -> bool:
        """Start a ranged GET at the offset; False when the offset is the object's end."""
        from botocore import exceptions

        client = self.store.client
        try:
            answer = client.get_object(
                Bucket=self.store.settings.bucket, Key=self.key,
                Range=f"bytes={self.offset}-{self.offset + RANGE_BYTES - 1}",
            )
        except exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") == "InvalidRange":
                self.size = self.offset
                return False
            if error.get("Code") == "NoSuchKey":
                raise S3Error(
                    f"S3 object {self.key!r} not found in bucket {self.store.settings.bucket!r}"
                ) from exc
            raise self.store.problem(exc, f"Reading {self.key!r}") from exc
        except exceptions.NoCredentialsError as exc:
            raise self.store.problem(exc, f"Reading {self.key!r}") from exc
        length = int(answer.get("ContentLength") or 0)
        content_range = str(answer.get("ContentRange") or "")
        if content_range:
            # "bytes 0-99/1234"
            self.size = int(content_range.rsplit("/", 1)[1])
        elif self.offset == 0:
            self.size = length  # a whole-object answer (an empty object has no range)
        else:
            answer["Body"].close()
            raise S3Error(f"{self._where}: the server ignored the Range of a read at byte "
                          f"{self.offset}")
        self._body, self._range_end = answer["Body"], self.offset + length
        return length > 0

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes from the offset; ``b""`` at the end of the object.

        A dropped stream is retried from the byte reached, through the tap's one retry
        mechanism (:class:`~tap_cordial_activity.retries.RetryPolicy`).
        """

        def attempt() -> bytes:
            try:
                while True:
                    if self._body is None and not self._get():
                        self._drop_body()
                        return b""
                    data = self._body.read(min(size, self._range_end - self.offset))
                    if data:
                        break
                    # This range is done: the next GET asks for the following one.
                    self._drop_body()
            except S3Error:
                raise
            except self.store.connection_errors as exc:
                self._drop_body()
                self.reconnects += 1
                raise Transient(f"{type(exc).__name__}: {exc}") from exc
            self.offset += len(data)
            return bytes(data)

        retry = self.store.settings.retry

        def dropped(failure: Transient, number: int, delay: float) -> None:
            self.store.logger.warning(
                "S3 read of %s dropped at byte %d (%s); retrying from there in %.1f s, "
                "attempt %d/%d", self._where, self.offset, failure.problem, delay, number,
                retry.max_retries,
            )

        try:
            return retry.call(attempt, on_retry=dropped)
        except Transient as exc:
            raise S3Error(
                f"reading {self._where} failed at byte {self.offset} after "
                f"{exc.attempts - 1} retries in a row: {exc.problem}"
            ) from exc.__cause__

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            try:
                body.close()
            except Exception as exc:  # the connection may be broken already
                self.store.logger.debug(
                    "Closing the S3 response of %s failed: %r", self._where, exc
                )

    def close(self) -> None:
        """Drop the response being read (its connection goes back to the pool or is closed)."""
        self._drop_body()
