"""Record normalization: what the ``activity`` schema promises, whatever the export format.

``time``/``message_sent`` as RFC 3339, ``first`` as a boolean; bad values raise
:class:`ExportDataError` naming the file and line.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from tap_cordial_activity.errors import ExportDataError

Record = dict[str, Any]
#: (record, event time, line number); a record that cannot be read is a :class:`BadRecord`
#: with the event time :data:`BAD_MOMENT`.
Parsed = tuple["Record | BadRecord", datetime.datetime, int]


class BadRecord:
    """A line the format readers could not turn into a record: the problem and the raw bytes."""

    __slots__ = ("problem", "raw")

    def __init__(self, problem: str, raw: bytes) -> None:
        """``problem`` as :class:`ExportDataError` words it; ``raw`` the line as read."""
        self.problem = problem
        self.raw = raw


#: The event time given with a :class:`BadRecord`: before every window, so the reading loop
#: meets it only on its "outside the window" branch (no extra test per good record).
BAD_MOMENT = datetime.datetime.min.replace(tzinfo=datetime.UTC)


def bad(exc: ExportDataError, raw: bytes, line: int) -> Parsed:
    """A reader's answer for a line that raised ``exc``."""
    return BadRecord(exc.problem, raw), BAD_MOMENT, line


#: ``True == 1`` in Python, so the booleans also match the integers 1 and 0.
_TRUE = frozenset({True, "true", "1", "True", "TRUE"})
_FALSE = frozenset({False, "false", "0", "False", "FALSE"})
#: A numeric UTC offset without a colon at the end of a timestamp (``+0000``, ``-0530``).
_COMPACT_OFFSET = re.compile(r"([+-])(\d{2})(\d{2})$")


def normalize_timestamp(value: str) -> tuple[str, datetime.datetime]:
    """Return ``value`` as RFC 3339 text plus the parsed aware datetime.

    ``+0000`` becomes ``+00:00``; a timestamp without offset is taken as UTC. Raises ``ValueError``
    when the text is not an ISO 8601 date-time.
    """
    if value.endswith("+0000"):
        # The documented Cordial form; handled without a regex because it is nearly every record.
        text = value[:-5] + "+00:00"
    elif value.endswith("Z"):
        text = value
    else:
        text = _COMPACT_OFFSET.sub(r"\1\2:\3", value)
    parsed = datetime.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
        text += "+00:00"
    if "T" not in text:
        raise ValueError("a date without a time")
    return text, parsed


def to_bool(value: Any) -> bool:
    """``first`` as a boolean, from true/false, 1/0 or their text forms; ``ValueError`` else."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false/1/0)")


#: Parsed timestamps by their raw text. Events of one export share many second-precision times
#: (and every event of a message shares its ``message_sent``), so most lookups hit.
TIMESTAMP_CACHE: dict[str, tuple[str, datetime.datetime]] = {}
TIMESTAMP_CACHE_LIMIT = 20_000


def time_field(value: Any, key: str, file_name: str, line: int) -> tuple[str, datetime.datetime]:
    """:func:`normalize_timestamp` through the cache, with the data error on failure."""
    cached = TIMESTAMP_CACHE.get(value) if value.__class__ is str else None
    if cached is not None:
        return cached
    try:
        result = normalize_timestamp(str(value))
    except ValueError as exc:
        raise ExportDataError(
            file_name, line, f"`{key}` {value!r} is not an ISO 8601 date-time"
        ) from exc
    if len(TIMESTAMP_CACHE) >= TIMESTAMP_CACHE_LIMIT:
        TIMESTAMP_CACHE.clear()  # bounded memory; the cache refills from the next records
    TIMESTAMP_CACHE[value] = result
    return result


def normalize(record: dict[str, Any], file_name: str, line: int) -> datetime.datetime:
    """Normalize ``record`` in place; return its event time (aware datetime).

    Raises :class:`ExportDataError` for a missing ``_id``/``time``, an unparseable timestamp or a
    ``first`` that is not a boolean.
    """
    if not record.get("_id"):
        raise ExportDataError(file_name, line, "record without `_id`")
    raw_time = record.get("time")
    if not raw_time:
        raise ExportDataError(file_name, line, f"record {record['_id']} without `time`")
    record["time"], event_time = time_field(raw_time, "time", file_name, line)
    sent = record.get("message_sent")
    if sent is not None:
        if sent == "":
            del record["message_sent"]
        else:
            record["message_sent"] = time_field(sent, "message_sent", file_name, line)[0]
    first = record.get("first")
    if first is not None and first.__class__ is not bool:
        record["first"] = first_flag(first, file_name, line)
    return event_time


def first_flag(value: Any, file_name: str, line: int) -> bool:
    """:func:`to_bool` with the data error on failure."""
    try:
        return to_bool(value)
    except ValueError as exc:
        raise ExportDataError(file_name, line, f"`first` {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Byte level: plain or gzip, as a stream of chunks


