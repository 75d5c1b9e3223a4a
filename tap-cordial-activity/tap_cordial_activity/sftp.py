"""SftpReader: a verified SFTP login, listing, and streaming reads with pipelined requests.

The server's host key must match ``sftp_host_key`` (ssh-keyscan output) or ``~/.ssh/known_hosts``:
there is no trust on first use. Reads keep a bounded number of requests in flight from the reading
thread (see :class:`RemoteFile`), so throughput is that of a pipelined download while memory stays
flat, and a dropped connection is reopened and the file resumed at the exact byte where it stopped.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import logging
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, TypeVar, cast

import paramiko
from paramiko.sftp import CMD_DATA, CMD_READ, int64

#: Errors that mean "the connection is gone" rather than "the file or request is wrong".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    OSError,  # socket errors, ConnectionResetError, TimeoutError
    paramiko.SSHException,
    paramiko.SFTPError,  # a garbled SFTP packet: the session is out of step
)
_KEY_CLASSES: tuple[type[paramiko.PKey], ...] = (
    paramiko.Ed25519Key,
    paramiko.ECDSAKey,
    paramiko.RSAKey,
)


T = TypeVar("T")


class SftpError(Exception):
    """An SFTP problem the user can act on; the message says which and how."""


class HostKeyError(SftpError):
    """The server's host key is unknown or differs from the expected one."""


@dataclass(frozen=True)
class HostKey:
    """One expected host key: type name and base64 blob (from ssh-keyscan or known_hosts)."""

    key_type: str
    key_base64: str

    @property
    def fingerprint(self) -> str:
        """OpenSSH-style SHA256 fingerprint."""
        return fingerprint(base64.b64decode(self.key_base64))


def fingerprint(blob: bytes) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_host_keys(text: str) -> list[HostKey]:
    """Parse ``sftp_host_key``: ssh-keyscan lines (``host type b64``, ``[host]:port type b64``) or
    bare ``type b64`` lines; ``#`` comments and blank lines are ignored.

    Raises ``ValueError`` naming the offending line number.
    """
    keys: list[HostKey] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if _looks_like_key_type(fields[0]) and len(fields) >= 2:
            key_type, blob = fields[0], fields[1]
        elif len(fields) >= 3 and _looks_like_key_type(fields[1]):
            key_type, blob = fields[1], fields[2]
        else:
            raise ValueError(
                f"line {number} is neither `host keytype base64` (as ssh-keyscan prints it) "
                "nor `keytype base64`"
            )
        try:
            decoded = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"line {number}: the key is not valid base64") from None
        if not decoded:
            raise ValueError(f"line {number}: the key is empty")
        keys.append(HostKey(key_type, blob))
    if not keys:
        raise ValueError("no key found (expected lines as `ssh-keyscan -p PORT HOST` prints them)")
    return keys


def _looks_like_key_type(token: str) -> bool:
    return token.startswith(("ssh-", "ecdsa-", "sk-"))


def load_private_key(text: str, passphrase: str | None) -> paramiko.PKey:
    """Load an Ed25519, ECDSA or RSA private key from its text; ``ValueError`` says what is wrong.

    The message never contains the key or the passphrase.
    """
    needs_passphrase = False
    for key_class in _KEY_CLASSES:
        try:
            return key_class.from_private_key(io.StringIO(text), password=passphrase or None)
        except paramiko.PasswordRequiredException:
            needs_passphrase = True
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            continue
    if needs_passphrase and not passphrase:
        raise ValueError("the private key is encrypted: set `sftp_private_key_passphrase`")
    if passphrase:
        raise ValueError(
            "the private key could not be loaded: wrong `sftp_private_key_passphrase`, or not an "
            "Ed25519, ECDSA or RSA private key in OpenSSH or PEM format"
        )
    raise ValueError(
        "`sftp_private_key` is not an Ed25519, ECDSA or RSA private key in OpenSSH or PEM format"
    )


@dataclass
class SftpSettings:
    """Where and how to log in."""

    host: str
    port: int
    username: str
    password: str | None = None
    private_key: str | None = None
    private_key_passphrase: str | None = None
    host_key: str | None = None
    known_hosts_path: Path | None = None
    timeout_seconds: float = 30.0
    #: Read requests in flight per file; with 32 KB blocks this bounds a read's memory (2 MB).
    max_concurrent_prefetch_requests: int = 64
    reconnect_attempts: int = 5
    reconnect_backoff_seconds: float = 1.0


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
            raise SftpError(f"cannot read known_hosts file {path}: {exc}") from None
        entry = known.lookup(self.address)
        if not entry:
            return []
        return [HostKey(key.get_name(), key.get_base64()) for key in entry.values()]

    def _check_host_key(self, transport: paramiko.Transport) -> None:
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
            raise SftpError(f"cannot reach SFTP server {s.host}:{s.port}: {exc}") from None
        transport = paramiko.Transport(sock)
        transport.banner_timeout = s.timeout_seconds
        transport.auth_timeout = s.timeout_seconds
        try:
            try:
                transport.start_client(timeout=s.timeout_seconds)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise SftpError(
                    f"SSH handshake with {s.host}:{s.port} failed: {type(exc).__name__}: {exc}"
                ) from None
            self._check_host_key(transport)
            self._authenticate(transport)
            try:
                sftp = paramiko.SFTPClient.from_transport(transport)
            except CONNECTION_ERRORS as exc:
                raise SftpError(
                    f"starting SFTP on {s.host}:{s.port} failed: {type(exc).__name__}: {exc}"
                ) from None
            if sftp is None:
                raise SftpError(f"{s.host}:{s.port} refused to start the SFTP subsystem")
            channel = sftp.get_channel()
            if channel is not None:
                channel.settimeout(s.timeout_seconds)
        except BaseException:
            transport.close()
            raise
        self._transport, self._sftp = transport, sftp

    def _authenticate(self, transport: paramiko.Transport) -> None:
        s = self.settings
        method = "private key" if self._pkey is not None else "password"
        try:
            if self._pkey is not None:
                transport.auth_publickey(s.username, self._pkey)
            elif s.password is not None:
                transport.auth_password(s.username, s.password)
            else:
                raise SftpError("no SFTP login method: set `sftp_password` or `sftp_private_key`")
        except paramiko.AuthenticationException:
            raise SftpError(
                f"SFTP login as {s.username!r} on {s.host}:{s.port} with the {method} was "
                f"refused: check `sftp_username` and the {method}"
                + (" (its public key must be in the user's authorized_keys)" if self._pkey else "")
            ) from None
        except paramiko.SSHException as exc:
            raise SftpError(
                f"SFTP login as {s.username!r} on {s.host}:{s.port} failed: {exc}"
            ) from None

    @property
    def sftp(self) -> paramiko.SFTPClient:
        """The live SFTP client, connecting first if needed."""
        if self._sftp is None:
            self.connect()
        assert self._sftp is not None
        return self._sftp

    def reconnect(self, reason: BaseException) -> None:
        """Reconnect after a dropped connection, with a few spaced attempts."""
        s = self.settings
        for attempt in range(1, s.reconnect_attempts + 1):
            self.logger.warning(
                "SFTP connection to %s lost (%s); reconnecting, attempt %d/%d",
                self.address, type(reason).__name__, attempt, s.reconnect_attempts,
            )
            try:
                self.connect()
                return
            except HostKeyError:
                raise
            except SftpError as exc:
                reason = exc
                time.sleep(s.reconnect_backoff_seconds * 2 ** (attempt - 1))
        raise SftpError(
            f"SFTP connection to {self.address} lost and {s.reconnect_attempts} reconnects failed: "
            f"{reason}"
        )

    def close(self) -> None:
        """Close the session (idempotent)."""
        if self._sftp is not None:
            self._sftp.close()
        if self._transport is not None:
            self._transport.close()
        self._sftp = self._transport = None

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
            entries = self._retrying(lambda: self.sftp.listdir_attr(folder))
        except OSError as exc:
            raise SftpError(
                f"cannot list SFTP folder {folder!r} on {self.address}: {exc}"
            ) from None
        return [e for e in entries if e.st_mode is None or stat.S_ISREG(e.st_mode)]

    def _retrying(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except (FileNotFoundError, PermissionError):
            raise
        except CONNECTION_ERRORS as exc:
            self.reconnect(exc)
            return call()

    def remove(self, path: str) -> bool:
        """Delete ``path``: True, or False when it is already gone; ``SftpError`` says why the
        server refused or the connection failed (not retried: deleting is housekeeping)."""
        try:
            self.sftp.remove(path)
        except FileNotFoundError:
            return False
        except CONNECTION_ERRORS as exc:  # includes OSError: refusals and dropped connections
            raise SftpError(
                f"cannot delete SFTP file {path!r} on {self.address}: {type(exc).__name__}: {exc}"
            ) from None
        return True

    def open(self, path: str) -> RemoteFile:
        """A streaming reader of ``path``; see :class:`RemoteFile`."""
        return RemoteFile(self, path)


class _RequestLayer(Protocol):
    """paramiko ``SFTPClient``'s request/response methods (private: the ones its prefetch uses)."""

    def _async_request(self, fileobj: object, t: int, *args: object) -> int: ...

    def _read_response(self, waitfor: int | None = None) -> object: ...

    def _convert_status(self, msg: paramiko.Message) -> None: ...


class RemoteFile:
    """Sequential reader of one remote file: pipelined reads from the calling thread, exact resume.

    Up to ``max_concurrent_prefetch_requests`` read requests are kept in flight ahead of the
    reader (as ``sftp`` and paramiko's ``prefetch`` do), so throughput is that of a pipelined
    download, and requests plus unread answers never reach further than that many 32 KB blocks
    ahead: memory is fixed whatever the file size, the consumer's speed or the server's answer
    sizes. Unlike paramiko's ``prefetch`` this starts no thread (one per call there; inside
    `meltano run` they made the tap's heap grow with the file, issue 6).
    ``read(n)`` returns up to ``n`` bytes in order until ``b""``; when the connection drops, the
    reader reconnects, reopens the file and continues at the byte offset it had reached, so no
    byte is lost or read twice.

    Uses paramiko's request/response layer (``SFTPClient._async_request`` and ``_read_response``,
    the pair its own prefetch uses), the same from paramiko 3.4 to 5.1 (pinned <6).
    """

    #: Bytes per read request: paramiko's ``SFTPFile.MAX_REQUEST_SIZE``, which every server takes.
    BLOCK_SIZE = 32768

    def __init__(self, reader: SftpReader, path: str) -> None:
        """Open the file now, so a missing file fails early."""
        self.reader = reader
        self.path = path
        self.offset = 0
        self.reconnects = 0
        self._handle: paramiko.SFTPFile | None = None
        self._client: _RequestLayer | None = None
        self._size = 0
        #: In-flight requests: request number -> (offset, length).
        self._requests: dict[int, tuple[int, int]] = {}
        #: Answers not read yet: offset -> data (``b""`` at the end), or the error for that offset.
        self._blocks: dict[int, bytes | Exception] = {}
        #: Where the next read request starts, and where requests stop (the size, or further
        #: once the file turned out longer than its size said).
        self._next_request = 0
        self._request_limit = 0
        #: Connection failures since the last successful read (bounded by reconnect_attempts).
        self._failures = 0
        reader._retrying(self._open)

    def _open(self) -> None:
        try:
            handle = self.reader.sftp.open(self.path, "rb")
            size = handle.stat().st_size or 0
        except FileNotFoundError:
            raise SftpError(f"SFTP file {self.path!r} not found on {self.reader.address}") from None
        except PermissionError:
            raise SftpError(
                f"SFTP file {self.path!r} on {self.reader.address} is not readable by "
                f"{self.reader.settings.username!r}"
            ) from None
        self._handle, self._size = handle, size
        self._client = cast(_RequestLayer, handle.sftp)
        self._requests.clear()
        self._blocks.clear()
        self._next_request = self.offset
        self._request_limit = max(size, self.offset)

    @property
    def size(self) -> int:
        """File size when it was (last) opened."""
        return self._size

    def _request(self, offset: int, length: int) -> None:
        assert self._handle is not None
        assert self._client is not None
        number = self._client._async_request(
            self, CMD_READ, self._handle.handle, int64(offset), int(length)
        )
        self._requests[number] = (offset, length)

    def _async_response(self, kind: int, msg: paramiko.Message, number: int) -> None:
        """Called by paramiko's ``SFTPClient._read_response`` with the answer to a request."""
        request = self._requests.pop(number, None)
        if request is None:
            return  # a request of a handle given up after a reconnect
        offset, length = request
        assert self._client is not None  # requests are forgotten with the handle
        if kind != CMD_DATA:
            try:
                self._client._convert_status(msg)  # raises for every status but OK
            except EOFError:
                self._blocks[offset] = b""
            except Exception as exc:  # raised by the read that reaches this offset
                self._blocks[offset] = exc
            else:
                self._blocks[offset] = SftpError(
                    f"SFTP server answered a read of {self.path!r} at byte {offset} without data"
                )
            return
        data = msg.get_binary()
        self._blocks[offset] = data
        end = offset + len(data)
        if data and len(data) < length:
            # A short answer (servers may send less than asked): ask for the rest now, so it is
            # not queued behind a whole window of requests.
            self._request(end, length - len(data))
        elif end > self._size:
            # The file is longer than its size said (it grew, or the server gives no size):
            # keep a window of requests going instead of one at a time; EOF answers end it.
            self._request_limit = max(self._request_limit, end + self._window_bytes)

    @property
    def _window_bytes(self) -> int:
        return self.reader.settings.max_concurrent_prefetch_requests * self.BLOCK_SIZE

    def _fill_pipeline(self) -> None:
        """Keep requests in flight, at most a window of bytes ahead of the reader (so answers
        waiting to be read stay bounded too), plus one at the current offset when nothing else
        is pending: that one finds the end of the file, or bytes appended since it was opened."""
        limit = self.reader.settings.max_concurrent_prefetch_requests
        window_end = self.offset + self._window_bytes
        while (
            len(self._requests) < limit
            and self._next_request < self._request_limit
            and self._next_request + self.BLOCK_SIZE <= window_end
        ):
            length = min(self.BLOCK_SIZE, self._request_limit - self._next_request)
            self._request(self._next_request, length)
            self._next_request += length
        if not self._requests and self.offset not in self._blocks:
            self._request(self.offset, self.BLOCK_SIZE)
            self._next_request = self.offset + self.BLOCK_SIZE

    def _next_block(self) -> bytes:
        """The bytes at the current offset, waiting for their answer; ``b""`` at the end."""
        assert self._client is not None
        while self.offset not in self._blocks:
            self._fill_pipeline()
            self._client._read_response()
        answer = self._blocks.pop(self.offset)
        if isinstance(answer, SftpError):
            raise answer
        if isinstance(answer, Exception):
            raise SftpError(
                f"reading {self.path!r} from {self.reader.address} failed at byte "
                f"{self.offset}: {type(answer).__name__}: {answer}"
            )
        if not answer:
            self._request_limit = self.offset  # the end, possibly earlier than stat said
        return answer

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes from the current offset; ``b""`` at the end of the file."""
        while True:
            try:
                if self._handle is None:
                    self._open()
                self._fill_pipeline()
                data = self._next_block()
            except SftpError:
                raise
            except CONNECTION_ERRORS as exc:
                self.reconnects += 1
                self._failures += 1
                if self._failures > self.reader.settings.reconnect_attempts:
                    raise SftpError(
                        f"reading {self.path!r} from {self.reader.address} failed after "
                        f"{self._failures - 1} reconnects in a row: {type(exc).__name__}: {exc}"
                    ) from None
                self._discard_handle()
                self.reader.reconnect(exc)
                continue
            self._failures = 0
            if len(data) > size:
                # Keep the rest for the next read (callers asking for less than a block).
                self._blocks[self.offset + size] = data[size:]
                data = data[:size]
            self.offset += len(data)
            return data

    def _discard_handle(self) -> None:
        handle, self._handle, self._client = self._handle, None, None
        self._requests.clear()
        self._blocks.clear()
        if handle is not None:
            # The connection is usually gone already; there is nothing left to tell.
            with contextlib.suppress(Exception):
                handle.close()

    def close(self) -> None:
        """Close the remote handle (answers still in flight are dropped when they arrive)."""
        self._discard_handle()
