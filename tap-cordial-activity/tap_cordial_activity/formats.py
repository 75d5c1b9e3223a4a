"""The export formats: one table entry per Cordial ``exportType`` the tap reads.

Each entry names the reader of its files and what the export request adds for it. The
``export_format`` setting's allowed values are this table's keys. A new format is one entry here
plus its reader module (``format_<name>.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tap_cordial_activity.format_csv import read_csv_file
from tap_cordial_activity.format_json import read_json
from tap_cordial_activity.normalize import Parsed

__all__ = ["FORMATS", "ExportFormat"]


@dataclass(frozen=True)
class ExportFormat:
    """How to ask Cordial for a format and how to read its files."""

    #: Byte chunks of one (gunzipped) file and its name -> normalized records.
    reader: Callable[[Iterator[bytes], str], Iterator[Parsed]]
    #: Members the ``POST /contactactivityexport`` body adds for this ``exportType``.
    request_extras: Mapping[str, Any] = field(default_factory=dict)


#: ``exportType`` values of Cordial's ``contactactivityexport`` definition that the tap reads.
FORMATS: Mapping[str, ExportFormat] = {
    "json": ExportFormat(read_json),
    # The header line names the columns: the reader maps each row through it.
    "csv": ExportFormat(read_csv_file, {"showHeader": True}),
}
