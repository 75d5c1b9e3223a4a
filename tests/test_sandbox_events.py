"""The event generator and the JSON Lines loader."""

from __future__ import annotations

import gzip
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from sandbox.events import (
    ALL_ACTIONS,
    CUSTOM_ACTIONS,
    MESSAGE_ACTIONS,
    RESERVED_ACTIONS,
    format_cordial_time,
    generate_events,
    load_events_jsonl,
    parse_cordial_time,
)

START = datetime(2024, 3, 1, tzinfo=UTC)
END = START + timedelta(days=1)
CORDIAL_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0000$")
HEX24 = re.compile(r"^[0-9a-f]{24}$")
OPTIONAL = ("email", "message_name", "subject", "mTags", "sp", "d", "mcID", "properties")


@pytest.fixture(scope="module")
def sample() -> list[dict[str, Any]]:
    return list(generate_events(3000, seed=7, start=START, end=END))


def test_deterministic_for_a_seed() -> None:
    first = list(generate_events(200, seed=3, start=START, end=END))
    again = list(generate_events(200, seed=3, start=START, end=END))
    other = list(generate_events(200, seed=4, start=START, end=END))
    assert first == again
    assert first != other
    assert not {e["_id"] for e in first} & {e["_id"] for e in other}


def test_ids_and_times(sample: list[dict[str, Any]]) -> None:
    ids = [e["_id"] for e in sample]
    assert len(set(ids)) == len(ids)
    assert all(HEX24.match(i) for i in ids)
    assert all(HEX24.match(e["cID"]) for e in sample)
    assert 16 <= len({e["cID"] for e in sample}) < len(sample) / 5  # a pool of contacts
    times = [e["time"] for e in sample]
    assert all(CORDIAL_TIME.match(t) for t in times)
    parsed = [parse_cordial_time(t) for t in times]
    assert parsed == sorted(parsed)
    assert parsed[0] >= START
    assert parsed[-1] <= END
    assert parsed[-1] - parsed[0] > timedelta(hours=23)  # spread over the range
    assert len(set(times)) < len(times) * 0.9  # bursts: events sharing a second
    on_the_hour = [t for t in times if t.endswith(":00:00+0000")]
    assert len(set(on_the_hour)) > 10  # window edges hold events


def test_bounds_are_inclusive_whole_seconds() -> None:
    start = datetime(2024, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)
    events = list(generate_events(50, seed=1, start=start, end=start + timedelta(seconds=2)))
    assert {e["time"] for e in events} <= {
        "2024-01-01T00:00:01+0000",
        "2024-01-01T00:00:02+0000",
    }
    single = list(generate_events(5, seed=1, start=START, end=START))
    assert {e["time"] for e in single} == {"2024-03-01T00:00:00+0000"}
    with pytest.raises(ValueError, match="before"):
        list(generate_events(1, start=END, end=START))


def test_every_action_even_in_a_small_sample() -> None:
    small = list(generate_events(len(ALL_ACTIONS) + 6, seed=9, start=START, end=END))
    assert set(ALL_ACTIONS) <= {e["action"] for e in small}
    assert {"pageview", "message-stopped"} <= set(RESERVED_ACTIONS)
    assert not set(CUSTOM_ACTIONS) & set(RESERVED_ACTIONS)


def test_action_mix_is_realistic(sample: list[dict[str, Any]]) -> None:
    counts = Counter(e["action"] for e in sample)
    assert counts.most_common(1)[0][0] == "message-sent"
    assert counts["open"] > counts["click"] > counts["complaint"]


def test_first_as_bool_and_as_int(sample: list[dict[str, Any]]) -> None:
    firsts = [e["first"] for e in sample if "first" in e]
    assert {type(f) for f in firsts} == {bool, int}
    assert {True, False} <= {f for f in firsts if isinstance(f, bool)}
    assert {0, 1} <= {f for f in firsts if type(f) is int}
    assert all(e["action"] in ("open", "click") for e in sample if "first" in e)
    small = list(generate_events(30, seed=2, start=START, end=END))
    small_firsts = [e["first"] for e in small if "first" in e]
    assert any(f is True or f is False for f in small_firsts)
    assert any(type(f) is int for f in small_firsts)


def test_message_fields(sample: list[dict[str, Any]]) -> None:
    messages = [e for e in sample if e["action"] in MESSAGE_ACTIONS and "mcID" in e]
    assert messages
    for event in messages:
        assert event["mcID"].startswith(event["bmID"] + ":" + event["cID"] + ":")
        assert CORDIAL_TIME.match(event["message_sent"])
        assert event["message_sent"] <= event["time"]
        assert event["chnl"] in ("email", "sms")
        assert event["chnl-type"]
    sent = [e for e in messages if e["action"] == "message-sent"]
    assert all(e["message_sent"] == e["time"] for e in sent)
    assert all(isinstance(t, str) for e in messages if "mTags" in e for t in e["mTags"])


def test_unicode_and_nested_objects(sample: list[dict[str, Any]]) -> None:
    subjects = {e["subject"] for e in sample if "subject" in e}
    assert any(any(ord(ch) > 0xFFFF for ch in s) for s in subjects)  # emoji (astral plane)
    assert any(any(0x4E00 <= ord(ch) <= 0x9FFF for ch in s) for s in subjects)  # CJK
    devices = [e["d"] for e in sample if "d" in e]
    assert devices
    assert all(set(d) == {"type", "device", "platform", "browser", "robot"} for d in devices)
    assert any(d["robot"] for d in devices)
    assert any(isinstance(e.get("sp", {}).get("segment"), dict) for e in sample)
    purchases = [e["properties"] for e in sample if e["action"] == "purchase" and "properties" in e]
    assert all(isinstance(p["order"], dict) for p in purchases)
    with_items = [p["items"] for p in purchases if "items" in p]
    assert with_items
    assert all(isinstance(i, dict) for items in with_items for i in items)


def test_optional_fields_are_sometimes_missing(sample: list[dict[str, Any]]) -> None:
    for name in ("email", "message_name", "subject", "mTags", "sp", "d"):
        holders = [e for e in sample if name in e]
        assert holders, name
        assert len(holders) < len(sample), name
    bare = [e for e in sample if not any(k in e for k in OPTIONAL)]
    assert bare
    assert all({"_id", "cID", "action", "time"} <= set(e) for e in sample)


def test_cordial_time_helpers() -> None:
    value = datetime(2017, 3, 13, 22, 48, 40, tzinfo=UTC)
    assert format_cordial_time(value) == "2017-03-13T22:48:40+0000"
    assert parse_cordial_time("2017-03-13T22:48:40+0000") == value
    assert parse_cordial_time("2017-03-13T22:48:40Z") == value
    assert parse_cordial_time("2017-03-13T22:48:40") == value


def test_a_million_events_are_cheap() -> None:
    # 100,000 here (a million takes ~4 s on the 2-core CI machine); the bound is generous.
    started = time.perf_counter()
    count = sum(1 for _ in generate_events(100_000, seed=5, start=START, end=END))
    elapsed = time.perf_counter() - started
    assert count == 100_000
    assert elapsed < 3.0, f"100,000 events took {elapsed:.2f}s"


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_load_events_jsonl(tmp_path: Path, suffix: str) -> None:
    events = list(generate_events(20, seed=1, start=START, end=END))
    text = b"\n".join(orjson.dumps(e) for e in events) + b"\n\n"
    path = tmp_path / f"events{suffix}"
    path.write_bytes(gzip.compress(text) if suffix.endswith(".gz") else text)
    assert list(load_events_jsonl(path)) == events


def test_load_events_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"_id": "a"}\n{broken\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        list(load_events_jsonl(path))
    path.write_text('{"_id": "a"}\n[1]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON object"):
        list(load_events_jsonl(path))


def test_custom_and_page_events_carry_name_and_url(sample: list[dict[str, Any]]) -> None:
    named = [e for e in sample if "name" in e]
    assert named
    assert all(e["action"] not in MESSAGE_ACTIONS for e in named)
    pages = [e for e in sample if e["action"] == "pageview" and "properties" in e]
    assert pages
    assert all(p["properties"]["url"].startswith("https://") for p in pages)
