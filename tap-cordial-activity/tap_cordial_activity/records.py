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
from tap_cordial_activity.file_chunks import CHUNK_SIZE, BinarySource, byte_chunks
from tap_cordial_activity.formats import FORMATS
from tap_cordial_activity.normalize import (
    BAD_MOMENT,
    BadRecord,
    Parsed,
    Record,
    normalize,
    normalize_timestamp,
    to_bool,
)

__all__ = [
    "BAD_MOMENT", "CHUNK_SIZE", "BadRecord", "BinarySource", "ExportDataError", "Parsed",
    "Record", "byte_chunks", "normalize", "normalize_timestamp", "read_records",
    "to_bool",
]


def read_records(
    source: BinarySource, file_name: str, export_format: str, *, bad_records: bool = False
) -> Iterator[Parsed]:
    """Normalized records of one exported file, with their event time and line number.

    ``export_format`` is a key of :data:`~tap_cordial_activity.formats.FORMATS`. With
    ``bad_records`` a line that is no record comes as a :class:`BadRecord` (event time
    :data:`BAD_MOMENT`); without, it raises :class:`ExportDataError`.
    """
    records = FORMATS[export_format].reader(byte_chunks(source, file_name), file_name)
    return records if bad_records else _raising(records, file_name)


def _raising(records: Iterator[Parsed], file_name: str) -> Iterator[Parsed]:
    """``records`` with the first :class:`BadRecord` raised as :class:`ExportDataError`."""
    for parsed in records:
        if parsed[0].__class__ is BadRecord:
            bad = parsed[0]
            assert isinstance(bad, BadRecord)
            raise ExportDataError(file_name, parsed[2], bad.problem)
        yield parsed
