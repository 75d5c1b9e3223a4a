"""The Lytics field types table (target_lytics.user_fields.LYTICS_TYPES): one entry per type."""

from __future__ import annotations

from target_lytics.user_fields import (
    FIELD_TYPES,
    LYTICS_TYPES,
    FieldDefinition,
    LyticsType,
    derive_type,
)


def field(kind: str) -> FieldDefinition:
    return FieldDefinition("activity", "src", "Key", kind, "setting")


def test_the_expression_and_the_derivation_come_from_the_table(monkeypatch):
    assert tuple(LYTICS_TYPES) == FIELD_TYPES
    assert field("date").expr == "todate(Key)"
    assert field("bool").expr == "tobool(Key)"
    assert field("[]string").expr == "Key"
    monkeypatch.setitem(LYTICS_TYPES, "date", LyticsType("todate({key}, \"2006-01-02\")"))
    assert field("date").expr == 'todate(Key, "2006-01-02")'
    monkeypatch.setitem(LYTICS_TYPES, "int", LyticsType("toint({key})", json_type="integer"))
    assert field("int").expr == "toint(Key)"
    assert derive_type({"type": ["integer", "null"]}) == "int"
    assert derive_type({"type": "boolean"}) == "bool"
