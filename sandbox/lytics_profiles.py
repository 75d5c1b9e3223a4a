"""User profiles of the Lytics stand-in: published mappings applied to a stream's events.

Lytics turns raw stream events into user fields only through the published schema: each mapping
evaluates an expression on an event (a bare key, ``todate(x)``, ``tobool(x)``, ``email(x)``,
``set(x)``), the value is coerced to the field's type, and the events sharing an identifier value
are merged into one profile, each field by its merge operation. Profiles here are rebuilt from every
stored event whenever they are read (after a publish, or once new events arrived), so a publish also
applies to the events received before it, as a Lytics rebuild would.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

_EXPR = re.compile(r"^\s*(?:(?P<func>[a-z]+)\(\s*(?P<arg>[^()\s]+)\s*\)|(?P<key>[^()\s]+))\s*$")
#: Functions the stand-in evaluates (a subset of Lytics' expression language).
FUNCTIONS = frozenset({"todate", "tobool", "email", "set"})
_TRUE = frozenset({"true", "1", "t", "yes", "y"})
_FALSE = frozenset({"false", "0", "f", "no", "n"})
_FIRST = datetime.min.replace(tzinfo=UTC)


def parse_expr(expr: str) -> tuple[str | None, str] | None:
    """``(function or None, stream key)`` of a supported expression; None when unsupported."""
    match = _EXPR.match(expr or "")
    if match is None:
        return None
    if match["key"]:
        return None, match["key"]
    if match["func"] not in FUNCTIONS:
        return None
    return match["func"], match["arg"]


def to_datetime(value: Any) -> datetime | None:
    """An ISO 8601 / RFC 3339 text or epoch seconds (ms above 1e11) as an aware UTC datetime."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 1e11 else value
        return datetime.fromtimestamp(seconds, UTC)
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    elif re.search(r"[+-]\d{4}$", text):
        text = f"{text[:-2]}:{text[-2:]}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def evaluate(expr: str, event: Mapping[str, Any]) -> Any:
    """The value of a mapping expression for one event (None: the event gives no value)."""
    parsed = parse_expr(expr)
    if parsed is None:
        return None
    func, key = parsed
    value = event.get(key)
    if value is None:
        return None
    if func == "todate":
        return to_datetime(value)
    if func == "tobool":
        return _to_bool(value)
    if func == "email":
        return value.strip().lower() if isinstance(value, str) and "@" in value else None
    if func == "set":
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return value


def coerce(value: Any, field_type: str) -> Any:
    """``value`` as the field's type holds it; None when it does not fit."""
    if value is None:
        return None
    if field_type == "string":
        if isinstance(value, datetime):
            return value.strftime("%Y-%m-%dT%H:%M:%SZ")
        if isinstance(value, bool):
            return "true" if value else "false"
        return value if isinstance(value, str) else str(value)
    if field_type == "date":
        return value if isinstance(value, datetime) else to_datetime(value)
    if field_type == "bool":
        return _to_bool(value)
    if field_type in ("int", "number"):
        if isinstance(value, bool):
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return int(number) if field_type == "int" else number
    if field_type.startswith("[]"):
        items = value if isinstance(value, list) else [value]
        return [str(item) for item in items]
    if field_type.startswith("map[") and isinstance(value, dict):
        return dict(value)
    return None


@dataclass
class _FieldState:
    """What a profile holds for one field while events are merged."""

    value: Any = None
    #: Ordering key of the event that gave ``value`` (event time, arrival), for latest/oldest.
    key: tuple[datetime, int] | None = None


@dataclass
class Profile:
    """One merged user: fields and how many events built it."""

    fields: dict[str, _FieldState] = field(default_factory=dict)
    events: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The profile as Lytics' entity API shows it (dates as RFC 3339 UTC)."""
        out: dict[str, Any] = {}
        for name, state in sorted(self.fields.items()):
            value = state.value
            out[name] = (
                value.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(value, datetime) else value
            )
        return out


def _merge(state: _FieldState, value: Any, key: tuple[datetime, int], op: str) -> None:
    """Fold one event's value into a field by the field's merge operation."""
    current = state.value
    if op == "count":
        state.value = (current or 0) + 1
    elif current is None:
        state.value, state.key = value, key
    elif op == "oldest":
        if state.key is None or key < state.key:
            state.value, state.key = value, key
    elif op == "max":
        state.value = max(current, value)
    elif op == "min":
        state.value = min(current, value)
    elif op == "sum":
        state.value = current + value
    elif op == "merge":
        if isinstance(current, dict) and isinstance(value, dict):
            state.value = {**current, **value}
        elif isinstance(current, list):
            state.value = current + [v for v in value if v not in current]
        else:
            state.value, state.key = value, key
    elif state.key is None or key >= state.key:  # latest (the default)
        state.value, state.key = value, key


def default_mergeop(field_def: Mapping[str, Any]) -> str:
    """A field's merge operation; lists default to ``merge`` (union), others to ``latest``."""
    op = field_def.get("mergeop")
    if op:
        return str(op)
    return "merge" if str(field_def.get("type", "")).startswith(("[]", "map[")) else "latest"


@dataclass(frozen=True)
class StoredEvent:
    """One accepted event, its stream's ``timestamp_field`` and its arrival position."""

    event: Mapping[str, Any]
    timestamp_field: str | None
    arrival: int


def build_profiles(
    fields: Mapping[str, Mapping[str, Any]],
    mappings: Iterable[Mapping[str, Any]],
    events_of: Mapping[str, Iterable[StoredEvent]],
) -> tuple[list[str], list[Profile]]:
    """Profiles from the events of every mapped stream: ``(identifier fields, profiles)``.

    Events that share any identifier value end in one profile (union of identities); events with
    no identifier value build none. "latest"/"oldest" follow the event time (the stream's
    ``timestamp_field``), then arrival.
    """
    by_stream: dict[str, list[Mapping[str, Any]]] = {}
    for mapping in mappings:
        if mapping.get("field") in fields:
            by_stream.setdefault(str(mapping["stream"]), []).append(mapping)
    identifiers = sorted(name for name, f in fields.items() if f.get("is_identifier"))
    rows: list[tuple[list[tuple[str, str]], dict[str, Any], tuple[datetime, int]]] = []
    for stream, stream_mappings in by_stream.items():
        for stored in events_of.get(stream, ()):
            values: dict[str, Any] = {}
            for mapping in stream_mappings:
                name = str(mapping["field"])
                value = evaluate(str(mapping["expr"]), stored.event)
                # "count" counts the events that give the field any value.
                if default_mergeop(fields[name]) != "count":
                    value = coerce(value, fields[name]["type"])
                if value is not None and name not in values:
                    values[name] = value
            ids = [(name, str(values[name])) for name in identifiers if name in values]
            if not ids:
                continue
            moment = (
                to_datetime(stored.event.get(stored.timestamp_field))
                if stored.timestamp_field
                else None
            )
            rows.append((ids, values, (moment or _FIRST, stored.arrival)))
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for ids, _, _ in rows:
        for other in ids[1:]:
            parent[root(other)] = root(ids[0])
    profiles: dict[tuple[str, str], Profile] = {}
    for ids, values, key in sorted(rows, key=lambda row: row[2]):
        profile = profiles.setdefault(root(ids[0]), Profile())
        profile.events += 1
        for name, value in values.items():
            _merge(
                profile.fields.setdefault(name, _FieldState()),
                value,
                key,
                default_mergeop(fields[name]),
            )
    return identifiers, list(profiles.values())
