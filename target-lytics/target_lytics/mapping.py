"""Field mapping and value conversion from Singer records to Lytics events.

A :class:`RecordMapper` is compiled once per sink from the stream's Singer schema and its entry in
the target's ``streams`` setting, so that mapping a record is a short loop over prepared
``(source, destination, converter)`` triples.

Value rules:
- date-times (``format: date-time``, as strings or ``datetime`` objects) become RFC 3339 UTC with
  ``Z``; Cordial's ``+0000`` / ``+00:00`` offsets are converted;
- fields typed ``boolean`` become JSON booleans from ``true``/``false``, ``1``/``0``,
  ``"true"``/``"1"``/``"false"``/``"0"``;
- absent and null source fields are left out of the event;
- Lytics does not parse arrays of objects nested in an event, so such an array is sent as a
  JSON-encoded string (announced once per field in a warning), never dropped.
"""

from __future__ import annotations

import datetime
import decimal
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from target_lytics.errors import InputError, ValueConversionError
from target_lytics.user_fields import lytics_field_name

Converter = Callable[[Any], Any]

_UTC = datetime.UTC
_TRUE_STRINGS = frozenset({"true", "1"})
_FALSE_STRINGS = frozenset({"false", "0"})


def to_rfc3339_utc(value: Any) -> str:
    """Return ``value`` (an ISO 8601 string or a datetime) as RFC 3339 UTC ending in ``Z``.

    A naive date-time is taken as UTC, which is what Singer taps mean when they omit the offset.
    """
    if type(value) is str:
        converted = _RFC3339_CACHE.get(value)
        if converted is None:
            converted = _string_to_rfc3339_utc(value)
            if len(_RFC3339_CACHE) >= _RFC3339_CACHE_SIZE:
                _RFC3339_CACHE.clear()
            _RFC3339_CACHE[value] = converted
        return converted
    if isinstance(value, datetime.datetime):
        return _datetime_to_rfc3339_utc(value)
    if isinstance(value, str):
        return _string_to_rfc3339_utc(value)
    raise ValueConversionError(f"not a date-time: {value!r}")


# Recent conversions: a message's send time repeats across its many events.
_RFC3339_CACHE: dict[str, str] = {}
_RFC3339_CACHE_SIZE = 4096


def _datetime_to_rfc3339_utc(moment: datetime.datetime) -> str:
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(_UTC).replace(tzinfo=None)
        except OverflowError as exc:
            raise ValueConversionError(
                f"{moment.isoformat()} is out of range in UTC (years 1 to 9999)"
            ) from exc
    return moment.isoformat() + "Z"


def _string_to_rfc3339_utc(text: str) -> str:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueConversionError(f"not an ISO 8601 date-time: {text!r}") from exc
    # Shortcut for the common whole-second UTC forms (what the tap emits); it gives exactly what
    # the general path gives, which the tests check.
    if (
        len(text) == 25
        and text.endswith("+00:00")
        and text[4] == "-"
        and text[7] == "-"
        and text[10] == "T"
    ):
        return text[:19] + "Z"
    return _datetime_to_rfc3339_utc(moment)


def to_iso_date(value: Any) -> str:
    """Return a ``format: date`` value as ``YYYY-MM-DD``."""
    if isinstance(value, datetime.date):
        return value.isoformat()
    try:
        return datetime.date.fromisoformat(value).isoformat()
    except (TypeError, ValueError) as exc:
        raise ValueConversionError(f"not an ISO 8601 date: {value!r}") from exc


def to_iso_time(value: Any) -> str:
    """Return a ``format: time`` value as ISO 8601 time text."""
    if isinstance(value, datetime.time):
        return value.isoformat()
    try:
        return datetime.time.fromisoformat(value).isoformat()
    except (TypeError, ValueError) as exc:
        raise ValueConversionError(f"not an ISO 8601 time: {value!r}") from exc


def to_bool(value: Any) -> bool:
    """Return ``value`` as a boolean: accepts booleans, 1/0 and their string forms."""
    if value is True or value is False:
        return value
    if isinstance(value, int | float | decimal.Decimal):
        if value == 1:
            return True
        if value == 0:
            return False
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE_STRINGS:
            return True
        if text in _FALSE_STRINGS:
            return False
    raise ValueConversionError(f"not a boolean: {value!r}")


def to_bool_lenient(value: Any) -> Any:
    """Like :func:`to_bool`, for fields that may also hold other types: others stay as they are."""
    try:
        return to_bool(value)
    except ValueConversionError:
        return value


def _has_object_in_array(value: Any) -> bool:
    """True when ``value`` holds, at any depth, an array with an object in it."""
    if isinstance(value, dict):
        return any(_has_object_in_array(item) for item in value.values())
    if isinstance(value, list):
        return any(isinstance(item, dict | list) and _is_or_has_object(item) for item in value)
    return False


#: The check :mod:`target_lytics.rejects` applies to an event before it is sent.
holds_object_in_array = _has_object_in_array


def _is_or_has_object(value: Any) -> bool:
    if isinstance(value, dict):
        return True
    if isinstance(value, list):
        return any(_is_or_has_object(item) for item in value)
    return False


def json_default(value: Any) -> Any:
    """The orjson ``default`` hook for what the Singer readers produce besides JSON types.

    msgspec's reader turns JSON floats into ``Decimal``: they are written back as the exact number.
    """
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise TypeError(f"{value} is not a JSON number")
        return orjson.Fragment(str(value))
    if isinstance(value, datetime.datetime):
        return to_rfc3339_utc(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def encode_json_text(value: Any) -> str:
    """Return ``value`` as compact JSON text (for arrays of objects Lytics would not parse)."""
    return orjson.dumps(value, default=json_default).decode()


@dataclass
class NestedValueHandler:
    """Sends arrays of objects as JSON text, warning once per field so nothing changes silently."""

    logger: logging.Logger
    stream_name: str
    _warned: set[str] = field(default_factory=set)

    def converter(self, field_name: str) -> Converter:
        """Converter for a field that may hold objects or arrays."""

        def convert(value: Any) -> Any:
            if type(value) is list:
                if not _is_or_has_object(value):
                    return value
            elif type(value) is not dict or not _has_object_in_array(value):
                return value
            if field_name not in self._warned:
                self._warned.add(field_name)
                self.logger.warning(
                    "Stream '%s': field '%s' holds an array of objects, which Lytics does not "
                    "parse; it is sent as a JSON-encoded string.",
                    self.stream_name,
                    field_name,
                )
            return encode_json_text(value)

        return convert


def _schema_types(prop: Mapping[str, Any]) -> set[str]:
    """The JSON types a property schema allows (``anyOf``/``oneOf`` branches included)."""
    raw = prop.get("type")
    types: set[str] = set()
    if isinstance(raw, str):
        types.add(raw)
    elif isinstance(raw, list):
        types.update(t for t in raw if isinstance(t, str))
    for key in ("anyOf", "oneOf"):
        for branch in prop.get(key) or ():
            if isinstance(branch, Mapping):
                types |= _schema_types(branch)
    return types


def _schema_format(prop: Mapping[str, Any]) -> str | None:
    """The string ``format`` of a property, looking into ``anyOf``/``oneOf`` branches."""
    fmt = prop.get("format")
    if isinstance(fmt, str):
        return fmt
    for key in ("anyOf", "oneOf"):
        for branch in prop.get(key) or ():
            if isinstance(branch, Mapping) and isinstance(branch.get("format"), str):
                return str(branch["format"])
    return None


_FORMAT_CONVERTERS: dict[str, Converter] = {
    "date-time": to_rfc3339_utc,
    "date": to_iso_date,
    "time": to_iso_time,
}


def converter_for(
    name: str, prop: Mapping[str, Any] | None, nested: NestedValueHandler
) -> Converter | None:
    """Choose the converter for a field from its property schema; None means send as is."""
    if prop is None:
        return nested.converter(name)
    types = _schema_types(prop)
    non_null = types - {"null"}
    if "boolean" in non_null:
        return to_bool if non_null == {"boolean"} else to_bool_lenient
    if "string" in non_null:
        fmt = _schema_format(prop)
        if fmt in _FORMAT_CONVERTERS and non_null == {"string"}:
            return _FORMAT_CONVERTERS[fmt]
    if not non_null or non_null & {"object", "array"}:
        return nested.converter(name)
    return None


@dataclass(frozen=True)
class StreamMapping:
    """One entry of the ``streams`` setting, resolved for a Singer stream."""

    lytics_stream: str
    fields: Mapping[str, str] | None = None
    timestamp_field: str | None = None

    @classmethod
    def from_setting(cls, singer_stream: str, entry: Mapping[str, Any] | None) -> StreamMapping:
        """Build from a ``streams`` entry; no entry means pass-through to the same-named stream."""
        if not entry:
            return cls(lytics_stream=singer_stream)
        fields = entry.get("fields")
        return cls(
            lytics_stream=entry.get("lytics_stream") or singer_stream,
            # An entry is a Lytics field name or a field definition naming it in `field`.
            fields={k: lytics_field_name(v) for k, v in fields.items()} if fields else None,
            timestamp_field=entry.get("timestamp_field") or None,
        )


class RecordMapper:
    """Turns one stream's Singer records into Lytics events."""

    def __init__(
        self,
        *,
        stream_name: str,
        schema: Mapping[str, Any],
        mapping: StreamMapping,
        include_unmapped_fields: bool,
        logger: logging.Logger,
    ) -> None:
        """Compile the mapping for ``schema``."""
        self.stream_name = stream_name
        self.mapping = mapping
        properties: Mapping[str, Any] = schema.get("properties") or {}
        self._nested = NestedValueHandler(logger=logger, stream_name=stream_name)
        self._by_schema: dict[str, Converter | None] = {
            name: converter_for(name, prop, self._nested) for name, prop in properties.items()
        }
        # Fields outside the schema (allowed by additionalProperties) get the nested check.
        self._unknown_field_converters: dict[str, Converter] = {}
        self._mapped: tuple[tuple[str, str, Converter | None], ...] = ()
        self._pass_all = mapping.fields is None
        if mapping.fields is not None:
            self._mapped = tuple(
                (source, target, self._converter(source))
                for source, target in mapping.fields.items()
            )
        self._include_unmapped = include_unmapped_fields and mapping.fields is not None
        #: Lowercase Lytics field -> its source: an unmapped record key outside the schema must
        #: not land on one (the sink checks the schema's properties when SCHEMA arrives).
        self._mapped_ids = {target.lower(): src for src, target in (mapping.fields or {}).items()}

    def mapped_fields(self) -> tuple[tuple[str, str, Converter | None], ...] | None:
        """``(source, destination, converter)`` of every field sent.

        None when the fields sent depend on the record (pass-through, or unmapped fields included).
        """
        if self._pass_all or self._include_unmapped:
            return None
        return self._mapped

    def _converter(self, name: str) -> Converter | None:
        if name in self._by_schema:
            return self._by_schema[name]
        conv = self._unknown_field_converters.get(name)
        if conv is None:
            conv = self._unknown_field_converters[name] = self._nested.converter(name)
        return conv

    def _convert(self, name: str, conv: Converter | None, value: Any) -> Any:
        if conv is None:
            return value
        try:
            return conv(value)
        except ValueConversionError as exc:
            raise ValueConversionError(
                f"stream '{self.stream_name}', field '{name}': {exc}"
            ) from exc

    def map(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Return the Lytics event for ``record`` (null and absent fields left out)."""
        if self._pass_all:
            return self._map_all(record)
        event: dict[str, Any] = {}
        source = ""
        try:
            for source, target, conv in self._mapped:
                value = record.get(source)
                if value is not None:
                    event[target] = value if conv is None else conv(value)
        except ValueConversionError as exc:
            raise ValueConversionError(
                f"stream '{self.stream_name}', field '{source}': {exc}"
            ) from exc
        if self._include_unmapped:
            mapped_sources = self.mapping.fields or {}
            in_schema = self._by_schema
            for name, value in record.items():
                if value is None or name in mapped_sources:
                    continue
                if name not in in_schema and name.lower() in self._mapped_ids:
                    raise self._collision(name)
                if name not in event:
                    event[name] = self._convert(name, self._converter(name), value)
        return event

    def _collision(self, name: str) -> InputError:
        """An unmapped key outside the schema named like a mapped Lytics field (ids lowercase)."""
        source = self._mapped_ids[name.lower()]
        return InputError(
            f"stream '{self.stream_name}': field {name!r} is not in the stream's schema nor "
            f"mapped, so include_unmapped_fields would send it as {name!r}, the Lytics field "
            f"that {source!r} is mapped onto (field ids are lowercase), and one value would be "
            f"lost; drop or rename {name!r} (a stream map), or turn include_unmapped_fields off"
        )

    def _map_all(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Pass-through: every non-null field under its own name."""
        event: dict[str, Any] = {}
        for name, value in record.items():
            if value is not None:
                event[name] = self._convert(name, self._converter(name), value)
        return event
