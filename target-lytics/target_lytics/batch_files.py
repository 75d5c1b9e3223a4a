"""BATCH files: a tap's JSON Lines record files, streamed into the sink a chunk at a time.

singer-sdk's ``Sink.process_batch_files`` decodes a whole file into a list of dicts before the
sink sees a record. Here a ``jsonl`` file (``gzip`` or uncompressed) is read in chunks and split
by :func:`~target_lytics.reader.line_batches`, as stdin is; each line takes the way a RECORD
line of the stream takes: the stream's :class:`~target_lytics.typed_records.TypedRecordEncoder`
when it has one and accepts the record, else decode, the sink's ``batch_validator`` and
``process_record``. Memory stays at a chunk plus the bodies being built or uploaded.

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
from target_lytics.typed_records import decode_record

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
    from collections.abc import Iterable, Iterator, Sequence

    from target_lytics.sinks import LyticsSink

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


def process_jsonl_files(
    sink: LyticsSink, compression: str | None, files: Sequence[tuple[str, str]], *, delete: bool
) -> None:
    """Send the records of each JSON Lines file to ``sink``; delete each file after, if asked.

    ``files`` are (URL, path) pairs, the path checked by :func:`checked_batch_file`.

    Raises:
        BatchFileError: A file cannot be read or one of its records fails (names the file and
            the 1-based line).
    """
    if compression not in COMPRESSIONS:
        raise BatchFileError(
            f"BATCH message of stream '{sink.stream_name}': compression {compression!r} is not "
            "supported (use gzip or none)"
        )
    for url, path in files:
        reader = _FileReader(sink, url)
        try:
            with _open_regular(path) as file:
                if compression == "gzip":
                    with gzip_lib.open(file, "rb") as unpacked:
                        reader.process(line_batches(unpacked))
                else:
                    reader.process(line_batches(file))
        except _READ_ERRORS as exc:
            raise BatchFileError(
                f"BATCH file {url} of stream '{sink.stream_name}' could not be read after "
                f"{reader.lines} lines: {exc}"
            ) from exc
        sink.send_body()
        if delete:
            os.unlink(path)


class _FileReader:
    """Sends one file's lines to the sink, counting them for the error message."""

    def __init__(self, sink: LyticsSink, url: str) -> None:
        """Nothing read yet."""
        self.sink = sink
        self.url = url
        #: Lines read so far (the failing line's 1-based number when a record fails).
        self.lines = 0

    def process(self, batches: Iterator[Iterable[bytes]]) -> None:
        """Process every line, in order; the record counter grows a chunk at a time."""
        sink = self.sink
        typed = sink.typed_encoder
        encode = typed.encode if typed is not None else None
        add_event = sink.add_event
        counter = sink.record_counter_metric
        number = counted = 0
        try:
            for lines in batches:
                for line in lines:
                    number += 1
                    if encode is not None:
                        event = encode(line)
                        if event is not None:
                            add_event(event)
                            continue
                    self._general(decode_record(line))
                counter.increment(number - counted)
                counted = number
        except _RECORD_ERRORS as exc:
            # The validator's own message (InvalidRecord's str adds a generic prefix).
            problem = exc.error_message if isinstance(exc, InvalidRecord) else str(exc)
            raise BatchFileError(
                f"Record at line {number} of BATCH file {self.url} (stream "
                f"'{sink.stream_name}') failed: {problem}"
            ) from exc
        finally:
            self.lines = number

    def _general(self, record: t.Any) -> None:
        """Validate and process one decoded record, as a BATCH record of singer-sdk's path."""
        sink = self.sink
        if not isinstance(record, dict):
            kind = type(record).__name__
            raise InvalidRecord(f"the record is a {kind}, not a JSON object", record)
        validator = sink.batch_validator
        if validator is not None:
            validator.validate(record)
        sink.process_record(record, {})
