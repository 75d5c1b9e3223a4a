"""SftpStore: the SFTP export folder as an :class:`~tap_cordial_activity.export_store.ExportStore`.

A thin adapter: :class:`~tap_cordial_activity.sftp.SftpReader` (login, host key, reconnects) and
:class:`~tap_cordial_activity.remote_file.RemoteFile` (pipelined reads) do the work unchanged;
this binds them to ``sftp_path`` and builds them from the settings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from tap_cordial_activity import connections
from tap_cordial_activity.errors import SftpError, StoreError
from tap_cordial_activity.export_store import CHECK_RETRIES, CHECK_TIMEOUT_SECONDS
from tap_cordial_activity.remote_file import RemoteFile
from tap_cordial_activity.sftp import SftpReader


class SftpStore:
    """``sftp_path`` on the SFTP server, read through an :class:`SftpReader`."""

    error: type[StoreError] = SftpError

    def __init__(self, reader: SftpReader, folder: str) -> None:
        """Files of ``folder``, read with ``reader``."""
        self.reader = reader
        self.folder = folder

    @classmethod
    def from_config(cls, config: Mapping[str, Any], logger: logging.Logger) -> SftpStore:
        """The store the settings describe."""
        return cls(connections.sftp_reader(config, logger), str(config["sftp_path"]))

    @property
    def location(self) -> str:
        """``SFTP folder '/upload'``."""
        return f"SFTP folder {self.folder!r}"

    def connect(self) -> None:
        """Log in (and verify the host key)."""
        self.reader.connect()

    def list_files(self) -> dict[str, int]:
        """Regular files of the folder and their sizes."""
        return {e.filename: int(e.st_size or 0) for e in self.reader.list_files(self.folder)}

    def path(self, name: str) -> str:
        """``{sftp_path}/{name}``."""
        return f"{self.folder.rstrip('/')}/{name}"

    def open(self, name: str, offset: int = 0) -> RemoteFile:
        """A :class:`RemoteFile` of ``name``, reading from ``offset``."""
        remote = self.reader.open(self.path(name))
        if offset:
            # Its next read reopens the file at the offset (as after a dropped connection).
            remote.close()
            remote.offset = offset
        return remote

    def remove(self, path: str) -> bool:
        """Delete ``path`` on the server."""
        return self.reader.remove(path)

    def check(self) -> str:
        """Log in with short timeouts, verify the host key and list the folder."""
        reader = self.reader
        reader.settings = replace(
            reader.settings,
            timeout_seconds=min(reader.settings.timeout_seconds, CHECK_TIMEOUT_SECONDS),
            reconnect_attempts=CHECK_RETRIES,
        )
        try:
            with reader:
                files = reader.list_files(self.folder)
        except SftpError as exc:
            raise type(exc)(
                f"Connection check failed at the SFTP host {reader.address}: {exc}"
            ) from exc
        return (
            f"SFTP {reader.settings.username}@{reader.address}: login OK, host key verified, "
            f"{len(files)} file(s) in {self.folder}"
        )

    def close(self) -> None:
        """Close the SFTP session."""
        self.reader.close()
