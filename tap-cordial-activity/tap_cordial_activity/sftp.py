"""SftpReader: a verified SFTP login, listing, deletes, and reconnecting after a drop.

The server's host key must match ``sftp_host_key`` (ssh-keyscan output) or ``~/.ssh/known_hosts``:
there is no trust on first use. Files are read by
:class:`~tap_cordial_activity.remote_file.RemoteFile`.
"""

from __future__ import annotations

import logging
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import paramiko

from tap_cordial_activity.errors import CONNECTION_ERRORS, HostKeyError, SftpError
from tap_cordial_activity.keys import HostKey, fingerprint, load_private_key, parse_host_keys
from tap_cordial_activity.paramiko_private import use_bytearray_receive_buffer
from tap_cordial_activity.remote_file import RemoteFile
from tap_cordial_activity.retries import spaced_out
from tap_cordial_activity.sftp_settings import SftpSettings

__all__ = ["HostKeyError", "RemoteFile", "SftpError", "SftpReader", "SftpSettings"]

T = TypeVar("T")


class SftpReader:
    """A verified SFTP session: list folders and stream files, reconnecting when dropped."""

    def __init__(self, settings: SftpSettings, logger: logging.Logger | None = None) -> None:
        """Nothing connects until :meth:`connect` (or ``with``)."""
        self.settings = settings
        self.logger = logger or logging.getLogger(__name__)
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._pkey = (
            load_private_key(settings.private_key, settings.private_key_passphrase)
            if settings.private_key
            else None
        )

    @property
    def address(self) -> str:
        """``host`` for port 22, else ``[host]:port`` (the known_hosts spelling)."""
        s = self.settings
        return s.host if s.port == 22 else f"[{s.host}]:{s.port}"

    # -- connection ------------------------------------------------------------------------

    def expected_keys(self) -> list[HostKey]:
        """The keys the server may present: ``sftp_host_key``, else known_hosts entries."""
        if self.settings.host_key:
            return parse_host_keys(self.settings.host_key)
        path = self.settings.known_hosts_path or Path.home() / ".ssh" / "known_hosts"
        if not path.is_file():
            return []
        known = paramiko.HostKeys()
        try:
            known.load(str(path))
        except (OSError, paramiko.SSHException) as exc:
            raise SftpError(f"cannot read known_hosts file {path}: {exc}") from exc
        entry = known.lookup(self.address)
        if not entry:
            return []
        return [HostKey(key.get_name(), key.get_base64()) for key in entry.values()]

    def _check_host_key(self, transport: paramiko.Transport) -> None:
        """Refuse a server whose key is not one of :meth:`expected_keys`."""
        server_key = transport.get_remote_server_key()
        server_type, server_b64 = server_key.get_name(), server_key.get_base64()
        expected = self.expected_keys()
        if any(key.key_base64 == server_b64 for key in expected):
            return
        source = (
            "`sftp_host_key`"
            if self.settings.host_key
            else str(self.settings.known_hosts_path or "~/.ssh/known_hosts")
        )
        how = (
            f"Obtain the server's key with `ssh-keyscan -p {self.settings.port} "
            f"{self.settings.host}`, confirm its fingerprint with the server's administrator "
            "(`ssh-keygen -lf <file>`), and put the line into `sftp_host_key`. The tap never "
            "trusts a key on first use."
        )
        presented = f"{server_type} {fingerprint(server_key.asbytes())}"
        if not expected:
            raise HostKeyError(
                f"SFTP host key of {self.address} is unknown: the server presented {presented}, "
                f"and {source} has no key for it. {how}"
            )
        wanted = ", ".join(f"{key.key_type} {key.fingerprint}" for key in expected)
        raise HostKeyError(
            f"SFTP host key of {self.address} DOES NOT MATCH: the server presented {presented}, "
            f"but {source} expects {wanted}. Either the server's key was changed or someone is "
            f"intercepting the connection; the tap refuses to connect. {how}"
        )

    def connect(self) -> None:
        """Open the SSH transport, verify the host key, log in and start SFTP."""
        s = self.settings
        self.close()
        try:
            sock = socket.create_connection((s.host, s.port), timeout=s.timeout_seconds)
        except OSError as exc:
            raise SftpError(f"cannot reach SFTP server {s.host}:{s.port}: {exc}") from exc
        try:
            transport = paramiko.Transport(sock)
        except BaseException:
            sock.close()
            raise
        transport.banner_timeout = s.timeout_seconds
        transport.auth_timeout = s.timeout_seconds
        try:
            try:
                transport.start_client(timeout=s.timeout_seconds)
            except CONNECTION_ERRORS as exc:
                raise SftpError(
                    f"SSH handshake with {s.host}:{s.port} failed: {type(exc).__name__}: {exc}"
                ) from exc
            # paramiko's start_client returns without an error when its timeout passes first.
            if transport.host_key is None:
                raise SftpError(
                    f"SSH handshake with {s.host}:{s.port} did not finish within "
                    f"{s.timeout_seconds:g} s (the server accepted the connection but did not "
                    "answer as an SSH server)"
                )
            self._check_host_key(transport)
            self._authenticate(transport)
            try:
                sftp = paramiko.SFTPClient.from_transport(transport)
                if sftp is None:
                    raise SftpError(f"{s.host}:{s.port} refused to start the SFTP subsystem")
                channel = sftp.get_channel()
                if channel is not None:
                    channel.settimeout(s.timeout_seconds)
                    use_bytearray_receive_buffer(channel)
            except CONNECTION_ERRORS as exc:
                raise SftpError(
                    f"starting SFTP on {s.host}:{s.port} failed: {type(exc).__name__}: {exc}"
                ) from exc
        except BaseException:
            self._close_quietly(transport, "SSH transport")
            sock.close()
            raise
        self._transport, self._sftp = transport, sftp

    def _authenticate(self, transport: paramiko.Transport) -> None:
        """Log in with the private key, else the password."""
        s = self.settings
        method = "private key" if self._pkey is not None else "password"
        try:
            if self._pkey is not None:
                transport.auth_publickey(s.username, self._pkey)
            elif s.password is not None:
                transport.auth_password(s.username, s.password)
            else:
                raise SftpError("no SFTP login method: set `sftp_password` or `sftp_private_key`")
        except paramiko.AuthenticationException as exc:
            raise SftpError(
                f"SFTP login as {s.username!r} on {s.host}:{s.port} with the {method} was "
                f"refused: check `sftp_username` and the {method}"
                + (" (its public key must be in the user's authorized_keys)" if self._pkey else "")
            ) from exc
        except CONNECTION_ERRORS as exc:
            raise SftpError(
                f"SFTP login as {s.username!r} on {s.host}:{s.port} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    @property
    def sftp(self) -> paramiko.SFTPClient:
        """The live SFTP client, connecting first if needed."""
        if self._sftp is None:
            self.connect()
        assert self._sftp is not None
        return self._sftp

    def reconnect(self, reason: BaseException) -> None:
        """Reconnect after a dropped connection, with a few attempts spaced out exponentially.

        ``reconnect_backoff_seconds`` after the first failed attempt, doubling after each; a
        host key that no longer matches is not retried.
        """
        s = self.settings
        attempts = 0
        last: list[BaseException] = [reason]

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            self.logger.warning(
                "SFTP connection to %s lost (%s); reconnecting, attempt %d/%d",
                self.address, type(last[-1]).__name__, attempts, s.reconnect_attempts,
            )
            try:
                self.connect()
            except SftpError as exc:
                last.append(exc)
                raise

        if s.reconnect_attempts > 0:
            try:
                spaced_out(
                    attempt, tries=s.reconnect_attempts,
                    first_delay_seconds=s.reconnect_backoff_seconds,
                    retry_on=SftpError, give_up=lambda exc: isinstance(exc, HostKeyError),
                )
                return
            except HostKeyError:
                raise
            except SftpError:
                pass
        raise SftpError(
            f"SFTP connection to {self.address} lost and {s.reconnect_attempts} reconnects failed: "
            f"{last[-1]}"
        )

    def close(self) -> None:
        """Close the session (idempotent, best effort: the connection may be broken already)."""
        sftp, transport, self._sftp, self._transport = self._sftp, self._transport, None, None
        if sftp is not None:
            self._close_quietly(sftp, "SFTP session")
        if transport is not None:
            self._close_quietly(transport, "SSH transport")

    def _close_quietly(self, part: paramiko.SFTPClient | paramiko.Transport, what: str) -> None:
        """Close ``part``; closing a broken connection may fail, and nothing is left to save.

        paramiko's ``SFTPClient.close`` sends a channel close over the socket and raises
        ``EOFError`` or ``OSError`` when the other side is gone.
        """
        try:
            part.close()
        except Exception as exc:
            self.logger.debug("Closing the %s of %s failed: %r", what, self.address, exc)

    def __enter__(self) -> Self:
        """Connect."""
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close."""
        self.close()

    # -- folders and files -----------------------------------------------------------------

    def list_files(self, folder: str) -> list[paramiko.SFTPAttributes]:
        """Regular files in ``folder`` (``SftpError`` when it is missing or unreadable)."""
        try:
            entries = self.retrying(lambda: self.sftp.listdir_attr(folder))
        except OSError as exc:
            raise SftpError(
                f"cannot list SFTP folder {folder!r} on {self.address}: {exc}"
            ) from exc
        return [e for e in entries if e.st_mode is None or stat.S_ISREG(e.st_mode)]

    def retrying(self, call: Callable[[], T]) -> T:
        """Run ``call``; after a dropped connection, reconnect and run it once more."""
        try:
            return call()
        except (FileNotFoundError, PermissionError):
            raise
        except CONNECTION_ERRORS as exc:
            self.reconnect(exc)
        try:
            return call()
        except (FileNotFoundError, PermissionError):
            raise
        except CONNECTION_ERRORS as exc:
            raise SftpError(
                f"SFTP connection to {self.address} failed again right after reconnecting: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def remove(self, path: str) -> bool:
        """Delete ``path``: True, or False when it is already gone.

        ``SftpError`` says why the server refused or the connection failed (not retried:
        deleting is housekeeping).
        """
        try:
            self.sftp.remove(path)
        except FileNotFoundError:
            return False
        except CONNECTION_ERRORS as exc:  # includes OSError: refusals and dropped connections
            raise SftpError(
                f"cannot delete SFTP file {path!r} on {self.address}: {type(exc).__name__}: {exc}"
            ) from exc
        return True

    def open(self, path: str) -> RemoteFile:
        """A streaming reader of ``path``; see :class:`RemoteFile`."""
        return RemoteFile(self, path)
