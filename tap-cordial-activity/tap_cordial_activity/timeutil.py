"""Moments as the tap reads and writes them: settings, STATE (RFC 3339) and Cordial's form."""

from __future__ import annotations

import datetime
import re

#: What the tap accepts as a moment: ``yyyy-mm-dd``, or that with a time
#: (``T`` or a space, ``HH:MM[:SS[.ffffff]]``) and optionally ``Z`` or a UTC offset.
_MOMENT = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?)?"
)


class MomentRangeError(ValueError):
    """A moment that exists as written but not in UTC (year 1 or 9999 at an extreme offset)."""


def to_rfc3339(moment: datetime.datetime) -> str:
    """UTC RFC 3339 text, as kept in STATE (``2024-05-01T06:00:00+00:00``)."""
    return moment.astimezone(datetime.UTC).isoformat()


def to_cordial(moment: datetime.datetime) -> str:
    """The form Cordial's timeframe fields document (``2017-11-01T15:28:04.124Z``)."""
    utc = moment.astimezone(datetime.UTC)
    # Four-digit years: strftime's %Y writes year 1 as "1", which Cordial refuses (406).
    return f"{utc.year:04d}" + utc.strftime("-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_moment(value: str) -> datetime.datetime:
    """``yyyy-mm-dd`` (midnight UTC) or an ISO 8601 date-time; naive means UTC.

    The text is checked as written (no guessing: ``2026-13-01`` and ``Nov 5`` are refused with
    ``ValueError``), then read by :meth:`datetime.datetime.fromisoformat`; a moment that leaves
    datetime's range once in UTC is a ``ValueError`` too.
    """
    text = value.strip()
    if not _MOMENT.fullmatch(text):
        raise ValueError(f"{value!r} is not yyyy-mm-dd or an ISO 8601 date-time")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        return moment.astimezone(datetime.UTC)
    except OverflowError as exc:
        # Year 1 or 9999 with an offset that moves it out of datetime's range in UTC.
        raise MomentRangeError(f"{value!r} lies outside the years 0001 to 9999 in UTC") from exc
