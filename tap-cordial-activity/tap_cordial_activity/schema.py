"""The ``activity`` stream's JSON schema, and the field names derived from it."""

from __future__ import annotations

from typing import Any

_NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}
_NULLABLE_OBJECT: dict[str, Any] = {"type": ["object", "null"], "additionalProperties": True}
_NULLABLE_DATETIME: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}

#: Every documented field of a Cordial activity event; other top-level fields are kept as well.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "_id": {"type": "string"},
        "cID": _NULLABLE_STRING,
        "mcID": _NULLABLE_STRING,
        "bmID": _NULLABLE_STRING,
        "mdtID": _NULLABLE_STRING,
        "msID": _NULLABLE_STRING,
        "action": _NULLABLE_STRING,
        "time": {"type": "string", "format": "date-time"},
        "first": {"type": ["boolean", "null"]},
        "message_name": _NULLABLE_STRING,
        "message_sent": _NULLABLE_DATETIME,
        "email": _NULLABLE_STRING,
        "chnl": _NULLABLE_STRING,
        "chnl-type": _NULLABLE_STRING,
        "mTags": {"type": ["array", "null"], "items": {"type": "string"}},
        "name": _NULLABLE_STRING,
        "subject": _NULLABLE_STRING,
        "properties": _NULLABLE_OBJECT,
        "sp": _NULLABLE_OBJECT,
        "d": _NULLABLE_OBJECT,
    },
    "required": ["_id", "time"],
    # Cordial may add fields; they are emitted (and named once in a warning), never dropped.
    "additionalProperties": True,
}

#: Top-level fields documented by Cordial (and typed in the schema).
KNOWN_FIELDS: frozenset[str] = frozenset(SCHEMA["properties"])

_STRING: dict[str, Any] = {"type": "string"}

#: ``activity_rejects``: a bad record set aside (``max_bad_records``); key export_name, file, line.
REJECTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "export_name": _STRING,
        "file": _STRING,
        "line": {"type": "integer"},
        "error": _STRING,
        # The bad line as read (UTF-8, undecodable bytes replaced), at most 64 KB of it.
        "raw": _STRING,
        "raw_bytes": {"type": "integer"},
        "raw_truncated": {"type": "boolean"},
        "job_id": _NULLABLE_STRING,
        "window_start": {"type": "string", "format": "date-time"},
        "window_end": {"type": "string", "format": "date-time"},
        "rejected_at": {"type": "string", "format": "date-time"},
    },
    "required": ["export_name", "file", "line", "error", "raw", "window_start", "window_end"],
}
