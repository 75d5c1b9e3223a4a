"""SftpSettings: where and how the tap logs in to SFTP, and how it reads and reconnects.

Below both :mod:`~tap_cordial_activity.sftp` and :mod:`~tap_cordial_activity.remote_file`, which
share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tap_cordial_activity.settings import DEFAULTS

__all__ = ["SftpSettings"]


@dataclass
class SftpSettings:
    """Where and how to log in."""

    host: str
    port: int
    username: str
    # The secrets are out of the repr, so no log line or traceback can show them.
    password: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)
    private_key_passphrase: str | None = field(default=None, repr=False)
    host_key: str | None = None
    known_hosts_path: Path | None = None
    timeout_seconds: float = field(default_factory=lambda: DEFAULTS["request_timeout_seconds"])
    #: Read requests in flight per file; with 32 KB blocks this bounds a read's memory (2 MB).
    max_concurrent_prefetch_requests: int = field(
        default_factory=lambda: DEFAULTS["max_concurrent_prefetch_requests"]
    )
    reconnect_attempts: int = 5
    reconnect_backoff_seconds: float = 1.0
