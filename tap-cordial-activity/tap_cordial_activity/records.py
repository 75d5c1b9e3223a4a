"""Exported activity files -> normalized records, streaming with flat memory.

A file is JSON Lines, one JSON array, or CSV with a header line, gzip-compressed or plain
(detected by its magic bytes, not its name). Records are normalized to what the ``activity``
schema promises: ``time``/``message_sent`` as RFC 3339, ``first`` as a boolean, empty CSV values
absent, and CSV columns that hold JSON objects or lists decoded. Bad data raises
:class:`ExportDataError` naming the file and line.
"""

from __future__ import annotations

from collections.abc import Iterator

from tap_cordial_activity.errors import ExportDataError
from tap_cordial_activity.file_chunks import CHUNK_SIZE, BinarySource, byte_chunks, iter_lines
from tap_cordial_activity.formats import FORMATS
from tap_cordial_activity.normalize import Parsed, Record, normalize, normalize_timestamp, to_bool

__all__ = [
    "CHUNK_SIZE", "BinarySource", "ExportDataError", "Parsed", "Record", "byte_chunks",
    "iter_lines", "normalize", "normalize_timestamp", "read_records", "to_bool",
]


def read_records(source: BinarySource, file_name: str, export_format: str) -> Iterator[Parsed]:
    """Normalized records of one exported file, with their event time and line number.

    ``export_format`` is a key of :data:`~tap_cordial_activity.formats.FORMATS`.
    """
    return FORMATS[export_format].reader(byte_chunks(source, file_name), file_name)
