"""Progress lines while uploading, and the run's summary and reconciliation counts at the end.

A daemon thread logs a progress line every ``progress_interval_seconds`` while anything was sent
or is in flight. At the end of the input (also after a failed upload) the target logs one summary
line, one reconciliation line per stream and the same counts as singer-sdk METRIC lines
(``record_count`` with the tags ``stream``, ``lytics_stream`` and ``count``; docs/design.md).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from singer_sdk import metrics

from target_lytics.settings import rejects_stream
from target_lytics.uploads import UploadCounts

_MB = 1_000_000


@dataclass
class StreamCounts:
    """The counts of one Singer stream's sink."""

    stream: str
    lytics_stream: str
    counts: UploadCounts


class UploadProgress:
    """Every sink's counts; the periodic progress line and the final summary."""

    def __init__(self, logger: logging.Logger, interval_seconds: float) -> None:
        """Nothing counted yet; the progress thread starts with the first stream."""
        self.logger = logger
        self.interval_seconds = interval_seconds
        self.streams: list[StreamCounts] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_line: tuple[int, int, int] | None = None
        self._summarized = False

    def add_stream(self, stream: str, lytics_stream: str) -> UploadCounts:
        """Counts for one more sink (a stream whose schema changed gets a new sink)."""
        counts = UploadCounts()
        self.streams.append(StreamCounts(stream, lytics_stream, counts))
        if self._thread is None:
            self._thread = threading.Thread(target=self._tick, name="lytics-progress", daemon=True)
            self._thread.start()
        return counts

    def total(self) -> UploadCounts:
        """The sum over every sink."""
        total = UploadCounts()
        for entry in self.streams:
            counts = entry.counts
            total.received += counts.received
            total.accepted += counts.accepted
            total.rejected += counts.rejected
            total.set_aside += counts.set_aside
            total.requests += counts.requests
            total.retried += counts.retried
            total.bytes_sent += counts.bytes_sent
            total.in_flight += counts.in_flight
        return total

    def line(self, total: UploadCounts) -> str:
        """Events accepted (and set aside), requests, MB sent, events/s, in flight, retried."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        aside = f" ({total.set_aside:,} set aside)" if total.set_aside else ""
        return (
            f"{total.accepted:,} events accepted by Lytics{aside} in {total.requests:,} requests, "
            f"{total.bytes_sent / _MB:,.1f} MB sent, {total.accepted / elapsed:,.0f} events/s, "
            f"{total.in_flight} requests in flight, {total.retried} retried"
        )

    def stop(self) -> None:
        """Stop the progress thread."""
        self._stop.set()

    def summary(self, *, failed: bool, dry_run: bool) -> None:
        """Log the summary, one reconciliation line per stream, and the METRIC lines (once)."""
        self.stop()
        if self._summarized:
            return
        self._summarized = True
        total = self.total()
        how = " (the run failed)" if failed else ""
        how += " (dry run: Lytics validated, stored nothing)" if dry_run else ""
        self.logger.info("Lytics upload summary%s: %s", how, self.line(total))
        metrics_logger = metrics.get_metrics_logger()
        for entry in self.streams:
            counts = entry.counts
            self.logger.info(
                "Stream '%s' -> Lytics stream '%s': %d records received, %d events accepted, "
                "%d rejected, %d requests%s",
                entry.stream,
                entry.lytics_stream,
                counts.received,
                counts.accepted,
                counts.rejected,
                counts.requests,
                f", {counts.set_aside} set aside into Lytics stream "
                f"'{rejects_stream(entry.lytics_stream)}'"
                if counts.set_aside
                else "",
            )
            values = {
                "received": counts.received,
                "accepted": counts.accepted,
                "rejected": counts.rejected,
                "set_aside": counts.set_aside,
                "requests": counts.requests,
            }
            for name, value in values.items():
                tags = {
                    metrics.Tag.STREAM: entry.stream,
                    "lytics_stream": entry.lytics_stream,
                    "count": name,
                }
                point = metrics.Point("counter", metrics.Metric.RECORD_COUNT, value, tags)
                metrics.log(metrics_logger, point)

    def _tick(self) -> None:
        """Log a progress line each interval while uploads move or are in flight."""
        while not self._stop.wait(self.interval_seconds):
            total = self.total()
            moved = (total.accepted, total.requests, total.bytes_sent)
            if total.in_flight or moved != self._last_line:
                self._last_line = moved
                self.logger.info("Lytics upload progress: %s", self.line(total))
