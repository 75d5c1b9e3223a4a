"""STATE checkpoints that wait for Lytics without stopping the uploads.

When a STATE arrives, each sink's count of records received so far is its watermark: the STATE
covers exactly those records. The STATE is written as soon as every sink's accepted prefix
(:class:`~target_lytics.uploads.RecordLedger`) has reached its watermark, from whichever thread saw
the last body accepted, while later bodies keep flowing. Only the newest ready STATE is written;
older ones are dropped, since a STATE replaces the ones before it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from target_lytics.uploads import RecordLedger


@dataclass
class _Pending:
    """A STATE and the records (per sink) it covers."""

    state: dict[str, Any]
    watermarks: list[tuple[RecordLedger, int]]

    def ready(self) -> bool:
        """Every record before the STATE is accepted."""
        return all(ledger.accepted_through >= mark for ledger, mark in self.watermarks)


class StateCheckpoints:
    """Pending STATE messages in arrival order; writes each one once its records are accepted."""

    def __init__(self, write: Callable[[dict[str, Any]], None]) -> None:
        """``write`` emits one STATE (called under this object's lock, so in order)."""
        self._write = write
        self._pending: deque[_Pending] = deque()
        self._lock = threading.Lock()
        self._last_written: dict[str, Any] | None = None
        self.ledgers: list[RecordLedger] = []

    def new_ledger(self) -> RecordLedger:
        """A ledger for a new sink; its accepted prefix growing may make a STATE ready."""
        ledger = RecordLedger(on_progress=self.write_ready)
        with self._lock:
            self.ledgers.append(ledger)
        return ledger

    def add(self, state: dict[str, Any]) -> None:
        """Note a STATE covering every record received so far; write it if already accepted."""
        with self._lock:
            marks = [(ledger, ledger.received) for ledger in self.ledgers]
            self._pending.append(_Pending(state, marks))
        self.write_ready()

    def write_ready(self) -> None:
        """Write the newest STATE whose records are all accepted, dropping the older ones."""
        with self._lock:
            ready: _Pending | None = None
            while self._pending and self._pending[0].ready():
                ready = self._pending.popleft()
            if ready is None or ready.state == self._last_written:
                return
            self._last_written = ready.state
            self._write(ready.state)
