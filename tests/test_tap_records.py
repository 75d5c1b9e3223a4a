"""Unit tests of tap_cordial_activity.records: formats, gzip, normalization and data errors."""

from __future__ import annotations

import gzip
import io

import orjson
import pytest
from tap_cordial_activity import file_chunks, records
from tap_cordial_activity import normalize as normalization
from tap_cordial_activity.records import ExportDataError, read_records
from tap_cordial_activity.schema import KNOWN_FIELDS

EVENT = {
    "_id": "e1",
    "cID": "c1",
    "action": "open",
    "time": "2024-03-13T22:48:40+0000",
    "message_sent": "2024-03-13T22:00:00+0000",
    "first": 1,
    "properties": {"stp": "dyn"},
    "mTags": ["a", "b"],
}


def read(data: bytes, export_format: str = "json", name: str = "f.json") -> list[dict]:
    return [rec for rec, _, _ in read_records(io.BytesIO(data), name, export_format)]


def jsonl(*events: dict) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


def test_jsonl_normalizes_times_and_first():
    (rec,) = read(jsonl(EVENT))
    assert rec["time"] == "2024-03-13T22:48:40+00:00"
    assert rec["message_sent"] == "2024-03-13T22:00:00+00:00"
    assert rec["first"] is True
    assert rec["properties"] == {"stp": "dyn"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(True, True), (False, False), (1, True), (0, False), ("true", True), ("0", False),
     ("false", False), ("1", True)],
)
def test_first_forms(raw, expected):
    (rec,) = read(jsonl({**EVENT, "first": raw}))
    assert rec["first"] is expected


def test_other_offsets_and_z_are_rfc3339():
    recs = read(jsonl({**EVENT, "time": "2024-03-13T22:48:40-0530"},
                      {**EVENT, "_id": "e2", "time": "2024-03-13T22:48:40Z"},
                      {**EVENT, "_id": "e3", "time": "2024-03-13T22:48:40.5+00:00"}))
    assert [r["time"] for r in recs] == [
        "2024-03-13T22:48:40-05:30", "2024-03-13T22:48:40Z", "2024-03-13T22:48:40.5+00:00"
    ]


def test_gzip_detected_by_magic_bytes_not_name():
    data = gzip.compress(jsonl(EVENT, {**EVENT, "_id": "e2"}))
    assert [r["_id"] for r in read(data, name="plain-looking.json")] == ["e1", "e2"]


def test_concatenated_gzip_members():
    data = gzip.compress(jsonl(EVENT)) + gzip.compress(jsonl({**EVENT, "_id": "e2"}))
    assert [r["_id"] for r in read(data)] == ["e1", "e2"]


def test_json_array_streamed_across_chunks(monkeypatch):
    monkeypatch.setattr(file_chunks, "CHUNK_SIZE", 7)  # elements are cut by every chunk boundary
    events = [{**EVENT, "_id": f"e{i}", "subject": "é ✓ 限时"} for i in range(50)]
    data = b"[\n" + b",\n".join(orjson.dumps(e) for e in events) + b"\n]\n"
    recs = read(gzip.compress(data))
    assert [r["_id"] for r in recs] == [f"e{i}" for i in range(50)]
    assert recs[0]["subject"] == "é ✓ 限时"


def test_empty_json_array_and_empty_file():
    assert read(b"[]") == []
    assert read(b"") == []
    assert read(gzip.compress(b"")) == []


def test_csv_with_header_json_columns_and_empty_values():
    data = (
        b"_id,time,first,properties,mTags,email,d\n"
        b'e1,2024-03-13T22:48:40+0000,true,"{""stp"":""dyn""}","[""x"",""y""]",,'
        b'"{""type"":""mobile""}"\n'
        b"e2,2024-03-13T22:48:41+0000,0,,,a@example.com,\n"
    )
    first, second = read(gzip.compress(data), "csv", "f.csv.gz")
    assert first == {
        "_id": "e1", "time": "2024-03-13T22:48:40+00:00", "first": True,
        "properties": {"stp": "dyn"}, "mTags": ["x", "y"], "d": {"type": "mobile"},
    }
    assert second == {
        "_id": "e2", "time": "2024-03-13T22:48:41+00:00", "first": False,
        "email": "a@example.com",
    }


def test_csv_quoted_newline_keeps_line_numbers():
    data = b'_id,time,subject\ne1,2024-01-01T00:00:00+0000,"two\nlines"\ne2,bad,x\n'
    with pytest.raises(ExportDataError, match=r"f.csv line 4: `time` 'bad'"):
        read(data, "csv", "f.csv")


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        (jsonl(EVENT) + b'{"_id": "x", "time": \n', "json", r"f.json line 2: not JSON"),
        (jsonl(EVENT, {"time": "2024-01-01T00:00:00+0000"}), "json",
         r"f.json line 2: record without `_id`"),
        (jsonl({"_id": "x"}), "json", r"f.json line 1: record x without `time`"),
        (jsonl(EVENT, EVENT, {**EVENT, "time": "yesterday"}), "json",
         r"f.json line 3: `time` 'yesterday' is not an ISO 8601"),
        (jsonl({**EVENT, "message_sent": "2024-13-45"}), "json",
         r"line 1: `message_sent` '2024-13-45'"),
        (jsonl({**EVENT, "first": "maybe"}), "json", r"line 1: `first` 'maybe' is not a boolean"),
        (b"[" + orjson.dumps(EVENT) + b",\n{oops}]", "json", r"f.json line 2: not JSON"),
        (b"[" + orjson.dumps(EVENT), "json", r"not closed \(truncated\)"),
        (b"_id,time\ne1,2024-01-01T00:00:00+0000\ne2,2024-01-01T00:00:00+0000,extra\n", "csv",
         r"f.json line 3: 3 columns where the header has 2"),
    ],
)
def test_bad_data_names_file_and_line(data, fmt, message):
    with pytest.raises(ExportDataError, match=message):
        read(data, fmt)


def test_truncated_gzip_is_an_error_after_the_good_records():
    data = gzip.compress(jsonl(*[{**EVENT, "_id": f"e{i}"} for i in range(2000)]))
    out: list[dict] = []
    reader = read_records(io.BytesIO(data[: len(data) // 2]), "f.json", "json")
    with pytest.raises(ExportDataError, match=r"f.json: truncated gzip file"):
        out.extend(rec for rec, _, _ in reader)
    assert out  # records before the cut were readable; the caller must not advance its bookmark


def test_corrupt_gzip_is_an_error():
    data = bytearray(gzip.compress(jsonl(EVENT) * 100))
    data[20:40] = b"\x00" * 20
    with pytest.raises(ExportDataError, match=r"f.json: (corrupt gzip data|truncated gzip)"):
        read(bytes(data))


def test_unknown_fields_are_kept():
    (rec,) = read(jsonl({**EVENT, "newField": {"x": 1}}))
    assert rec["newField"] == {"x": 1}
    assert not KNOWN_FIELDS.issuperset(rec)


def test_memory_is_flat_for_large_input(monkeypatch):
    """The reader holds one chunk and one record at a time, not the file."""
    import tracemalloc

    line = orjson.dumps(EVENT) + b"\n"
    count = 40_000  # ~6 MB of JSON Lines

    class Source:
        def __init__(self) -> None:
            self.left = count

        def read(self, size: int) -> bytes:
            n = min(self.left, max(1, size // len(line)))
            self.left -= n
            return line * n

    tracemalloc.start()
    seen = sum(1 for _ in read_records(Source(), "big.json", "json"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen == count
    assert peak < 5 * file_chunks.CHUNK_SIZE  # a few chunks, not the ~6 MB input


def test_cached_times_normalize_like_normalize():
    """Records whose times were seen before take the inline path; it agrees with normalize()."""
    from sandbox.events import generate_events

    # The cache the JSON reader shares with normalize(), emptied for this test.
    normalization.TIMESTAMP_CACHE.clear()
    events = list(generate_events(3000, seed=11))
    events[5] = {**events[4], "_id": "same-time-empty-sent", "message_sent": ""}
    events[6] = {**events[4], "_id": "same-time-text-first", "first": "0"}
    assert len({e["time"] for e in events}) < len(events) * 0.9  # many times repeat
    expected = []
    for line_no, event in enumerate(events, 1):
        copy = orjson.loads(orjson.dumps(event))
        normalization.TIMESTAMP_CACHE.clear()
        moment = records.normalize(copy, "f.json", line_no)
        expected.append((copy, moment, line_no))
    normalization.TIMESTAMP_CACHE.clear()
    got = list(read_records(io.BytesIO(gzip.compress(jsonl(*events))), "f.json", "json"))
    assert got == expected
    assert got[5][0].get("message_sent", "absent") == "absent"
    assert got[6][0]["first"] is False


@pytest.mark.parametrize(
    ("second", "message"),
    [({"first": "yes"}, r"f.json line 2: `first` 'yes' is not a boolean"),
     ({"message_sent": "Nov 5"}, r"f.json line 2: `message_sent` 'Nov 5' is not an ISO 8601"),
     ({"_id": ""}, r"f.json line 2: record without `_id`")],
)
def test_bad_second_record_of_a_known_time(second, message):
    with pytest.raises(ExportDataError, match=message):
        read(jsonl(EVENT, {**EVENT, **second}))


def test_standard_library_inflate_reads_the_same(monkeypatch):
    """ISA-L inflates by default; without the isal package zlib gives the same records."""
    assert file_chunks.inflate_lib.__name__ == "isal.isal_zlib"
    data = gzip.compress(jsonl(*[{**EVENT, "_id": f"e{i}"} for i in range(500)]))
    with_isal = read(data)
    monkeypatch.setattr(file_chunks, "inflate_lib", __import__("zlib"))
    assert read(data) == with_isal
    corrupt = bytearray(data)
    corrupt[20:40] = b"\x00" * 20
    with pytest.raises(ExportDataError, match=r"f.json: (corrupt gzip data|truncated gzip)"):
        read(bytes(corrupt))


@pytest.mark.parametrize("chunk_size", [1, 5, 64, 1 << 20])
def test_json_lines_across_chunk_boundaries(monkeypatch, chunk_size):
    """Lines cut anywhere by the source's reads (longer or shorter than a chunk) read alike."""
    monkeypatch.setattr(file_chunks, "CHUNK_SIZE", chunk_size)
    events = [{**EVENT, "_id": f"e{i}", "subject": "x" * (i * 37 % 200)} for i in range(60)]
    data = jsonl(*events[:30]) + b"\n\r\n" + jsonl(*events[30:]).rstrip(b"\n")
    got = list(read_records(io.BytesIO(data), "f.json", "json"))
    assert [rec["_id"] for rec, _, _ in got] == [e["_id"] for e in events]
    assert [line for _, _, line in got] == [*range(1, 31), *range(33, 63)]
