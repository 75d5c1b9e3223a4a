"""The start/stop shape shared by every local server the sandbox and the tests run."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class LocalService:
    """A server on 127.0.0.1: ``start()``, ``stop()``, and a ``with`` block doing both."""

    def start(self) -> Self:
        """Start the server; return it."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server and clean up after it."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        """Start on entering the ``with`` block."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop on leaving the ``with`` block."""
        self.stop()
