"""The ``csv`` export format: a header line, then one row per record (JSON columns decoded)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

import orjson

from tap_cordial_activity.errors import CutLineError, ExportDataError
from tap_cordial_activity.file_chunks import iter_lines
from tap_cordial_activity.normalize import Parsed, bad, normalize

#: CSV columns whose text is JSON (an object or a list) in the JSON export.
JSON_COLUMNS = frozenset({"properties", "sp", "d", "mTags"})


def _csv_value(column: str, value: str, file_name: str, line: int) -> Any:
    """A CSV cell as the JSON export would carry it."""
    if column in JSON_COLUMNS:
        if value[0] in "{[":
            try:
                return orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise ExportDataError(
                    file_name, line, f"column `{column}` holds invalid JSON ({exc})"
                ) from exc
        if column == "mTags":
            # A plain tag list without JSON brackets: keep each tag rather than one odd string.
            return [tag.strip() for tag in value.split(",") if tag.strip()]
    return value


def read_csv(lines: Iterator[tuple[bytes, bool]], file_name: str) -> Iterator[Parsed]:
    """Records of a CSV stream with a header line; empty values are left out.

    ``lines``: each line and whether its newline was there. A row that cannot be a record (not
    UTF-8, wrong width, bad JSON column, no ``_id``/``time``) is a
    :class:`~tap_cordial_activity.normalize.BadRecord` with the row's raw lines, except a last
    row without its newline: that is a cut file (still being written, or truncated), as in
    JSON Lines, and raises, so the reconciliation reads it again once it is whole.
    """
    # The raw lines of the row being read (a quoted value may span lines).
    taken: list[bytes] = []
    undecodable: list[UnicodeDecodeError] = []
    unterminated = False

    def text_lines() -> Iterator[str]:
        nonlocal unterminated
        for line, ended in lines:
            taken.append(line)
            unterminated = not ended
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                # Kept readable for the csv module; the row is set aside below.
                undecodable.append(exc)
                text = line.decode("utf-8", errors="replace")
            yield text + "\n"

    def refused(error: ExportDataError, line: int) -> Parsed:
        """The row as a bad record; a last row without its newline is a cut: raised."""
        raw = b"\n".join(taken)
        if unterminated:
            raise CutLineError(file_name, line, error.problem, raw) from error
        return bad(error, raw, line)

    reader = csv.reader(text_lines())
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise ExportDataError(file_name, reader.line_num, f"bad CSV header ({exc})") from exc
    header = [name.strip().lstrip("\ufeff") for name in header]
    width = len(header)
    while True:
        taken.clear()
        undecodable.clear()
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            error = ExportDataError(file_name, reader.line_num, f"bad CSV ({exc})")
            yield refused(error, reader.line_num)
            continue
        line_no = reader.line_num
        if not row:
            continue
        try:
            if undecodable:
                raise ExportDataError(file_name, line_no, f"not UTF-8 ({undecodable[0]})")
            if len(row) != width:
                raise ExportDataError(
                    file_name, line_no, f"{len(row)} columns where the header has {width}"
                )
            record = {
                column: _csv_value(column, value, file_name, line_no)
                for column, value in zip(header, row, strict=True)
                if value != ""
            }
            moment = normalize(record, file_name, line_no)
        except ExportDataError as exc:
            yield refused(exc, line_no)
            continue
        yield record, moment, line_no


def read_csv_file(chunks: Iterator[bytes], file_name: str) -> Iterator[Parsed]:
    """Records of a ``csv`` export file (its byte chunks)."""
    return read_csv(iter_lines(chunks), file_name)
