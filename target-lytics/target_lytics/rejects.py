"""Events Lytics cannot take or refused, set aside into ``<stream>_rejects`` (max_rejected_records).

Before sending, an event over :data:`MAX_EVENT_BYTES_IN_BATCH` or still nesting objects inside an
array is not sent (:func:`unsendable_reason`); with ``max_rejected_records`` 0 the run ends there,
before the body holding it goes out (its other events would be stored by every rerun). After
sending, ``rejected_count`` > 0 (or a count short of the body) does not say which events were
refused: :meth:`RejectWriter.find_refused` sends halves of the body with ``dryrun=true`` (Lytics
validates, stores nothing; see ``lytics-api.md``) until each refused event is alone, so nothing
is stored twice.

Up to ``max_rejected_records`` such events per run (:class:`RejectBudget`, shared by every sink)
each become a small event in the Lytics stream ``<lytics stream>_rejects`` (a stream already
named ``*_rejects`` keeps its name, so the tap's ``activity_rejects`` and the target's set-aside
events share one place). The caller counts a set-aside event as done only once its reject event
is accepted; one more than the limit ends the run naming the setting.
"""

from __future__ import annotations

import datetime
import re
import threading
import typing as t
from dataclasses import dataclass

import msgspec
import orjson

from target_lytics.errors import LyticsError, RejectedEventsError
from target_lytics.mapping import holds_object_in_array
from target_lytics.settings import rejects_stream

if t.TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from target_lytics.client import LyticsClient

#: Lytics' platform limits page (lytics-api.md, "Limits"): "16 KB per record inside a batch".
#: 16,000 bytes is the strict reading of KB, so an event under it fits under either reading.
MAX_EVENT_BYTES_IN_BATCH = 16_000
#: How much of a set-aside event its reject event keeps (``head``).
HEAD_BYTES = 1_000
#: The setting that allows set-aside events.
SETTING = "max_rejected_records"
#: Lytics field of a reject event holding when it was set aside (sent as ``timestamp_field``).
REJECTED_AT = "rejected_at"

#: Largest event of a rejects stream (the tap's ``activity_rejects`` records, up to 64 KB of
#: ``raw``): well under the 16 KB, so what Lytics adds or counts differently still fits.
MAX_REJECT_EVENT_BYTES = 8_000
#: The field of a rejects-stream event holding the bad line's text (the tap's ``raw``).
RAW = "raw"

#: An array whose first element is an object: only events holding it need decoding to check.
ARRAY_OF_OBJECTS = re.compile(rb"\[\s*\{")
_RAW_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])


def unsendable_reason(event: bytes) -> str | None:
    """Why Lytics cannot take ``event`` (serialized), or None. Cheap for an ordinary event."""
    if len(event) > MAX_EVENT_BYTES_IN_BATCH:
        return (
            f"the event is {len(event):,} bytes, over the {MAX_EVENT_BYTES_IN_BATCH:,} bytes "
            "Lytics takes per record inside a batch"
        )
    if ARRAY_OF_OBJECTS.search(event) and holds_object_in_array(orjson.loads(event)):
        return "the event nests objects inside an array, which Lytics does not parse"
    return None


def is_rejects_stream(singer_stream: str, lytics_stream: str) -> bool:
    """Whether a stream's records are set-aside records (``activity_rejects``, ``*_rejects``)."""
    return singer_stream.endswith("_rejects") or lytics_stream.endswith("_rejects")


def fit_reject_event(event: bytes) -> bytes:
    """``event`` with its ``raw`` text cut so it takes at most :data:`MAX_REJECT_EVENT_BYTES`.

    The cut falls between UTF-8 characters; ``raw_truncated`` becomes true and ``raw_bytes``
    the original length (the tap's, when it counted more: it caps ``raw`` at 64 KB itself). An
    event that fits, or has no text ``raw``, is returned as it is.
    """
    if len(event) <= MAX_REJECT_EVENT_BYTES:
        return event
    try:
        values = orjson.loads(event)
    except orjson.JSONDecodeError:
        return event
    if not isinstance(values, dict) or not isinstance(values.get(RAW), str):
        return event
    raw = values[RAW].encode("utf-8", "surrogatepass")
    counted = values.get("raw_bytes")
    if type(counted) is not int or counted < len(raw):
        counted = len(raw)
    values.update({RAW: "", "raw_truncated": True, "raw_bytes": counted})
    room = MAX_REJECT_EVENT_BYTES - len(orjson.dumps(values))
    cut = max(0, min(len(raw), room))
    while True:
        while 0 < cut < len(raw) and raw[cut] & 0xC0 == 0x80:
            cut -= 1  # back to the start of a character
        text = raw[:cut].decode("utf-8", "replace")
        # JSON escapes (quotes, control characters) take more room than the bytes they stand for:
        # cut in proportion, until it fits.
        escaped = len(orjson.dumps(text)) - 2
        if escaped <= room or cut == 0:
            break
        cut = min(cut - 1, cut * room // escaped)
    values[RAW] = text
    return orjson.dumps(values)


def body_events(body: bytes) -> list[bytes]:
    """The events of one of our JSON array bodies, as their serialized bytes."""
    return [bytes(raw) for raw in _RAW_ITEMS.decode(body)]


def limit_hint(limit: int, lytics_stream: str) -> str:
    """What the user can do when the set-aside limit is reached (names the setting)."""
    where = rejects_stream(lytics_stream)
    if limit == 0:
        return (
            f"To set such events aside into Lytics stream '{where}' and go on, set {SETTING} "
            "(default 0: none)."
        )
    return (
        f"{SETTING} ({limit}) allows no more set-aside events in this run; the ones set aside "
        f"so far are in Lytics stream '{where}'. Raise {SETTING}, or fix the events."
    )


class RejectBudget:
    """How many events this run may still set aside (every sink draws on it; thread-safe)."""

    def __init__(self, limit: int) -> None:
        """Allow ``limit`` set-aside events per run (0: none)."""
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, count: int) -> bool:
        """Reserve ``count`` more; False (nothing reserved) when that passes the limit."""
        with self._lock:
            if self.used + count > self.limit:
                return False
            self.used += count
            return True


@dataclass(frozen=True)
class Refused:
    """One event that is not stored in its stream, and why."""

    event: bytes
    reason: str


class RejectWriter:
    """Finds refused events of one sink's bodies and writes reject events for them."""

    def __init__(
        self,
        *,
        client: LyticsClient,
        budget: RejectBudget,
        singer_stream: str,
        lytics_stream: str,
        timestamp_field: str | None,
        key_fields: Mapping[str, str],
        dry_run: bool,
    ) -> None:
        """``key_fields``: each key property -> the event field holding it."""
        self.client = client
        self.budget = budget
        self.singer_stream = singer_stream
        self.lytics_stream = lytics_stream
        self.rejects_stream = rejects_stream(lytics_stream)
        self.timestamp_field = timestamp_field
        self.key_fields = key_fields
        self.dry_run = dry_run
        #: Dry-run requests sent to find refused events (for tests and the debug log).
        self.probes = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether any event may be set aside in this run."""
        return self.budget.limit > 0

    def reject_event(self, refused: Refused, now: str) -> dict[str, t.Any]:
        """The small event recording ``refused`` in the rejects stream."""
        try:
            decoded = orjson.loads(refused.event)
        except orjson.JSONDecodeError:
            decoded = None
        values = decoded if isinstance(decoded, dict) else {}
        return {
            "stream": self.singer_stream,
            "lytics_stream": self.lytics_stream,
            "key": {key: values.get(field) for key, field in self.key_fields.items()},
            "reason": refused.reason,
            "bytes": len(refused.event),
            "head": refused.event[:HEAD_BYTES].decode("utf-8", "replace"),
            REJECTED_AT: now,
        }

    def set_aside(self, refused: Sequence[Refused], cause: str) -> None:
        """Write one reject event per refused event; raise when the budget does not allow it.

        Returns once Lytics accepted the reject events, so the caller may count the refused
        events as done.

        Raises:
            LyticsError: over ``max_rejected_records`` (``cause`` first, then the setting), or the
                reject events' upload failed.
        """
        if not refused:
            return
        if not self.budget.take(len(refused)):
            raise LyticsError(f"{cause} {limit_hint(self.budget.limit, self.lytics_stream)}")
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        now = now.replace("+00:00", "Z")
        events = [self.reject_event(item, now) for item in refused]
        body = orjson.dumps(events)
        try:
            self.client.upload(
                self.rejects_stream,
                body,
                timestamp_field=REJECTED_AT,
                dry_run=self.dry_run,
                event_count=len(events),
            )
        except LyticsError as exc:
            raise LyticsError(
                f"{cause} Setting {len(events)} events aside into Lytics stream "
                f"'{self.rejects_stream}' failed: {exc}"
            ) from exc

    def find_refused(self, events: Sequence[bytes], refused: int) -> list[int]:
        """Positions of the ``refused`` events Lytics refused in a body of ``events``.

        Halves holding refused events are sent again with ``dryrun=true`` (stored nowhere) until
        each refused event is alone; a half Lytics takes whole is left. Each dry run's own
        ``rejected_count`` (or short count) says how many refused events a half holds.
        """
        found: list[int] = []
        pending = [(0, len(events), refused)]
        while pending:
            first, end, count = pending.pop()
            if count <= 0:
                continue
            if end - first == 1:
                found.append(first)
                continue
            middle = (first + end) // 2
            pending.append((middle, end, self._probe(events[middle:end])))
            pending.append((first, middle, self._probe(events[first:middle])))
        return sorted(found)

    def _probe(self, events: Sequence[bytes]) -> int:
        """How many of ``events`` Lytics refuses, by a dry run (nothing stored)."""
        with self._lock:
            self.probes += 1
        body = b"[" + b",".join(events) + b"]"
        try:
            self.client.upload(
                self.lytics_stream,
                body,
                timestamp_field=self.timestamp_field,
                dry_run=True,
                event_count=len(events),
            )
        except RejectedEventsError as exc:  # also a short count (ShortCountError)
            return exc.rejected
        return 0
