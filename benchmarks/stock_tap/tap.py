"""A stock singer-sdk tap doing the work of tap-cordial-activity, the way a typical tap is written.

Deliberately left at singer-sdk's defaults: the default (simplejson) message writer, recursive type
conformance, property selection on every record, the SDK's state bookkeeping. The export file is
downloaded the way a competent tap does it: paramiko's prefetching ``getfo`` into a temporary file,
then ``gzip`` + ``json.loads`` line by line. ``sftp_prefetch: false`` reads the remote file with
plain ``SFTPFile`` reads instead (no prefetch), as many SFTP taps on the package index do; the
benchmark reports that variant as a second, labelled row.
It exports one window, ``start_date`` to ``end_date``, in one job: the benchmark's data fits one.
"""

from __future__ import annotations

import base64
import gzip
import json
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import paramiko
import requests
from singer_sdk import Stream, Tap
from singer_sdk import typing as th

ACTIONS = ["message-sent", "open", "click", "optout", "bounce", "complaint", "custom"]

_NULLABLE_STRING = {"type": ["string", "null"]}
_OPEN_OBJECT = {"type": ["object", "null"], "additionalProperties": True}
#: The stream's JSON schema, as a tap would keep it in a schemas/activity.json file. It equals
#: tap-cordial-activity's (the benchmark compares the two SCHEMA messages and says so if not).
ACTIVITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "_id": {"type": "string"},
        **{key: _NULLABLE_STRING for key in ("cID", "mcID", "bmID", "mdtID", "msID", "action")},
        "time": {"format": "date-time", "type": "string"},
        "first": {"type": ["boolean", "null"]},
        "message_name": _NULLABLE_STRING,
        "message_sent": {"format": "date-time", "type": ["string", "null"]},
        **{key: _NULLABLE_STRING for key in ("email", "chnl", "chnl-type")},
        "mTags": {"items": {"type": "string"}, "type": ["array", "null"]},
        "name": _NULLABLE_STRING,
        "subject": _NULLABLE_STRING,
        "properties": _OPEN_OBJECT,
        "sp": _OPEN_OBJECT,
        "d": _OPEN_OBJECT,
    },
    "required": ["_id", "time"],
    "additionalProperties": True,
}


class ActivityStream(Stream):
    """Cordial contact activity: one export job, one gzip JSON Lines file over SFTP."""

    name = "activity"
    primary_keys = ("_id",)
    replication_key = "time"
    schema = ACTIVITY_SCHEMA

    def get_records(self, context: Mapping[str, Any] | None) -> Iterable[dict[str, Any]]:
        """Create the export, wait for it, then read its file line by line."""
        session = requests.Session()
        session.auth = (self.config["api_key"], "")
        api_url = self.config["api_url"].rstrip("/")
        name = f"stock-activity-{uuid.uuid4().hex[:12]}"
        start = self.get_starting_timestamp(context) or datetime.fromisoformat(
            self.config["start_date"]
        )
        end = (
            datetime.fromisoformat(self.config["end_date"])
            if self.config.get("end_date")
            else datetime.now(UTC)
        )
        body = {
            "name": name,
            "exportType": "json",
            "compress": True,
            "selected_timeframe_start": _iso(start),
            "selected_timeframe_end": _iso(end),
            "selected_action_names": self.config.get("actions", ACTIONS),
            "destination": {
                "type": "sftp",
                "server": self.config["sftp_host"],
                "port": self.config.get("sftp_port", 22),
                "username": self.config["sftp_username"],
                "password": self.config["sftp_password"],
                "path": self.config["sftp_path"],
            },
        }
        response = session.post(f"{api_url}/contactactivityexport", json=body, timeout=60)
        response.raise_for_status()
        job_id = response.json()["jobId"]
        job = self._wait_for_job(session, api_url, job_id)
        file_name = (job.get("metadata") or {}).get("fileName")
        yield from self._read_export(name, file_name)

    def _wait_for_job(self, session: requests.Session, api_url: str, job_id: str) -> dict:
        while True:
            response = session.get(f"{api_url}/jobs/{job_id}", timeout=60)
            response.raise_for_status()
            job = response.json()
            if job["status"] == "Done":
                return job
            if job["status"] == "Failed":
                raise RuntimeError(f"export job {job_id} failed: {job.get('result')}")
            time.sleep(float(self.config.get("poll_interval_seconds", 15)))

    def _read_export(self, name: str, file_name: str | None) -> Iterable[dict[str, Any]]:
        transport = paramiko.Transport((self.config["sftp_host"], self.config.get("sftp_port", 22)))
        try:
            transport.connect(
                hostkey=_host_key(self.config.get("sftp_host_key")),
                username=self.config["sftp_username"],
                password=self.config["sftp_password"],
            )
            sftp = paramiko.SFTPClient.from_transport(transport)
            assert sftp is not None
            folder = self.config["sftp_path"].rstrip("/")
            names = (
                [file_name]
                if file_name
                else sorted(entry for entry in sftp.listdir(folder) if entry.startswith(name))
            )
            for entry in names:
                if self.config.get("sftp_prefetch", True):
                    # getfo pipelines the reads (paramiko's prefetch); the file is then read
                    # locally, as a tap that downloads before parsing does.
                    with tempfile.TemporaryFile() as local:
                        sftp.getfo(f"{folder}/{entry}", local)
                        local.seek(0)
                        yield from _lines(local, entry)
                else:
                    with sftp.open(f"{folder}/{entry}", "rb") as raw:
                        yield from _lines(raw, entry)
        finally:
            transport.close()

    def post_process(self, row: dict, context: Mapping[str, Any] | None = None) -> dict | None:
        """Cordial's ``+0000`` offsets are not RFC 3339; ``first`` may come as 1/0."""
        for key in ("time", "message_sent"):
            if row.get(key):
                row[key] = datetime.fromisoformat(row[key])
        if "first" in row and row["first"] is not None:
            row["first"] = bool(row["first"])
        return row


class StockCordialTap(Tap):
    """Stock singer-sdk tap for Cordial contact activity (benchmark baseline)."""

    name = "stock-tap-cordial"
    config_jsonschema = th.PropertiesList(
        th.Property("api_key", th.StringType, required=True, secret=True),
        th.Property("api_url", th.StringType, default="https://api.cordial.io/v2"),
        th.Property("start_date", th.DateTimeType, required=True),
        th.Property("end_date", th.DateTimeType),
        th.Property("actions", th.ArrayType(th.StringType)),
        th.Property("sftp_host", th.StringType, required=True),
        th.Property("sftp_port", th.IntegerType, default=22),
        th.Property("sftp_username", th.StringType, required=True),
        th.Property("sftp_password", th.StringType, required=True, secret=True),
        th.Property("sftp_path", th.StringType, required=True),
        th.Property("sftp_host_key", th.StringType),
        th.Property("poll_interval_seconds", th.NumberType, default=15),
        th.Property("sftp_prefetch", th.BooleanType, default=True),
    ).to_dict()

    def discover_streams(self) -> list[Stream]:
        """The one stream."""
        return [ActivityStream(self)]


def _lines(raw: Any, name: str) -> Iterable[dict[str, Any]]:
    """The JSON Lines records of an open binary file, gunzipped when its name says gzip."""
    stream = gzip.GzipFile(fileobj=raw) if name.endswith(".gz") else raw
    for line in stream:
        if line.strip():
            yield json.loads(line)


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _host_key(line: str | None) -> paramiko.PKey | None:
    """The first ``ssh-keyscan`` line's key; None trusts any key (what most SFTP taps do)."""
    if not line:
        return None
    fields = line.split()
    key_type, key_data = (fields[1], fields[2]) if len(fields) >= 3 else (fields[0], fields[1])
    return paramiko.PKey.from_type_string(key_type, base64.b64decode(key_data))
