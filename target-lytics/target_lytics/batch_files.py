"""BATCH files: a tap's JSON Lines record files, streamed into the sink a chunk at a time.

singer-sdk's ``Sink.process_batch_files`` decodes a whole file into a list of dicts before the
sink sees a record. Here a ``jsonl`` file (``gzip`` or uncompressed) is read in chunks and split
by :func:`~target_lytics.reader.line_batches`, as stdin is: :func:`jsonl_line_chunks` yields
each chunk's lines with the first one's number, and the sink takes them through its one way in
for raw records (``LyticsSink.add_raws``, the BATCH checks: the stream's ``batch_validator``);
:class:`BatchLines` names a failing record's file and line. This module knows no sink. Memory
stays at a chunk plus the bodies being built or uploaded.

A BATCH message can name any file, so a file is read (and deleted) only when it is a regular
file under one of the folders of the ``batch_file_roots`` setting (none by default: BATCH
messages are refused until it names the tap's ``batch_config`` storage root), its URL is local
(``file://`` or an absolute path; the Singer BATCH extension allows any fsspec URL) and its real
path, symlinks resolved, stays under the root. A named FIFO or device (``/dev/zero``) would block
or never end, so it is refused before it is opened, and the open itself neither follows a
symlink nor waits. Once a file's records are all read and its last events handed to the upload
pool, the file is deleted unless ``delete_batch_files`` is false: the tap's STATE, not the file,
is what a failed run resumes from. A file whose record fails is kept.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import stat
import typing as t
import zlib
from types import ModuleType
from urllib.parse import unquote, urlsplit

import msgspec
from singer_sdk.exceptions import InvalidRecord

from target_lytics.errors import BatchFileError, ValueConversionError, quote_line
from target_lytics.reader import line_batches

#: The gzip reader: ISA-L's decompresses several times faster than zlib's; the standard library's
#: where the ``isal`` package is not installed.
gzip_lib: ModuleType
#: What a corrupt deflate stream raises, whichever library inflates it.
_INFLATE_ERRORS: tuple[type[Exception], ...]
try:
    from isal import igzip, isal_zlib

    gzip_lib = igzip
    _INFLATE_ERRORS = (zlib.error, isal_zlib.error)  # type: ignore[assignment]
except ImportError:  # pragma: no cover - isal has wheels for the usual platforms
    gzip_lib = gzip
    _INFLATE_ERRORS = (zlib.error,)

if t.TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

#: ``encoding.compression`` values read here: gzip, or none (singer-sdk writes None or "none").
COMPRESSIONS = frozenset({None, "none", "gzip"})

#: A record that fails: not JSON, not an object, refused by the schema, or not convertible.
_RECORD_ERRORS = (msgspec.DecodeError, InvalidRecord, ValueConversionError)
#: A file that cannot be read: missing, unreadable, or not (complete) gzip.
_READ_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, *_INFLATE_ERRORS)


def root_folders(roots: Sequence[str]) -> list[str]:
    """The real paths of the ``batch_file_roots`` setting's folders (``file://`` URLs or paths)."""
    return [os.path.realpath(local_path(root) or root) for root in roots]


def local_path(url: str) -> str | None:
    """The absolute local path of a ``file://`` URL or an absolute path; None for anything else."""
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and not parts.query:
        path = unquote(parts.path)
    elif not parts.scheme:
        path = url
    else:
        return None
    return path if os.path.isabs(path) and "\0" not in path else None


def checked_batch_file(url: t.Any, roots: Sequence[str], stream: str) -> str:
    """The real path of a file a BATCH message names, once it is safe to read and delete.

    Raises:
        BatchFileError: The URL is not local, the file is outside ``batch_file_roots`` (a
            symlink out of it included), missing, or not a regular file.
    """
    where = f"BATCH file {quote_line(str(url))} of stream '{stream}'"
    path = local_path(url) if isinstance(url, str) else None
    if path is None:
        raise BatchFileError(
            f"{where}: not a local file; target-lytics reads file:// URLs and absolute paths "
            "under batch_file_roots"
        )
    if not roots:
        raise BatchFileError(
            f"{where}: BATCH files are read only under the folders of the batch_file_roots "
            "setting, which is empty; set it to the tap's batch_config storage root (e.g. "
            '["file:///var/tmp/cordial-batches"])'
        )
    real = os.path.realpath(path)
    if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
        inside = any(
            os.path.abspath(path).startswith(root.rstrip(os.sep) + os.sep) for root in roots
        )
        why = "a symlink out of" if inside else "not under"
        raise BatchFileError(
            f"{where}: {why} the batch_file_roots folders ({', '.join(roots)}); refused"
        )
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        raise BatchFileError(f"{where} could not be read: {exc.strerror}") from exc
    if not stat.S_ISREG(mode):
        raise BatchFileError(f"{where}: not a regular file (a folder, FIFO or device); refused")
    return real


def _open_regular(path: str) -> t.BinaryIO:
    """Open a checked file without following a symlink or waiting; refuse what is not regular."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_compression(compression: str | None, stream: str) -> None:
    """Refuse a BATCH message whose compression is not read here.

    Raises:
        BatchFileError: Names the stream and the compression.
    """
    if compression not in COMPRESSIONS:
        raise BatchFileError(
            f"BATCH message of stream '{stream}': compression {compression!r} is not "
            "supported (use gzip or none)"
        )


def jsonl_line_chunks(
    url: str, path: str, compression: str | None, stream: str
) -> Iterator[tuple[int, list[bytes]]]:
    """One JSON Lines file's lines, a chunk at a time: (the first line's 1-based number, lines).

    ``path`` is checked by :func:`checked_batch_file`; ``url`` names the file in errors.

    Raises:
        BatchFileError: The file cannot be read (names the file and the lines read before).
    """
    lines = 0
    try:
        with _open_regular(path) as file:
            source: t.BinaryIO = gzip_lib.open(file, "rb") if compression == "gzip" else file
            with source:
                for chunk in line_batches(source):
                    batch = list(chunk)
                    yield lines + 1, batch
                    lines += len(batch)
    except _READ_ERRORS as exc:
        raise BatchFileError(
            f"BATCH file {url} of stream '{stream}' could not be read after {lines} lines: {exc}"
        ) from exc


@dataclasses.dataclass(frozen=True)
class BatchLines:
    """A chunk of a BATCH file's lines, as a record source of ``LyticsSink.add_raws``."""

    url: str
    stream: str
    #: The 1-based number of the chunk's first line.
    first_line: int
    #: BATCH records take the BATCH checks (validation always fatal), not the RECORD ones.
    sdk_checks: t.ClassVar[bool] = False

    def error(self, error: Exception, index: int) -> Exception:
        """A failing record's error naming the file and line; other errors pass as they are."""
        if not isinstance(error, _RECORD_ERRORS):
            return error
        # The validator's own message (InvalidRecord's str adds a generic prefix).
        problem = error.error_message if isinstance(error, InvalidRecord) else str(error)
        return BatchFileError(
            f"Record at line {self.first_line + index} of BATCH file {self.url} (stream "
            f"'{self.stream}') failed: {problem}"
        )
