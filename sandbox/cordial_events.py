"""The Cordial stand-in's activity "database": a compact, thread-safe store of raw events.

Events are kept as orjson text in one ``bytearray`` so that a million of them fit and a JSON Lines
export of consecutive events is one slice of it. Selection is by time range and action, as
Cordial's contact activity export selects them.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, overload

import orjson

from sandbox.events import RESERVED_ACTIONS, parse_cordial_time

_RESERVED = frozenset(RESERVED_ACTIONS)
#: Events decoded per lock acquisition when the store is iterated.
_BATCH = 5000
#: Sandbox-only event key: seconds after the event's ``time`` at which Cordial records it. The key
#: is removed before the event is stored; exports created before that moment leave it out.
RECORDING_DELAY_KEY = "_recording_delay_seconds"


class EventStore(Sequence[dict[str, Any]]):
    """Cordial's activity "database", compact enough for millions of events.

    Each event is kept as its orjson text plus a newline in one ``bytearray`` (``_offsets[i]`` is
    where event ``i`` starts), with its time and action code in typed arrays. A JSON Lines export of
    consecutive events is then a single slice of that buffer. (Keeping one ``bytes`` per event
    would cost about 4 KB each: orjson's output buffers fragment the heap.) Reading the store as a
    sequence decodes events on access. Events added with :data:`RECORDING_DELAY_KEY` are
    recorded late: :meth:`select` leaves them out until ``recorded_by`` reaches their time plus
    that delay.
    """

    _ADD_CHUNK = 10_000  # events encoded per lock acquisition

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = bytearray()
        self._offsets = array("Q", [0])
        self._times = array("d")  # epoch seconds; inf when missing or unparsable
        self._codes = array("H")  # action code per event
        self._action_codes: dict[str, int] = {}
        self._action_names: list[str] = []
        self._untimed: list[int] = []
        self._sorted = True
        self._max_time = -math.inf
        self._days: dict[str, float] = {}
        self._recorded: dict[int, float] = {}  # index -> epoch when recorded (late events only)
        self.keys: set[str] = set()

    def _epoch(self, raw: Any) -> float:
        """Epoch seconds of an event's ``time``; inf when missing or unparsable."""
        if not isinstance(raw, str):
            return math.inf
        # Fast path for Cordial's own "YYYY-MM-DDTHH:MM:SS+0000" (a per-day cache).
        if len(raw) == 24 and raw.endswith("+0000") and raw[10] == "T":
            day = self._days.get(raw[:10])
            try:
                if day is None:
                    day = datetime.fromisoformat(raw[:10]).replace(tzinfo=UTC).timestamp()
                    self._days[raw[:10]] = day
                return day + int(raw[11:13]) * 3600 + int(raw[14:16]) * 60 + int(raw[17:19])
            except ValueError:
                return math.inf
        try:
            return parse_cordial_time(raw).timestamp()
        except ValueError:
            return math.inf

    def _code(self, action: Any) -> int:
        name = action if isinstance(action, str) else ""
        code = self._action_codes.get(name)
        if code is None:
            code = self._action_codes[name] = len(self._action_names)
            self._action_names.append(name)
        return code

    def add(self, events: Iterable[dict[str, Any]]) -> int:
        """Store events; returns how many were added."""
        added = 0
        iterator = iter(events)
        while True:
            chunk = list(itertools.islice(iterator, self._ADD_CHUNK))
            if not chunk:
                return added
            self._add_chunk(chunk)
            added += len(chunk)

    def _add_chunk(self, events: list[dict[str, Any]]) -> None:
        dumps, inf = orjson.dumps, math.inf
        data = bytearray()
        ends: list[int] = []
        times: list[float] = []
        codes: list[int] = []
        keys: set[str] = set()
        recorded: dict[int, float] = {}
        for position, event in enumerate(events):
            ts = self._epoch(event.get("time"))
            if RECORDING_DELAY_KEY in event:
                base = ts if ts != inf else time.time()
                recorded[position] = base + _recording_delay(event[RECORDING_DELAY_KEY])
                event = {k: v for k, v in event.items() if k != RECORDING_DELAY_KEY}
            data += dumps(event)
            data.append(10)  # newline
            ends.append(len(data))
            times.append(ts)
            codes.append(self._code(event.get("action")))
            keys.update(event)
        with self._lock:
            base_index, base_offset = len(self._times), len(self._data)
            last = self._times[-1] if self._times else -inf
            for offset, ts in enumerate(times):
                if ts == inf:
                    self._untimed.append(base_index + offset)
                elif ts > self._max_time:
                    self._max_time = ts
                if ts < last:
                    self._sorted = False
                last = ts
            self._data += data
            self._offsets.extend(base_offset + end for end in ends)
            self._times.extend(times)
            self._codes.extend(codes)
            self.keys |= keys
            self._recorded.update((base_index + p, at) for p, at in recorded.items())

    def latest_time(self) -> float | None:
        """The latest event time (epoch seconds), or None without timed events."""
        return self._max_time if self._max_time != -math.inf else None

    def select(
        self,
        start: float,
        end: float,
        actions: frozenset[str] | None,
        recorded_by: float | None = None,
        *,
        custom_wildcard: bool = True,
    ) -> list[int]:
        """Indices (in time order) of events with ``start <= time <= end`` and a selected action.

        ``actions`` None selects every action; ``"custom"`` in it selects every non-reserved
        action with ``custom_wildcard``, else only events named ``custom``. Events without a
        usable time are added to every export (tests feed bad records so). With ``recorded_by``
        (epoch seconds), events recorded later than that are left out.
        """
        indices = self._select(start, end, actions, custom_wildcard)
        if recorded_by is None or not self._recorded:
            return indices
        late = self._recorded
        return [i for i in indices if late.get(i, -math.inf) <= recorded_by]

    def _select(
        self, start: float, end: float, actions: frozenset[str] | None, custom_wildcard: bool
    ) -> list[int]:
        with self._lock:
            times = self._times
            if self._sorted:
                lo, hi = bisect.bisect_left(times, start), bisect.bisect_right(times, end)
                indices = list(range(lo, hi))
            else:
                indices = sorted(
                    (i for i, t in enumerate(times) if start <= t <= end), key=times.__getitem__
                )
            indices.extend(self._untimed)
            if actions is None:
                return indices
            custom = custom_wildcard and "custom" in actions
            wanted = {
                code
                for name, code in self._action_codes.items()
                if name in actions or (custom and name not in _RESERVED)
            }
            if len(wanted) == len(self._action_names):
                return indices  # every stored action: no per-event test (0.1 s a million)
            codes = self._codes
            return [i for i in indices if codes[i] in wanted]

    def records(self, indices: Sequence[int]) -> list[bytes]:
        """The JSON text of the given events (no newline)."""
        with self._lock, memoryview(self._data) as data:  # one copy each, see jsonl()
            offsets = self._offsets
            return [data[offsets[i] : offsets[i + 1] - 1].tobytes() for i in indices]

    def jsonl(self, indices: Sequence[int]) -> bytes:
        """The given events as JSON Lines (each line ends with a newline).

        Runs of consecutive indices are copied as one slice of the buffer, once (through a view:
        slicing the ``bytearray`` itself would copy twice). The view is released under the lock,
        as a ``bytearray`` with a view cannot grow.
        """
        parts: list[bytes] = []
        with self._lock, memoryview(self._data) as data:
            offsets = self._offsets
            run_start = prev = -2
            for i in indices:
                if i != prev + 1:
                    if run_start >= 0:
                        parts.append(data[offsets[run_start] : offsets[prev + 1]].tobytes())
                    run_start = i
                prev = i
            if run_start >= 0:
                parts.append(data[offsets[run_start] : offsets[prev + 1]].tobytes())
        return b"".join(parts)

    def __len__(self) -> int:
        """Number of stored events."""
        return len(self._times)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        """Decode one event (or a slice of them)."""
        if isinstance(index, slice):
            return [orjson.loads(b) for b in self.records(range(len(self))[index])]
        position = range(len(self))[index]  # negative indices, IndexError
        event: dict[str, Any] = orjson.loads(self.records([position])[0])
        return event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Decode events one by one (a snapshot of the current length)."""
        total = len(self)
        for start in range(0, total, _BATCH):
            for blob in self.records(range(start, min(start + _BATCH, total))):
                yield orjson.loads(blob)


def _recording_delay(delay: Any) -> float:
    """An event's recording delay in seconds (a number >= 0, else ``ValueError``)."""
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
        raise ValueError(f"{RECORDING_DELAY_KEY} must be a number of seconds >= 0, not {delay!r}")
    return float(delay)
