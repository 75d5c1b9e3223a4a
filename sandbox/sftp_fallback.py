"""A paramiko SFTP server: the demo's fallback where OpenSSH sshd or root is not available.

It offers what :class:`sandbox.sftp.SftpServer` promises (password and key login, an Ed25519 host
key, a served folder addressed by its absolute path) without any system change. The tests never use
it: they run the real OpenSSH server.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Self

import paramiko
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)
from paramiko.sftp import SFTP_OK
from paramiko.sftp_attr import SFTPAttributes

from sandbox.sftp_base import SftpServer, generate_ed25519_key

_FALLBACK_USER = "cordialsftp"


class _Auth(paramiko.ServerInterface):
    """Password or public-key login for the one sandbox user; SFTP subsystem only."""

    def __init__(self, server: ParamikoSftpServer) -> None:
        self._server = server

    def get_allowed_auths(self, username: str) -> str:
        return "publickey,password"

    def check_auth_password(self, username: str, password: str) -> int:
        ok = username == self._server.username and secrets.compare_digest(
            password.encode(), self._server.password.encode()
        )
        return AUTH_SUCCESSFUL if ok else AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = username == self._server.username and key == self._server.client_public_key
        return AUTH_SUCCESSFUL if ok else AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class _Handle(paramiko.SFTPHandle):
    """An open file of the served folder."""

    def __init__(self, path: str, flags: int, handle: IO[bytes]) -> None:
        super().__init__(flags)
        self.path = path
        self.readfile = handle
        self.writefile = handle

    def stat(self) -> SFTPAttributes | int:
        try:
            return SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))
        except OSError as exc:
            return _errno(exc)


def _errno(exc: OSError) -> int:
    return int(paramiko.SFTPServer.convert_errno(exc.errno or 0))


class _Folder(paramiko.SFTPServerInterface):
    """Serves the files under ``root`` at their absolute local paths, nothing outside it."""

    def __init__(
        self, server: paramiko.ServerInterface, *args: Any, root: str, **kwargs: Any
    ) -> None:
        super().__init__(server, *args, **kwargs)
        self._root = os.path.realpath(root)

    def _local(self, path: str) -> str:
        resolved = os.path.realpath(path)
        if resolved != self._root and not resolved.startswith(self._root + os.sep):
            raise PermissionError(errno.EACCES, "outside the served folder")
        return resolved

    def canonicalize(self, path: str) -> str:
        return os.path.normpath(path if os.path.isabs(path) else os.path.join(self._root, path))

    def list_folder(self, path: str) -> list[SFTPAttributes] | int:
        try:
            local = self._local(path)
            result = []
            for name in os.listdir(local):
                attr = SFTPAttributes.from_stat(os.lstat(os.path.join(local, name)))
                attr.filename = name
                result.append(attr)
        except OSError as exc:
            return _errno(exc)
        return result

    def stat(self, path: str) -> SFTPAttributes | int:
        try:
            return SFTPAttributes.from_stat(os.stat(self._local(path)))
        except OSError as exc:
            return _errno(exc)

    def lstat(self, path: str) -> SFTPAttributes | int:
        try:
            return SFTPAttributes.from_stat(os.lstat(self._local(path)))
        except OSError as exc:
            return _errno(exc)

    def open(self, path: str, flags: int, attr: SFTPAttributes) -> paramiko.SFTPHandle | int:
        if flags & os.O_WRONLY:
            mode = "ab" if flags & os.O_APPEND else "wb"
        elif flags & os.O_RDWR:
            mode = "a+b" if flags & os.O_APPEND else "r+b"
        else:
            mode = "rb"
        try:
            fd = os.open(self._local(path), flags, 0o644)
            return _Handle(path, flags, os.fdopen(fd, mode))
        except OSError as exc:
            return _errno(exc)

    def remove(self, path: str) -> int:
        try:
            os.remove(self._local(path))
        except OSError as exc:
            return _errno(exc)
        return SFTP_OK

    def rename(self, oldpath: str, newpath: str) -> int:
        try:
            os.rename(self._local(oldpath), self._local(newpath))
        except OSError as exc:
            return _errno(exc)
        return SFTP_OK

    def mkdir(self, path: str, attr: SFTPAttributes) -> int:
        try:
            os.mkdir(self._local(path))
        except OSError as exc:
            return _errno(exc)
        return SFTP_OK

    def rmdir(self, path: str) -> int:
        try:
            os.rmdir(self._local(path))
        except OSError as exc:
            return _errno(exc)
        return SFTP_OK


class ParamikoSftpServer(SftpServer):
    """SFTP over paramiko on a free 127.0.0.1 port, serving a temporary folder."""

    kind = "paramiko"

    def __init__(self, *, tmp_dir: Path | None = None) -> None:
        super().__init__()
        self._tmp_dir = tmp_dir
        self._base: Path | None = None
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._transports: set[paramiko.Transport] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> Self:
        """Create the keys and folder, then accept connections in a background thread."""
        if self._listener is not None:
            return self
        self._base = Path(tempfile.mkdtemp(prefix="sandbox-sftp-", dir=self._tmp_dir))
        self.root = self._base / "export"
        self.root.mkdir()
        self.sftp_path = str(self.root)
        self.username = _FALLBACK_USER
        self.password = secrets.token_urlsafe(18)
        host_private, host_public = generate_ed25519_key()
        self._host_key = paramiko.Ed25519Key.from_private_key(io.StringIO(host_private))
        self.private_key, _ = generate_ed25519_key()
        self.client_public_key = paramiko.Ed25519Key.from_private_key(io.StringIO(self.private_key))
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self.host_key_line = f"[{self.host}]:{self.port} {host_public}"
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept, name="sandbox-sftp", daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            transport = paramiko.Transport(conn)
            transport.add_server_key(self._host_key)
            transport.set_subsystem_handler(
                "sftp", paramiko.SFTPServer, _Folder, root=str(self.root)
            )
            with self._lock:
                self._transports.add(transport)
            try:
                # With an event, the handshake runs in the transport's own thread: a slow or
                # silent client cannot hold up the accept loop.
                transport.start_server(event=threading.Event(), server=_Auth(self))
            except (paramiko.SSHException, EOFError, OSError):
                self._forget(transport)
                continue
            # Reap finished transports now and then, so the set does not grow without end.
            with self._lock:
                for done in [t for t in self._transports if not t.is_active()]:
                    self._transports.discard(done)

    def _forget(self, transport: paramiko.Transport) -> None:
        with self._lock:
            self._transports.discard(transport)
        transport.close()

    def drop_connections(self) -> None:
        """Close every client session."""
        with self._lock:
            transports = list(self._transports)
            self._transports.clear()
        for transport in transports:
            transport.close()
            transport.join(5)

    def stop(self) -> None:
        """Stop accepting, close sessions and delete the temporary folder."""
        self._stopping.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.drop_connections()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None
