"""Exported files as byte chunks: read in large pieces, gunzipped when gzip, and split into lines.

Compression is detected by the magic bytes, not the file name.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from types import ModuleType
from typing import Protocol

from tap_cordial_activity.errors import ExportDataError

#: The gzip inflater: ISA-L's is about 3x faster than zlib's; the standard library's where the
#: ``isal`` package is not installed.
inflate_lib: ModuleType
try:
    from isal import isal_zlib

    inflate_lib = isal_zlib
except ImportError:  # pragma: no cover - isal has wheels for the usual platforms
    inflate_lib = zlib

#: What a corrupt deflate stream raises, whichever library inflates it.
_INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, inflate_lib.error)

#: Bytes asked of the source per read: large reads keep paramiko's prefetch pipeline busy.
CHUNK_SIZE = 1 << 20

GZIP_MAGIC = b"\x1f\x8b"



class BinarySource(Protocol):
    """What the reader needs from a file: ``read(n)`` returning bytes, ``b""`` at the end."""

    def read(self, size: int, /) -> bytes:
        """Read up to ``size`` bytes."""
        ...


def _chunks(source: BinarySource) -> Iterator[bytes]:
    """Raw chunks of ``source`` until its end."""
    while True:
        chunk = source.read(CHUNK_SIZE)
        if not chunk:
            return
        yield chunk


def byte_chunks(source: BinarySource, file_name: str) -> Iterator[bytes]:
    """Decompressed chunks of ``source``; gzip is detected by its first two bytes."""
    raw = _chunks(source)
    first = next(raw, b"")
    if not first:
        return iter(())
    chained = prepend(first, raw)
    if first[:2] == GZIP_MAGIC:
        return _gunzip(chained, file_name)
    return chained


def prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """``first``, then the chunks of ``rest`` (a chunk already read, put back in front)."""
    yield first
    yield from rest


def _gunzip(chunks: Iterator[bytes], file_name: str) -> Iterator[bytes]:
    """Decompress gzip chunks (several members allowed); a truncated stream is an error."""
    decompressor = inflate_lib.decompressobj(wbits=31)
    in_member = False
    for chunk in chunks:
        data = chunk
        while data:
            in_member = True
            try:
                out = decompressor.decompress(data)
            except _INFLATE_ERRORS as exc:
                raise ExportDataError(file_name, None, f"corrupt gzip data ({exc})") from exc
            if out:
                yield out
            if decompressor.eof:
                in_member = False
                data = decompressor.unused_data
                decompressor = inflate_lib.decompressobj(wbits=31)
                if data and not data.startswith(GZIP_MAGIC[: len(data)]):
                    raise ExportDataError(file_name, None, "trailing garbage after gzip data")
            else:
                data = b""
    if in_member:
        raise ExportDataError(
            file_name, None, "truncated gzip file (the stream ends before the gzip end marker)"
        )


# ---------------------------------------------------------------------------------------------
# Line level


def iter_lines(chunks: Iterator[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Each line of a chunk stream (no newline, flat memory) and whether a newline ended it."""
    rest = b""
    for chunk in chunks:
        parts = chunk.split(b"\n")
        if rest:
            parts[0] = rest + parts[0]
        rest = parts.pop()
        for part in parts:
            yield part, True
    if rest:
        yield rest, False


# ---------------------------------------------------------------------------------------------
# Formats

