"""Typed decoding: a record's JSON straight to its Lytics event, checked by msgspec in C.

For a mapped stream (``fields`` set, ``include_unmapped_fields`` off) whose schema uses only the
JSON-schema parts :func:`_property_type` knows, a msgspec Struct is generated from the schema.
Decoding a record into it checks every property's type; what it accepts, the stream's JSON-schema
validator accepts too (it accepts a subset: no field outside the schema, no ``1.0`` for an integer),
so the record is mapped into the event without a dict or a validator call. A record it refuses
returns None and goes the general way (dict, validator, :class:`RecordMapper`), which gives the
same result or error as without this module. tests/test_target_typed_records.py checks both ways
give the same events.

Objects (``type: object``, no ``properties``) are kept as raw JSON: sent as they came unless they
hold an array (``[``), in which case the general converter decides (an array of objects is sent as
JSON text).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from types import GenericAlias
from typing import Any

import msgspec
import orjson
from singer_sdk.contrib import msgspec as sdk_msgspec

from target_lytics.errors import ValueConversionError
from target_lytics.mapping import RecordMapper, json_default, to_bool

#: JSON-schema keywords of a property that the generated types honour or that check nothing.
_PROPERTY_KEYWORDS = frozenset(
    {"type", "format", "items", "additionalProperties", "description", "title", "examples"}
)
#: Keywords of the stream's schema itself.
_SCHEMA_KEYWORDS = frozenset(
    {"type", "properties", "required", "additionalProperties", "description", "title", "$schema"}
)
_SCALARS: dict[str, Any] = {"string": str, "boolean": bool, "integer": int}
_OBJECT_OPEN = ord("{")
_UNSET = msgspec.UNSET
_NULL_OPEN = ord("n")

#: singer-sdk's msgspec reader's decoder (floats as Decimal), for the general way.
_RECORD_DECODER = sdk_msgspec.decoder


def _types(prop: Mapping[str, Any]) -> list[str] | None:
    raw = prop.get("type")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
        return list(raw)
    return None


def _property_type(prop: Any) -> tuple[Any, bool] | None:
    """The msgspec type of a property and whether it is an object kept raw; None: unsupported."""
    if not isinstance(prop, Mapping) or not _PROPERTY_KEYWORDS.issuperset(prop):
        return None
    types = _types(prop)
    if types is None:
        return None
    nullable = "null" in types
    rest = set(types) - {"null"}
    if rest == {"object"}:
        if "items" in prop or prop.get("additionalProperties", True) is not True:
            return None
        return msgspec.Raw, True
    if "additionalProperties" in prop:
        return None
    if rest == {"array"}:
        item = _property_type(prop.get("items"))
        if item is None or item[1] or "items" not in prop:
            return None
        kind: Any = GenericAlias(list, (item[0],))
    elif rest and rest <= _SCALARS.keys() and "items" not in prop:
        kind = None
        for name in sorted(rest):
            kind = _SCALARS[name] if kind is None else kind | _SCALARS[name]
    else:
        return None
    return (kind | None if nullable else kind), False


class TypedRecordEncoder:
    """Decodes one stream's records into the Lytics event bytes, or None for the general way."""

    def __init__(
        self,
        struct: type[msgspec.Struct],
        objects: Sequence[tuple[int, bool]],
        mapper: RecordMapper,
        out_fields: Sequence[tuple[int, str, Callable[[Any], Any] | None, str]],
    ) -> None:
        """Use :meth:`for_stream` to build one."""
        self._decode = msgspec.json.Decoder(struct).decode
        self._astuple = msgspec.structs.astuple
        #: (position, nullable) of the properties kept as raw JSON objects.
        self._objects = tuple(objects)
        self.stream_name = mapper.stream_name
        self._event = msgspec.defstruct(
            "LyticsEvent",
            [(f"f{i}", Any, None) for i in range(len(out_fields))],
            rename={f"f{i}": field[1] for i, field in enumerate(out_fields)},
            omit_defaults=True,
            gc=False,
        )
        self._encode = msgspec.json.Encoder().encode
        self._indices = tuple(field[0] for field in out_fields)
        # The event's values out of the record's, in one C call (itemgetter of one gives a value).
        self._pick: Callable[[tuple[Any, ...]], Sequence[Any]] = (
            operator.itemgetter(*self._indices)
            if len(self._indices) > 1
            else lambda values: (values[self._indices[0]],)
        )
        #: (position in the event, converter, source field name) of the fields converted.
        self._converted = tuple(
            (position, conv, field[3])
            for position, field in enumerate(out_fields)
            if (conv := field[2]) is not None
        )

    @classmethod
    def for_stream(
        cls,
        schema: Mapping[str, Any],
        key_properties: Sequence[str],
        mapper: RecordMapper,
    ) -> TypedRecordEncoder | None:
        """The encoder of a stream, or None when its schema or mapping needs the general way."""
        mapped = mapper.mapped_fields()
        if mapped is None or not _SCHEMA_KEYWORDS.issuperset(schema):
            return None
        if schema.get("type") not in ("object", ["object"]):
            return None
        properties = schema.get("properties")
        required = schema.get("required", [])
        extra = schema.get("additionalProperties", True)
        if not isinstance(properties, Mapping) or not isinstance(required, list):
            return None
        if not isinstance(extra, bool):
            return None
        required_names = {*required, *key_properties}
        if not required_names <= properties.keys():
            return None
        # The general way drops ``_sdc_*`` columns before mapping: leave such mappings to it.
        if not mapped or any(
            source not in properties or source.startswith("_sdc_") for source, _, _ in mapped
        ):
            return None
        # Required fields first: msgspec wants fields without defaults before the others.
        ordered = sorted(properties, key=lambda name: name not in required_names)
        position = {name: i for i, name in enumerate(ordered)}
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        #: (position, nullable) of the properties kept as raw JSON objects.
        objects: list[tuple[int, bool]] = []
        for name in ordered:
            found = _property_type(properties[name])
            if found is None:
                return None
            kind, raw_object = found
            if raw_object:
                objects.append((position[name], "null" in (_types(properties[name]) or ())))
            if name in required_names:
                fields.append((f"f{position[name]}", kind))
            else:
                fields.append((f"f{position[name]}", kind | msgspec.UnsetType, msgspec.UNSET))
        try:
            struct = msgspec.defstruct(
                "SingerRecord",
                fields,
                rename={f"f{i}": name for name, i in position.items()},
                forbid_unknown_fields=True,
                gc=False,
            )
        except (TypeError, ValueError):
            return None
        object_positions = {index for index, _ in objects}
        out_fields = []
        for source, target, conv in mapped:
            types = set(_types(properties[source]) or ())
            if position[source] in object_positions:
                if conv is None:
                    return None  # a raw object must go through the nested check
            elif conv is to_bool and types <= {"boolean", "null"}:
                conv = None  # the type check already made it a boolean
            elif "array" in types:
                conv = None  # an array of scalars holds no object: the nested check passes it
            out_fields.append((position[source], target, conv, source))
        return cls(struct, objects, mapper, out_fields)

    def encode(self, raw: bytes | memoryview | msgspec.Raw) -> bytes | None:
        """The event's JSON for one record's JSON; None when the record needs the general way.

        Raises:
            ValueConversionError: A value the mapping cannot convert, naming the field.
        """
        try:
            values = self._astuple(self._decode(raw))
        except msgspec.ValidationError:
            return None
        nested: set[int] | None = None
        for index, nullable in self._objects:
            value = values[index]
            if value is _UNSET:
                continue
            data = bytes(value)  # a short copy; ``in`` on a memoryview loops in Python
            first = data[0]
            if first == _OBJECT_OPEN:
                if b"[" in data:
                    nested = {index} if nested is None else nested | {index}
            elif first != _NULL_OPEN or not nullable:
                return None  # not an object: the validator gives the error
        event = list(self._pick(values))
        for position, conv, source in self._converted:
            value = event[position]
            if value is None or value is _UNSET:
                continue
            if value.__class__ is msgspec.Raw:
                if nested is None or self._indices[position] not in nested:
                    if memoryview(value)[0] == _NULL_OPEN:
                        event[position] = None
                    continue
                value = _RECORD_DECODER.decode(value)
                if value is None:
                    event[position] = None
                    continue
            try:
                converted = conv(value)
            except ValueConversionError as exc:
                raise ValueConversionError(
                    f"stream '{self.stream_name}', field '{source}': {exc}"
                ) from exc
            if converted.__class__ is dict or converted.__class__ is list:
                converted = msgspec.Raw(orjson.dumps(converted, default=json_default))
            event[position] = converted
        return self._encode(self._event(*event))


def decode_record(raw: bytes | memoryview | msgspec.Raw) -> Any:
    """A record's JSON as the Singer reader decodes it (floats as Decimal)."""
    return _RECORD_DECODER.decode(raw)
