"""ExportStore: where Cordial writes the export files and the tap reads them, as one interface.

:class:`~tap_cordial_activity.export.ExportRunner` and the pipeline use only this interface; the
readers are :class:`~tap_cordial_activity.sftp_store.SftpStore` (SFTP) and
:class:`~tap_cordial_activity.s3.S3Store` (S3), and ``destinations.DESTINATIONS`` maps an
``export_destination`` name to its reader builder and the export request's destination body.
A GCS or Azure reader is one more class satisfying :class:`ExportStore` plus one table entry.

No SDK, no client library here.
"""

from __future__ import annotations

from typing import Protocol

from tap_cordial_activity.errors import StoreError

#: ``--test`` answers in seconds: each host gets this timeout and at most this many retries.
CHECK_TIMEOUT_SECONDS = 3.0
CHECK_RETRIES = 1


class ExportFile(Protocol):
    """One export file being read: ``read(n)`` in order until ``b""``, resumed after a drop.

    ``offset`` is the number of bytes read so far (the next byte's position); a dropped
    connection is retried from it, so no byte is lost or read twice.
    """

    offset: int
    #: Connections retried while reading this file.
    reconnects: int

    def read(self, size: int, /) -> bytes:
        """Up to ``size`` bytes from ``offset``; ``b""`` at the end of the file."""
        ...

    def close(self) -> None:
        """Release the connection's resources for this file."""
        ...


class ExportStore(Protocol):
    """The export folder: list it, stream and delete its files, check it, close the session."""

    #: The error this store raises (a :class:`StoreError`), also for messages about its files.
    error: type[StoreError]

    @property
    def location(self) -> str:
        """Where the files are, as messages name it (``SFTP folder '/upload'``)."""
        ...

    def connect(self) -> None:
        """Open the session now, so a bad setting fails before any export job is created."""
        ...

    def list_files(self) -> dict[str, int]:
        """The folder's files: name -> size in bytes (raises :attr:`error`)."""
        ...

    def path(self, name: str) -> str:
        """The full path of file ``name`` as the STATE's ``read_files`` records it."""
        ...

    def open(self, name: str, offset: int = 0) -> ExportFile:
        """A streaming reader of file ``name`` from byte ``offset``."""
        ...

    def remove(self, path: str) -> bool:
        """Delete the file at ``path`` (see :meth:`path`): True, or False when already gone."""
        ...

    def check(self) -> str:
        """``--test``: log in, list the folder with short timeouts; one line saying what is OK.

        Raises :attr:`error` naming the host or bucket that failed.
        """
        ...

    def close(self) -> None:
        """Close the session (idempotent)."""
        ...
