"""The sandbox as the benchmark uses it: stand-ins that note when the measured events happen.

The Cordial stand-in notes when an export is created and when its job is first reported ``Done``
(start of a tap measurement, and how long the export itself took). The Lytics stand-in notes when it
accepted the last upload and how many events it accepted (end of a target or pipeline measurement).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import orjson

from sandbox.cordial import CordialStandIn
from sandbox.events import RESERVED_ACTIONS
from sandbox.httpbase import Request, Response
from sandbox.lytics import LyticsStandIn
from sandbox.s3 import MotoS3Server
from sandbox.sftp import SftpServer, start_sftp_server

#: Cordial's reserved actions plus ``custom`` (every other action).
ALL_ACTIONS = [*RESERVED_ACTIONS, "custom"]


class TimedCordial(CordialStandIn):
    """Cordial stand-in that notes export creation and completion times (``time.monotonic()``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.export_created_at: list[float] = []
        self.job_done_at: dict[str, float] = {}

    def route(self, request: Request) -> Response:
        """Answer, then note the moments that bound a tap measurement."""
        response = super().route(request)
        now = time.monotonic()
        if response.status == 200 and request.method == "POST":
            if request.path.rstrip("/").endswith("/contactactivityexport"):
                self.export_created_at.append(now)
        elif response.status == 200 and request.path.startswith("/v2/jobs/"):
            job_id = request.path.rstrip("/").rsplit("/", 1)[-1]
            if job_id not in self.job_done_at and orjson.loads(response.body)["status"] == "Done":
                self.job_done_at[job_id] = now
        return response

    def first_export_after(self, moment: float) -> float | None:
        """When the first export created after ``moment`` was accepted."""
        return next((t for t in self.export_created_at if t >= moment), None)

    def first_done_after(self, moment: float) -> float | None:
        """When the first job reported ``Done`` after ``moment``."""
        return min((t for t in self.job_done_at.values() if t >= moment), default=None)


class TimedLytics(LyticsStandIn):
    """Lytics stand-in that counts accepted events and notes the last accepted upload."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._count_lock = threading.Lock()
        self.accepted = 0
        self.uploads = 0
        self.last_accepted_at: float | None = None

    def route(self, request: Request) -> Response:
        """Answer, then count what was accepted."""
        response = super().route(request)
        if response.status == 200 and request.path.startswith("/collect/json/"):
            data = orjson.loads(response.body).get("data") or {}
            if not data.get("dryrun"):
                with self._count_lock:
                    self.accepted += int(data.get("message_count") or 0) - int(
                        data.get("rejected_count") or 0
                    )
                    self.uploads += 1
                    self.last_accepted_at = time.monotonic()
        return response

    def clear(self) -> None:
        """Forget what was accepted (between measurements)."""
        self.reset()
        with self._count_lock:
            self.accepted = 0
            self.uploads = 0
            self.last_accepted_at = None


@dataclass
class Dataset:
    """The events of one benchmark size and the window that holds them."""

    count: int
    start: datetime
    end: datetime


class Sandbox:
    """OpenSSH sftp and moto's S3, the Cordial stand-in holding the dataset, and the Lytics
    stand-in."""

    #: The bucket and prefix of the S3 row.
    S3_BUCKET = "bench-exports"
    S3_PREFIX = "cordial"

    def __init__(self, dataset: Dataset, events: Iterable[dict[str, Any]], work_dir: Path) -> None:
        self.dataset = dataset
        self._events = events
        self.work_dir = work_dir
        self._stack = ExitStack()
        self.sftp: SftpServer
        self.s3: MotoS3Server
        self.cordial: TimedCordial
        self.lytics: TimedLytics

    def __enter__(self) -> Self:
        """Start the three services."""
        try:
            self.sftp = self._stack.enter_context(start_sftp_server())
            self.s3 = self._stack.enter_context(MotoS3Server())
            self.s3.create_bucket(self.S3_BUCKET)
            self.cordial = self._stack.enter_context(
                TimedCordial(
                    sftp_root=self.sftp.root,
                    sftp_path=self.sftp.sftp_path,
                    events=self._events,
                    sftp=self.sftp,
                    s3=self.s3,
                )
            )
            self._events = ()  # the stand-in holds them now
            # Counts only: keeping a million events would cost the harness time and memory.
            self.lytics = self._stack.enter_context(TimedLytics(count_only=True))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop everything."""
        self._stack.close()

    def clear_exports(self) -> None:
        """Delete exported files, so disk use stays flat across measurements."""
        for path in Path(self.sftp.root).iterdir():
            if path.is_file():
                path.unlink()
        self.s3.empty_bucket(self.S3_BUCKET)

    # -- plugin configuration ---------------------------------------------------------------
    def tap_config(self, *, stock: bool, s3: bool = False) -> dict[str, Any]:
        """Settings of tap-cordial-activity (or the stock tap) for this sandbox and dataset;
        ``s3``: ours with the export through moto's S3 instead of SFTP."""
        config: dict[str, Any] = {
            "api_url": self.cordial.url,
            "api_key": self.cordial.api_key,
            "start_date": self.dataset.start.isoformat(),
            "end_date": self.dataset.end.isoformat(),
            "sftp_host": self.sftp.host,
            "sftp_port": self.sftp.port,
            "sftp_username": self.sftp.username,
            "sftp_password": self.sftp.password,
            "sftp_path": self.sftp.sftp_path,
            "sftp_host_key": self.sftp.host_key_line,
            "poll_interval_seconds": 0.1,
            # Every action, so the export holds every generated event.
            "actions": ALL_ACTIONS,
        }
        if not stock:
            config["job_timeout_seconds"] = 3600
        if s3:
            for name in [k for k in config if k.startswith("sftp_")]:
                del config[name]
            config.update(
                export_destination="s3", s3_bucket=self.S3_BUCKET, s3_prefix=self.S3_PREFIX,
                s3_region=self.s3.region, s3_endpoint_url=self.s3.url,
                s3_access_key_id=self.s3.access_key_id,
                s3_secret_access_key=self.s3.secret_access_key,
            )
        return config

    def target_config(self) -> dict[str, Any]:
        """Settings of target-lytics (the stock target takes the same two)."""
        return {"api_url": self.lytics.url, "api_token": self.lytics.token}

    def write_config(self, name: str, config: dict[str, Any]) -> Path:
        """A config file readable by its owner only (it holds secrets)."""
        path = self.work_dir / f"{name}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(config, handle)
        return path

    @staticmethod
    def meltano_env(prefix: str, config: dict[str, Any]) -> dict[str, str]:
        """Meltano's ``<PLUGIN>_<SETTING>`` environment variables for a plugin's settings."""
        return {
            f"{prefix}_{key.upper()}": value if isinstance(value, str) else json.dumps(value)
            for key, value in config.items()
        }
