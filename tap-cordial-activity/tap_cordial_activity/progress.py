"""ReadProgress: the progress lines logged while a window's export files are read."""

from __future__ import annotations

import logging
import time
from typing import Any

from tap_cordial_activity.timeutil import to_rfc3339
from tap_cordial_activity.windows import Window


class ReadProgress:
    """Logs records read, bytes, MB/s and the export's share done, every ``interval`` seconds."""

    def __init__(
        self, logger: logging.Logger, interval: float, window: Window, total_bytes: int
    ) -> None:
        """Progress of reading ``window``'s files, ``total_bytes`` in all (0: unknown)."""
        self.logger, self.interval, self.window = logger, interval, window
        self.total_bytes = total_bytes
        self.done_bytes = 0
        #: The file being read (its ``offset`` is the bytes read so far).
        self.file: Any = None
        self.began = time.monotonic()
        self.due = self.began + interval

    def file_done(self, remote: Any) -> None:
        """Count a finished file's bytes."""
        self.done_bytes += remote.offset
        self.file = None

    def maybe_log(self, read: int) -> None:
        """Log a progress line when the interval has passed."""
        now = time.monotonic()
        if now < self.due:
            return
        self.due = now + self.interval
        done = self.done_bytes + (self.file.offset if self.file is not None else 0)
        window = self.window
        if self.total_bytes:
            share = f"{min(100.0, 100 * done / self.total_bytes):.0f}% of the export's bytes"
        elif window.reported:
            share = f"{min(100.0, 100 * read / window.reported):.0f}% of its records"
        else:
            share = "share unknown"
        # Bad records set aside so far (max_bad_records) are among those read.
        aside = f" ({window.rejected} set aside as bad records)" if window.rejected else ""
        self.logger.info(
            "Reading export %r (job %s, %s .. %s): %d records%s, %.1f MB, %.1f MB/s, %s",
            window.export, window.job_id, to_rfc3339(window.start), to_rfc3339(window.end), read,
            aside, done / 1e6, done / max(now - self.began, 1e-9) / 1e6, share,
        )
