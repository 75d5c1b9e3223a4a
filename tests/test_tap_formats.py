"""The export-format table: the setting's allowed values, the request extras and the readers."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from tap_cordial_activity.export import export_body
from tap_cordial_activity.formats import FORMATS, ExportFormat
from tap_cordial_activity.records import read_records
from tap_cordial_activity.settings import CONFIG_SCHEMA
from tap_cordial_activity.windows import Window

CONFIG = {"sftp_host": "h", "sftp_username": "u", "sftp_path": "/p", "sftp_password": "pw"}


def test_the_setting_allows_exactly_the_table_keys():
    assert CONFIG_SCHEMA["properties"]["export_format"]["enum"] == list(FORMATS) == ["json", "csv"]


def test_the_request_body_takes_the_formats_extras(monkeypatch):
    window = Window(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))
    csv_body = export_body({**CONFIG, "export_format": "csv"}, "n", window)
    assert csv_body["exportType"] == "csv"
    assert csv_body["showHeader"] is True
    assert "showHeader" not in export_body({**CONFIG, "export_format": "json"}, "n", window)
    # A new entry is one line in the table: its extras reach the body, its reader the files.
    seen = []

    def read_tsv(chunks, file_name):
        seen.append(b"".join(chunks))
        yield from ()

    monkeypatch.setitem(FORMATS, "tsv", ExportFormat(read_tsv, {"delimiter": "\t"}))  # type: ignore[arg-type]
    assert export_body({**CONFIG, "export_format": "tsv"}, "n", window)["delimiter"] == "\t"
    assert list(read_records(io.BytesIO(b"a\tb\n"), "f.tsv", "tsv")) == []
    assert seen == [b"a\tb\n"]
