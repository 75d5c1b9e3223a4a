"""RemoteFile: one remote file read with pipelined requests, resumed at the byte after a drop."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol, TypeVar

import paramiko
from paramiko.sftp import CMD_DATA

from tap_cordial_activity.errors import CONNECTION_ERRORS, SftpError
from tap_cordial_activity.paramiko_private import ReadRequests
from tap_cordial_activity.sftp_settings import SftpSettings

T = TypeVar("T")


class SftpSession(Protocol):
    """What a :class:`RemoteFile` needs of its session (:class:`~.sftp.SftpReader` is one)."""

    @property
    def settings(self) -> SftpSettings:
        """The login and read settings."""

    @property
    def address(self) -> str:
        """``host:port``, for messages."""

    @property
    def sftp(self) -> paramiko.SFTPClient:
        """The live SFTP client, connecting first if needed."""

    def retrying(self, call: Callable[[], T]) -> T:
        """Run ``call``; after a dropped connection, reconnect and run it once more."""

    def reconnect(self, reason: BaseException) -> None:
        """Reconnect after a dropped connection."""


class RemoteFile:
    """Sequential reader of one remote file: pipelined reads from the calling thread, exact resume.

    Up to ``max_concurrent_prefetch_requests`` read requests are kept in flight ahead of the
    reader (as ``sftp`` and paramiko's ``prefetch`` do), so throughput is that of a pipelined
    download, and requests plus unread answers never reach further than that many 32 KB blocks
    ahead: memory is fixed whatever the file size, the consumer's speed or the server's answer
    sizes. Unlike paramiko's ``prefetch`` this starts no thread (one per call there; inside
    ``meltano run`` they made the tap's heap grow with the file).
    ``read(n)`` returns up to ``n`` bytes in order until ``b""``; when the connection drops, the
    reader reconnects, reopens the file and continues at the byte offset it had reached, so no
    byte is lost or read twice.

    Requests go through :class:`~tap_cordial_activity.paramiko_private.ReadRequests`.
    """

    #: Bytes per read request: paramiko's ``SFTPFile.MAX_REQUEST_SIZE``, which every server takes.
    BLOCK_SIZE = 32768

    def __init__(self, reader: SftpSession, path: str) -> None:
        """Open the file now, so a missing file fails early."""
        self.reader = reader
        self.path = path
        self.offset = 0
        self.reconnects = 0
        self._handle: paramiko.SFTPFile | None = None
        self._requester: ReadRequests | None = None
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
        reader.retrying(self._open)

    def _open(self) -> None:
        try:
            handle = self.reader.sftp.open(self.path, "rb")
            size = handle.stat().st_size or 0
        except FileNotFoundError as exc:
            raise SftpError(f"SFTP file {self.path!r} not found on {self.reader.address}") from exc
        except PermissionError as exc:
            raise SftpError(
                f"SFTP file {self.path!r} on {self.reader.address} is not readable by "
                f"{self.reader.settings.username!r}"
            ) from exc
        self._handle, self._size = handle, size
        self._requester = ReadRequests(handle, self._on_answer)
        self._requests.clear()
        self._blocks.clear()
        self._next_request = self.offset
        self._request_limit = max(size, self.offset)

    @property
    def size(self) -> int:
        """File size when it was (last) opened."""
        return self._size

    def _request(self, offset: int, length: int) -> None:
        assert self._requester is not None
        number = self._requester.send_read(offset, length)
        self._requests[number] = (offset, length)

    def _on_answer(self, kind: int, msg: paramiko.Message, number: int) -> None:
        """Store the answer to a request (called while waiting in :meth:`_next_block`)."""
        request = self._requests.pop(number, None)
        if request is None:
            return  # a request of a handle given up after a reconnect
        offset, length = request
        assert self._requester is not None  # requests are forgotten with the handle
        if kind != CMD_DATA:
            try:
                self._requester.raise_for_status(msg)  # raises for every status but OK
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
        """Keep requests in flight, at most a window of bytes ahead of the reader.

        So answers waiting to be read stay bounded too. Plus one at the current offset when
        nothing else is pending: that one finds the end of the file, or bytes appended since it
        was opened.
        """
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
        assert self._requester is not None
        while self.offset not in self._blocks:
            self._fill_pipeline()
            self._requester.receive_one()
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
                    ) from exc
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
        handle, self._handle, self._requester = self._handle, None, None
        self._requests.clear()
        self._blocks.clear()
        if handle is not None:
            # The connection is usually gone already; there is nothing left to tell.
            with contextlib.suppress(Exception):
                handle.close()

    def close(self) -> None:
        """Close the remote handle (answers still in flight are dropped when they arrive)."""
        self._discard_handle()
