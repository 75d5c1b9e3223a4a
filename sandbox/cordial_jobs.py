"""The Cordial stand-in's export jobs: behaviour options and the job that ``GET /v2/jobs`` shows."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: The savedKey names the stand-in accepts when it checks destinations against an SFTP server.
DEFAULT_SAVED_KEY = "sandbox-sftp-key"


@dataclass
class CordialOptions:
    """Behaviour switches; a job takes a copy when it is created."""

    pending_polls: int = 1
    processing_polls: int = 1
    fail_jobs: bool = False
    never_finish: bool = False
    json_array: bool = False
    omit_file_name: bool = False
    rate_limit_per_second: float | None = None
    write_delay_seconds: float = 0.0
    truncate_gzip: bool = False
    corrupt_line: int | None = None
    #: gzip level of compressed exports: 1 keeps a million-event export to a few seconds.
    gzip_level: int = 1
    #: savedKey names accepted when destinations are checked against an SFTP server.
    saved_keys: tuple[str, ...] = (DEFAULT_SAVED_KEY,)
    fail_message: str = "Export failed: the destination SFTP server could not be written to"

    def update(self, values: dict[str, Any]) -> None:
        """Set several options by name (unknown names raise ``KeyError``)."""
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key not in names:
                raise KeyError(key)
            setattr(self, key, tuple(value) if key == "saved_keys" else value)


@dataclass
class Job:
    """One export job, as ``GET /v2/jobs/{jobId}`` reports it."""

    id: str
    request: dict[str, Any]
    options: CordialOptions
    total_items: int
    created: datetime
    status: str = "Scheduled"
    polls: int = 0
    completed_items: int = 0
    finished: datetime | None = None
    files: list[str] = field(default_factory=list)
    error: str | None = None
    written: threading.Event = field(default_factory=threading.Event)

    def advance(self) -> None:
        """One poll: Pending, Processing, then Done/Failed (or Processing forever)."""
        self.polls += 1
        opts = self.options
        if self.status in ("Done", "Failed"):
            return
        if self.polls <= opts.pending_polls:
            self.status = "Pending"
        elif (
            self.polls <= opts.pending_polls + opts.processing_polls
            or opts.never_finish
            or not self.written.is_set()  # still writing: Done means the files are complete
        ):
            self.status = "Processing"
        else:
            self.status = "Failed" if self.error else "Done"
            self.finished = datetime.now(UTC)
            if self.status == "Done":
                self.completed_items = self.total_items

    def to_json(self) -> dict[str, Any]:
        """The job object in Cordial's shape."""
        req = self.request
        metadata: dict[str, Any] = {
            "name": req["name"],
            "exportType": req["exportType"],
            "compress": bool(req.get("compress")),
            "limitRecordsPerFile": int(req.get("limitRecordsPerFile") or 0),
        }
        if self.status == "Done" and self.files and not self.options.omit_file_name:
            metadata["fileName"] = self.files[0]
        result: dict[str, Any] = {}
        if self.status == "Done":
            result = {"totalRecords": self.total_items}
        elif self.status == "Failed":
            result = {"totalRecords": 0, "message": self.error}
        progress = self.completed_items if self.status != "Pending" else 0
        return {
            "_id": self.id,
            "type": "contactactivityexport",
            "status": self.status,
            "totalItems": self.total_items,
            "completedItems": progress,
            "times": {
                "start": cordial_timestamp(self.created),
                "end": cordial_timestamp(self.finished) if self.finished else None,
            },
            "result": result,
            "metadata": metadata,
        }


def cordial_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")

