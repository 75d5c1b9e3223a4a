"""pytest fixtures for the sandbox: ``sftp_server``, ``cordial`` (and ``cordial_api``), ``lytics``,
``sandbox``, and for S3 exports ``s3_server`` and ``s3_sandbox``.

Load with ``pytest_plugins = ["sandbox.pytest_plugin"]``. The SFTP server is a real OpenSSH sshd
started once per session (never the paramiko fallback, never skipped: a missing sshd is an error);
the HTTP stand-ins are fresh for every test, and the export folder is emptied around each test.
moto's S3 server is also started once per session (only by tests that ask for it); each
``s3_sandbox`` gets a bucket of its own.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox.cordial import CordialStandIn
from sandbox.lytics import LyticsStandIn
from sandbox.s3 import MotoS3Server
from sandbox.sftp import SftpServer, start_sftp_server

#: Poll interval the tap gets in tests: jobs finish after a couple of polls.
TEST_POLL_INTERVAL_SECONDS = 0.05
#: The key prefix S3 exports go under in tests.
S3_PREFIX = "cordial/exports"
#: Settings of the SFTP destination, left out of an S3 config.
SFTP_SETTINGS = (
    "sftp_host", "sftp_port", "sftp_username", "sftp_path", "sftp_password", "sftp_private_key",
    "sftp_host_key",
)


def rfc3339(value: Any) -> str:
    """``2024-01-01T00:00:00Z`` for a UTC datetime."""
    return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))


def empty_folder(folder: Path) -> None:
    """Delete everything inside ``folder`` (the folder itself stays)."""
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@dataclass
class Sandbox:
    """The three services wired together, with ready-made plugin configs."""

    sftp: SftpServer
    cordial: CordialStandIn
    lytics: LyticsStandIn
    #: moto's S3 server and this test's bucket (``s3_sandbox`` only).
    s3: MotoS3Server | None = None
    s3_bucket: str = ""

    def tap_config(self, **overrides: Any) -> dict[str, Any]:
        """tap-cordial-activity settings for this sandbox; an override of None removes a key.

        Both SFTP login methods are present (password and private key); remove one to test the
        other. ``start_date`` is the start of the Cordial stand-in's default events.
        """
        config: dict[str, Any] = {
            "api_key": self.cordial.api_key,
            "api_url": self.cordial.url,
            "sftp_host": self.sftp.host,
            "sftp_port": self.sftp.port,
            "sftp_username": self.sftp.username,
            "sftp_path": self.sftp.sftp_path,
            "sftp_password": self.sftp.password,
            "sftp_private_key": self.sftp.private_key,
            "sftp_host_key": self.sftp.host_key_line,
            "poll_interval_seconds": TEST_POLL_INTERVAL_SECONDS,
            "start_date": rfc3339(self.cordial.default_start),
        }
        return _merge(config, overrides)

    def s3_tap_config(self, **overrides: Any) -> dict[str, Any]:
        """tap-cordial-activity settings for exports through this sandbox's S3 bucket.

        No SFTP setting; the tap reads with moto's keys; Cordial writes with its IAM role (no
        ``cordial_s3_*`` keys: pass them to test that reading).
        """
        assert self.s3 is not None, "use the s3_sandbox fixture"
        config = self.tap_config(**dict.fromkeys(SFTP_SETTINGS))
        config.update(
            export_destination="s3",
            s3_bucket=self.s3_bucket,
            s3_prefix=S3_PREFIX,
            s3_region=self.s3.region,
            s3_endpoint_url=self.s3.url,
            s3_access_key_id=self.s3.access_key_id,
            s3_secret_access_key=self.s3.secret_access_key,
        )
        return _merge(config, overrides)

    def s3_objects(self) -> dict[str, int]:
        """The objects under the export prefix: file name -> size."""
        assert self.s3 is not None, "use the s3_sandbox fixture"
        keys = self.s3.keys(self.s3_bucket, f"{S3_PREFIX}/")
        return {key.rsplit("/", 1)[-1]: size for key, size in keys.items()}

    def target_config(self, **overrides: Any) -> dict[str, Any]:
        """target-lytics settings for this sandbox; an override of None removes a key."""
        config: dict[str, Any] = {"api_token": self.lytics.token, "api_url": self.lytics.url}
        return _merge(config, overrides)

    def secrets(self) -> list[str]:
        """Every secret value in play, for tests that grep output for leaks."""
        key_body = [
            line
            for line in self.sftp.private_key.splitlines()
            if line and not line.startswith("-----")
        ]
        return [
            self.cordial.api_key,
            self.lytics.token,
            self.sftp.password,
            *key_body,
        ]


def _merge(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


@pytest.fixture(scope="session")
def sftp_server() -> Iterator[SftpServer]:
    """A real OpenSSH sshd for the whole session (RuntimeError, not a skip, when impossible)."""
    server = start_sftp_server(allow_fallback=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3Server]:
    """moto's S3 server for the whole session (RuntimeError when moto is missing)."""
    with MotoS3Server() as server:
        yield server


@pytest.fixture
def cordial(sftp_server: SftpServer) -> Iterator[CordialStandIn]:
    """A fresh Cordial stand-in writing into the session's SFTP folder (emptied per test)."""
    empty_folder(sftp_server.root)
    stand_in = CordialStandIn(
        sftp_root=sftp_server.root, sftp_path=sftp_server.sftp_path, sftp=sftp_server
    )
    with stand_in:
        yield stand_in
    empty_folder(sftp_server.root)


@pytest.fixture
def cordial_api(cordial: CordialStandIn) -> requests.Session:
    """A session authenticated to the ``cordial`` stand-in (API key as Basic user name)."""
    session = requests.Session()
    session.auth = (cordial.api_key, "")
    return session


@pytest.fixture
def lytics() -> Iterator[LyticsStandIn]:
    """A fresh Lytics stand-in."""
    with LyticsStandIn() as stand_in:
        yield stand_in


@pytest.fixture
def sandbox(sftp_server: SftpServer, cordial: CordialStandIn, lytics: LyticsStandIn) -> Sandbox:
    """The three services plus ``tap_config()`` / ``target_config()``."""
    return Sandbox(sftp=sftp_server, cordial=cordial, lytics=lytics)


@contextlib.contextmanager
def s3_bucket_for(sandbox: Sandbox, server: MotoS3Server) -> Iterator[Sandbox]:
    """``sandbox`` with its Cordial stand-in writing S3 exports into a fresh bucket (removed
    afterwards)."""
    bucket = f"cordial-{secrets.token_hex(6)}"
    server.create_bucket(bucket)
    sandbox.cordial.s3 = server
    sandbox.s3, sandbox.s3_bucket = server, bucket
    try:
        yield sandbox
    finally:
        server.empty_bucket(bucket)
        server.client().delete_bucket(Bucket=bucket)


@pytest.fixture
def s3_sandbox(sandbox: Sandbox, s3_server: MotoS3Server) -> Iterator[Sandbox]:
    """``sandbox`` with the Cordial stand-in writing S3 exports into a fresh bucket."""
    with s3_bucket_for(sandbox, s3_server) as ready:
        yield ready
