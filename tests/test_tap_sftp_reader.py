"""The tap's SFTP file reader: exact bytes at every read size, short answers, growth, flat memory.

Reads go to a real OpenSSH sshd (the session's `sftp_server`), except the short-answer case, which
needs a server that answers reads with fewer bytes than asked: the paramiko fallback server with
its reads capped.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
import tracemalloc
from pathlib import Path

import paramiko
import pytest
from tap_cordial_activity.sftp import RemoteFile, SftpError, SftpReader, SftpSettings

from sandbox import sftp_fallback
from sandbox.sftp import SftpServer


def settings_for(server: SftpServer, **overrides: object) -> SftpSettings:
    values: dict = {
        "host": server.host, "port": server.port, "username": server.username,
        "password": server.password, "host_key": server.host_key_line,
        "reconnect_backoff_seconds": 0.05,
    }
    return SftpSettings(**(values | overrides))


def read_all(remote: RemoteFile, size: int) -> bytes:
    got = bytearray()
    while chunk := remote.read(size):
        assert len(chunk) <= size
        got += chunk
    assert remote.read(size) == b""  # the end stays the end
    return bytes(got)


def read_measured(remote: RemoteFile) -> tuple[bytes, int]:
    """SHA-256 of the whole file and the peak of memory allocated while reading it."""
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        while chunk := remote.read(1 << 20):
            digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return digest.digest(), peak


def payload(length: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(length)


def put(server: SftpServer, name: str, data: bytes) -> str:
    path = Path(server.root) / name
    path.write_bytes(data)
    path.chmod(0o644)
    return f"{server.sftp_path}/{name}"


@pytest.mark.parametrize("length", [0, 1, 32767, 32768, 32769, 3 * 32768 + 5, 2_500_000])
@pytest.mark.parametrize("read_size", [1000, 32768, 1 << 20])
def test_reads_every_byte_once_in_order(sftp_server: SftpServer, length: int, read_size: int):
    data = payload(length)
    path = put(sftp_server, f"exact-{length}.bin", data)
    with SftpReader(settings_for(sftp_server)) as reader:
        channel = reader.sftp.get_channel()
        assert channel is not None
        # Read through the bytearray receive buffer (paramiko_private).
        assert type(channel.in_buffer).__name__ == "_BytearrayPipe"
        remote = reader.open(path)
        assert remote.size == length
        assert read_all(remote, read_size) == data
        assert remote.offset == length
        remote.close()


def test_short_answers_are_completed_in_bounded_memory(monkeypatch: pytest.MonkeyPatch):
    """A server may answer a read with fewer bytes than asked: the rest is asked for at once, and
    the answers waiting behind it stay within the window (they once grew to the whole file)."""

    def capped_read(self: paramiko.SFTPHandle, offset: int, length: int) -> bytes | int:
        return paramiko.SFTPHandle.read(self, offset, min(length, 16384))

    monkeypatch.setattr(sftp_fallback._Handle, "read", capped_read)
    data = payload(12 << 20, seed=2)
    with sftp_fallback.ParamikoSftpServer() as server:
        path = put(server, "short.bin", data)
        with SftpReader(settings_for(server)) as reader:
            remote = reader.open(path)
            digest, peak = read_measured(remote)
            remote.close()
    assert digest == hashlib.sha256(data).digest()
    # Measured 1.4-1.7 MB; 6.4 MB when the rest of a short block was asked for only when read.
    assert peak < 4 << 20, f"peak {peak / 1e6:.1f} MB"


def test_a_file_without_a_size_is_read_whole_and_pipelined(monkeypatch: pytest.MonkeyPatch):
    """Some servers report no size: the reader finds the end by reading, still a window ahead."""

    def sizeless_stat(self: paramiko.SFTPHandle) -> paramiko.SFTPAttributes:
        return paramiko.SFTPAttributes()

    monkeypatch.setattr(sftp_fallback._Handle, "stat", sizeless_stat)
    data = payload(3_000_001, seed=6)
    requests_in_flight: list[int] = []
    original = RemoteFile._request

    def counting(self: RemoteFile, offset: int, length: int) -> None:
        original(self, offset, length)
        requests_in_flight.append(len(self._requests))

    monkeypatch.setattr(RemoteFile, "_request", counting)
    with sftp_fallback.ParamikoSftpServer() as server:
        path = put(server, "sizeless.bin", data)
        with SftpReader(settings_for(server)) as reader:
            remote = reader.open(path)
            assert remote.size == 0
            assert read_all(remote, 1 << 20) == data
            remote.close()
    assert max(requests_in_flight) > 8  # not one request per round trip


def test_bytes_appended_after_open_are_read(sftp_server: SftpServer):
    first, more = payload(100_000, seed=3), payload(50_000, seed=4)
    path = put(sftp_server, "growing.bin", first)
    with SftpReader(settings_for(sftp_server)) as reader:
        remote = reader.open(path)
        head = remote.read(10_000)
        with (Path(sftp_server.root) / "growing.bin").open("ab") as handle:
            handle.write(more)
        assert head + read_all(remote, 1 << 20) == first + more
        remote.close()


def test_a_slow_reader_holds_bounded_memory_and_starts_no_thread(sftp_server: SftpServer):
    """However far behind the reader is, only the requests in flight (and what paramiko's SSH
    channel window lets through) are buffered, and reading starts no thread: paramiko's
    `prefetch` starts one per call, and per-window threads made the tap's RSS grow with the file
    size inside `meltano run`."""
    data = payload(24 << 20, seed=5)
    path = put(sftp_server, "big.bin", data)
    with SftpReader(settings_for(sftp_server, max_concurrent_prefetch_requests=16)) as reader:
        remote = reader.open(path)
        threads_before = set(threading.enumerate())
        digest = hashlib.sha256()
        tracemalloc.start()
        try:
            digest.update(remote.read(1 << 20))
            time.sleep(1.0)  # the network side could fetch much more meanwhile
            while chunk := remote.read(1 << 20):
                digest.update(chunk)
                assert set(threading.enumerate()) <= threads_before
                if remote.offset < (4 << 20):
                    time.sleep(0.05)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        remote.close()
    assert digest.digest() == hashlib.sha256(data).digest()
    # 16 requests of 32 KB in flight plus paramiko's channel buffer (its 2 MB SSH window).
    assert peak < 6 << 20, f"peak {peak / 1e6:.1f} MB"


def test_missing_file_is_a_clear_error(sftp_server: SftpServer):
    with SftpReader(settings_for(sftp_server)) as reader, pytest.raises(SftpError) as caught:
        reader.open(f"{sftp_server.sftp_path}/no-such-file.json.gz")
    assert "no-such-file.json.gz' not found on" in str(caught.value)
