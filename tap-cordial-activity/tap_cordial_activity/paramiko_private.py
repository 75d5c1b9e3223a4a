"""The one module that uses paramiko's private names: the SFTP client's request layer.

:class:`ReadRequests` sends READ requests and collects their answers through
``SFTPClient._async_request``, ``SFTPClient._read_response`` and ``SFTPClient._convert_status``,
and receives each answer through the ``_async_response(t, msg, num)`` callback that
``_read_response`` calls on the object a request was sent for. This is the pair paramiko's own
``SFTPFile.prefetch`` uses, without its one-thread-per-call.

:func:`use_bytearray_receive_buffer` gives a channel's receive buffer (``BufferedPipe``, its
``_lock``, ``_buffer``, ``_buffer_frombytes``, ``_buffer_tobytes``) a ``bytearray`` in place of
an ``array.array``: each read takes bytes off the buffer's front, which moves everything behind
them in an array (up to the 2 MB of answers in flight, twice per SFTP packet) and is O(1) in a
bytearray.

Pinned: paramiko >=3.4,<6 (the layer is the same from 3.4 to 5.1; see the tap's pyproject).
tests/test_tap_private_names.py fails when one of these names or signatures changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

import paramiko
from paramiko.buffered_pipe import BufferedPipe
from paramiko.sftp import CMD_READ, int64

#: The private names used here, checked by the test named in the module docstring.
SFTP_CLIENT_PRIVATE_NAMES = ("_async_request", "_read_response", "_convert_status")
BUFFERED_PIPE_PRIVATE_NAMES = ("_lock", "_buffer", "_buffer_frombytes", "_buffer_tobytes")


class _BytearrayPipe(BufferedPipe):
    """paramiko's BufferedPipe over a bytearray (see the module docstring)."""

    _buffer: bytearray

    def _buffer_frombytes(self, data: bytes) -> None:
        self._buffer += data

    def _buffer_tobytes(self, limit: int | None = None) -> bytes:
        return bytes(self._buffer[:limit])


def use_bytearray_receive_buffer(channel: paramiko.Channel) -> None:
    """Switch the channel's receive buffer to a bytearray, keeping what it holds.

    Done under the buffer's lock, in place, so that data the transport thread feeds meanwhile
    is neither lost nor reordered.
    """
    if type(channel.in_buffer) is not BufferedPipe:
        return  # not the class this was written against: leave it
    pipe: Any = channel.in_buffer
    with pipe._lock:
        pipe._buffer = bytearray(pipe._buffer.tobytes())
        pipe.__class__ = _BytearrayPipe


class _RequestLayer(Protocol):
    """paramiko ``SFTPClient``'s request/response methods (the ones its prefetch uses)."""

    def _async_request(self, fileobj: object, t: int, *args: object) -> int: ...

    def _read_response(self, waitfor: int | None = None) -> object: ...

    def _convert_status(self, msg: paramiko.Message) -> None: ...


#: Called with (packet type, message, request number) for each answer.
AnswerCallback = Callable[[int, paramiko.Message, int], None]


class ReadRequests:
    """READ requests on one open remote file, sent without waiting; answers go to a callback."""

    def __init__(self, handle: paramiko.SFTPFile, on_answer: AnswerCallback) -> None:
        """Send requests for ``handle`` over the SFTP session it was opened on."""
        self._client = cast(_RequestLayer, handle.sftp)
        self._handle = handle.handle
        self._on_answer = on_answer

    def send_read(self, offset: int, length: int) -> int:
        """Ask for ``length`` bytes at ``offset``; return the request number."""
        return self._client._async_request(self, CMD_READ, self._handle, int64(offset), int(length))

    def receive_one(self) -> None:
        """Wait for the next answer on the session and hand it to its callback."""
        self._client._read_response()

    def raise_for_status(self, msg: paramiko.Message) -> None:
        """Raise for a STATUS answer that is not OK (``EOFError`` at the end of the file)."""
        self._client._convert_status(msg)

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        """Take an answer to a request sent for this object (paramiko's callback name)."""
        self._on_answer(t, msg, num)
