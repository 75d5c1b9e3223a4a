"""Concurrent uploads of one sink's bodies, and which of its records Lytics has accepted.

A sink numbers its records as it receives them. Each body holds a contiguous run of those
numbers; :class:`RecordLedger` keeps the length of the prefix of records whose bodies were all
accepted (bodies may finish out of order), which is what a STATE checkpoint waits for. A body that
fails for good stops that prefix for the rest of the run, so no STATE after its records can be
written even when later bodies succeed.

:class:`UploadPool` keeps up to ``max_concurrent_uploads`` bodies in flight on as many daemon
threads (memory: about that many bodies plus the one being built). ``submit`` waits until fewer
than that many bodies are outside the accepted prefix, like a TCP window: a slow or retried body
lets only that many later ones through, which also bounds what a killed run delivered beyond its
last STATE. Daemon threads, so a run ending on an error does not wait for requests in flight.
"""

from __future__ import annotations

import heapq
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from target_lytics.client import AdaptiveLimit, LyticsClient
from target_lytics.errors import LyticsError, RejectedEventsError


@dataclass
class UploadCounts:
    """What one sink sent and what Lytics said about it (read for progress and the summary)."""

    received: int = 0
    accepted: int = 0
    rejected: int = 0
    #: Events set aside into the rejects stream (max_rejected_records): not sent, or refused.
    set_aside: int = 0
    requests: int = 0
    retried: int = 0
    bytes_sent: int = 0
    in_flight: int = 0


@dataclass(order=True)
class _Span:
    """Records ``[first, end)`` of one body, ordered by ``first``."""

    first: int
    end: int = field(compare=False)


class RecordLedger:
    """The records a sink received, and the prefix of them Lytics has accepted."""

    def __init__(self, on_progress: Callable[[], None]) -> None:
        """Start with nothing received; ``on_progress`` runs whenever the accepted prefix grows."""
        self.received = 0
        self.accepted_through = 0
        #: Bodies whose records are all in the accepted prefix.
        self.bodies_accepted_through = 0
        self._finished: list[_Span] = []
        self._lock = threading.Lock()
        self._on_progress = on_progress

    def body_accepted(self, first: int, end: int) -> None:
        """Records ``[first, end)`` are accepted; grow the prefix over finished bodies."""
        with self._lock:
            heapq.heappush(self._finished, _Span(first, end))
            grew = False
            while self._finished and self._finished[0].first == self.accepted_through:
                self.accepted_through = heapq.heappop(self._finished).end
                self.bodies_accepted_through += 1
                grew = True
        if grew:
            self._on_progress()


@dataclass
class Body:
    """One closed JSON array body and the records it holds."""

    data: bytes
    first: int
    end: int

    @property
    def count(self) -> int:
        """Events in the body (one per record)."""
        return self.end - self.first


class UploadPool:
    """Uploads one sink's bodies on up to ``size`` threads; remembers the first failure."""

    def __init__(
        self,
        *,
        client: LyticsClient,
        size: int,
        upload: Callable[[Body, AdaptiveLimit], tuple[int, int]],
        ledger: RecordLedger,
        counts: UploadCounts,
        name: str,
        on_error: Callable[[], None],
    ) -> None:
        """Start ``size`` daemon threads running ``upload(body, limit)`` -> (events, attempts).

        ``on_error`` runs once, in the caller's thread, before a failure is first raised.
        """
        self.client = client
        self.size = size
        self.limit = AdaptiveLimit(size)
        self.ledger = ledger
        self.counts = counts
        self.error: LyticsError | None = None
        self._upload = upload
        self._on_error: Callable[[], None] | None = on_error
        self._queue: queue.SimpleQueue[Body | None] = queue.SimpleQueue()
        self._outstanding = 0
        self._submitted = 0
        self._changed = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, name=f"lytics-upload-{name}-{n}", daemon=True)
            for n in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, body: Body) -> None:
        """Queue ``body`` once fewer than ``size`` bodies are outside the accepted prefix.

        Raises an earlier failure instead.
        """
        with self._changed:
            while self._ahead() >= self.size and self.error is None:
                self._changed.wait()
            self.raise_error()
            self._submitted += 1
            self._outstanding += 1
            self.counts.in_flight = self._outstanding
        self._queue.put(body)

    def wait(self) -> None:
        """Wait until every submitted body is accepted; raise the first failure."""
        with self._changed:
            while self._outstanding and self.error is None:
                self._changed.wait()
            self.raise_error()

    def _ahead(self) -> int:
        """Bodies submitted and not yet in the accepted prefix (in flight or accepted early)."""
        return self._submitted - self.ledger.bodies_accepted_through

    def raise_error(self) -> None:
        """Raise the first failure, if any (in the caller's thread)."""
        if self.error is not None:
            on_error, self._on_error = self._on_error, None
            if on_error is not None:
                on_error()
            raise self.error

    def close(self) -> None:
        """Stop the threads once the queue is empty (they also stop with the process)."""
        for _ in self._threads:
            self._queue.put(None)

    def _work(self) -> None:
        """Upload queued bodies until told to stop."""
        while (body := self._queue.get()) is not None:
            try:
                events, attempts = self._upload(body, self.limit)
            except RejectedEventsError as exc:
                self._count(body, exc.accepted, 1, exc.rejected)
                self._failed(exc)
            except LyticsError as exc:
                self._failed(exc)
            except Exception as exc:  # any crash must end the run, not hang it
                self._failed(LyticsError(f"upload of {body.count} events failed: {exc!r}"))
            else:
                self._count(body, events, attempts, 0)
                self.ledger.body_accepted(body.first, body.end)
            finally:
                with self._changed:
                    self._outstanding -= 1
                    self.counts.in_flight = self._outstanding
                    self._changed.notify_all()

    def _count(self, body: Body, accepted: int, attempts: int, rejected: int) -> None:
        """Add one answered body to the counts."""
        with self._changed:
            counts = self.counts
            counts.accepted += accepted
            counts.rejected += rejected
            counts.requests += 1
            counts.retried += attempts > 1
            counts.bytes_sent += len(body.data)

    def _failed(self, error: LyticsError) -> None:
        """Keep the first failure; stop other uploads' retries, since the run will end."""
        with self._changed:
            if self.error is None:
                self.error = error
            self._changed.notify_all()
        self.client.cancel()
