"""Lytics user-field definitions from the ``streams`` setting.

Each entry of a stream's ``fields`` maps a source field onto a Lytics stream key, either as a plain
name (``"cID": "cr_contact_id"``) or as an object that also defines the user field the key feeds:
``{"field": "cr_contact_id", "type": "string", "identifier": true, "shortdesc": "..."}`` (plus
``mergeop``). The stream key is also the user field's name (lowercased, as Lytics requires), and the
mapping expression names the key: ``todate(key)`` for dates, ``tobool(key)`` for booleans, the bare
key otherwise.

A field's type comes, in this order, from the entry's ``type``; from the default mapping of the
same Singer stream for the same source field (the Cordial ``activity`` table); from the stream's
Singer schema when one is known; else it is ``string``. The target sees Singer schemas only while
it runs, and the schema commands run without input, so for them the first two apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from singer_sdk.exceptions import ConfigValidationError


@dataclass(frozen=True)
class LyticsType:
    """One Lytics field type: its mapping expression and the Singer JSON type it derives from.

    The values themselves are converted by the Singer schema's JSON type and format
    (:func:`target_lytics.mapping.converter_for`), whatever the Lytics type.
    """

    #: The mapping expression from the stream key (``{key}`` stands for it).
    expression: str = "{key}"
    #: A Singer property of only this JSON type derives this Lytics type (see derive_type).
    json_type: str | None = None


#: Every Lytics field type the setting accepts: adding a type is one entry here.
LYTICS_TYPES: dict[str, LyticsType] = {
    "string": LyticsType(json_type="string"),
    "bool": LyticsType("tobool({key})", json_type="boolean"),
    "int": LyticsType(json_type="integer"),
    "number": LyticsType(json_type="number"),
    "date": LyticsType("todate({key})"),
    "[]string": LyticsType(),
    "[]int": LyticsType(),
    "[]time": LyticsType(),
    "map[string]string": LyticsType(),
    "map[string]int": LyticsType(),
    "map[string]number": LyticsType(),
    "map[string]bool": LyticsType(),
    "map[string]time": LyticsType(),
}
#: Lytics field types the setting accepts.
FIELD_TYPES = tuple(LYTICS_TYPES)
#: The Lytics type a Singer JSON type derives (strings: by their format, see derive_type).
_DERIVED_TYPES = {spec.json_type: name for name, spec in LYTICS_TYPES.items() if spec.json_type}
#: ``schema_workflow`` values: read the account setting, write then publish, or one patch.
WORKFLOWS = ("auto", "direct", "patch")
#: Lytics merge operations the setting accepts.
MERGE_OPS = ("latest", "oldest", "max", "min", "sum", "count", "merge")

#: JSON schema of one entry of a stream's ``fields``: a Lytics field name, or a field definition.
FIELD_ENTRY_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "object",
            "properties": {
                "field": {"type": "string", "description": "Lytics stream key and user field."},
                "type": {"type": "string", "enum": list(FIELD_TYPES)},
                "mergeop": {"type": "string", "enum": list(MERGE_OPS)},
                "identifier": {"type": "boolean"},
                "shortdesc": {"type": "string"},
            },
            "required": ["field"],
            "additionalProperties": False,
        },
    ]
}

#: The default ``activity`` mapping: Cordial's fields as Lytics user fields (the seed's table).
ACTIVITY_FIELDS: dict[str, dict[str, Any]] = {
    "cID": {
        "field": "cr_contact_id",
        "type": "string",
        "identifier": True,
        "shortdesc": "Cordial contact id",
    },
    "first": {
        "field": "cr_first",
        "type": "bool",
        "mergeop": "latest",
        "shortdesc": "Cordial: the last open or click was the contact's first for that message",
    },
    "_id": {
        "field": "cr_system_event_id",
        "type": "string",
        "mergeop": "latest",
        "shortdesc": "Cordial: id of the contact's last activity event",
    },
    "mcID": {
        "field": "cr_message_contact_id",
        "type": "string",
        "mergeop": "latest",
        "shortdesc": "Cordial: message-contact id of the last message event",
    },
    "message_name": {
        "field": "cr_message_name",
        "type": "string",
        "mergeop": "latest",
        "shortdesc": "Cordial: name of the last message the contact acted on",
    },
    "message_sent": {
        "field": "cr_message_sent_timestamp",
        "type": "date",
        "mergeop": "max",
        "shortdesc": "Cordial: send time of the latest message",
    },
    "action": {
        "field": "cr_event_action",
        "type": "string",
        "mergeop": "latest",
        "shortdesc": "Cordial: last activity action (open, click, message-sent, ...)",
    },
    "time": {
        "field": "cr_event_timestamp",
        "type": "date",
        "mergeop": "max",
        "shortdesc": "Cordial: time of the last activity event",
    },
}


class FieldSettingError(ConfigValidationError):
    """A field definition in the ``streams`` setting that Lytics would refuse."""


@dataclass(frozen=True)
class FieldDefinition:
    """One Lytics user field fed by one key of a Lytics stream."""

    singer_stream: str
    source: str
    #: The key in the uploaded events (the configured Lytics field name).
    key: str
    type: str
    #: Where ``type`` came from: "setting", "default mapping", "Singer schema" or "no known type".
    type_from: str
    mergeop: str | None = None
    identifier: bool = False
    shortdesc: str | None = None

    @property
    def id(self) -> str:
        """The user field's id: the stream key in lowercase (Lytics' field ids are lowercase)."""
        return self.key.lower()

    @property
    def expr(self) -> str:
        """The mapping expression from the stream key to the field (its type's, in LYTICS_TYPES)."""
        spec = LYTICS_TYPES.get(self.type) or LyticsType()
        return spec.expression.format(key=self.key)

    def field_body(self) -> dict[str, Any]:
        """The body of ``POST /v2/schema/user/field``."""
        body: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "shortdesc": self.shortdesc or "",
            "is_identifier": self.identifier,
            "is_pii": False,
        }
        if self.mergeop and not self.identifier:
            body["mergeop"] = self.mergeop
        return body

    def describe(self) -> str:
        """``type string, identifier, mergeop latest`` for messages."""
        parts = [f"type {self.type}"]
        parts.append("identifier" if self.identifier else "not an identifier")
        if self.mergeop:
            parts.append(f"mergeop {self.mergeop}")
        return ", ".join(parts)


def lytics_field_name(entry: Any) -> str:
    """The Lytics field (stream key) of one ``fields`` entry, plain name or definition."""
    return str(entry["field"]) if isinstance(entry, Mapping) else str(entry)


def derive_type(prop: Mapping[str, Any] | None) -> str | None:
    """The Lytics type of a Singer property schema; None when it says nothing usable."""
    if not prop:
        return None
    raw = prop.get("type")
    types = {raw} if isinstance(raw, str) else set(raw or ())
    for branch in prop.get("anyOf") or ():
        if isinstance(branch, Mapping) and branch.get("type"):
            sub = branch["type"]
            types |= {sub} if isinstance(sub, str) else set(sub)
    types.discard("null")
    if len(types) != 1:
        return None
    (only,) = types
    if only == "string":
        formats = {prop.get("format")} | {
            b.get("format") for b in prop.get("anyOf") or () if isinstance(b, Mapping)
        }
        return "date" if formats & {"date-time", "date"} else "string"
    if only == "array":
        items = prop.get("items") or {}
        return "[]string" if isinstance(items, Mapping) and items.get("type") == "string" else None
    return _DERIVED_TYPES.get(only)


def field_definitions(
    singer_stream: str,
    entry: Mapping[str, Any] | None,
    *,
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
    singer_schema: Mapping[str, Any] | None = None,
) -> list[FieldDefinition]:
    """The user fields a ``streams`` entry defines ([] without ``fields``: nothing is mapped).

    ``defaults`` is the default entry of the same Singer stream, if any: a source field mapped onto
    the same Lytics field takes its definition from there, a source field mapped elsewhere only its
    type.
    """
    fields = (entry or {}).get("fields") or {}
    default_fields: Mapping[str, Any] = (defaults or {}).get("fields") or {}
    properties: Mapping[str, Any] = (singer_schema or {}).get("properties") or {}
    out: list[FieldDefinition] = []
    for source, raw in fields.items():
        where = f"streams.{singer_stream}.fields.{source}"
        given: dict[str, Any] = dict(raw) if isinstance(raw, Mapping) else {"field": raw}
        key = lytics_field_name(given)
        default = default_fields.get(source)
        merged: dict[str, Any] = {}
        if isinstance(default, Mapping):
            merged = {"type": default.get("type")}
            if default.get("field") == key:
                merged = dict(default)
        type_from = "default mapping" if merged.get("type") else "no known type"
        if "type" in given:
            type_from = "setting"
        merged.update(given)
        field_type = merged.get("type")
        if not field_type:
            field_type = derive_type(properties.get(source))
            type_from = "Singer schema" if field_type else "no known type"
        if field_type not in FIELD_TYPES:
            field_type = "string"
        identifier = bool(merged.get("identifier", False))
        mergeop = merged.get("mergeop") or None
        if identifier and mergeop:
            if "mergeop" in given and given.get("identifier", identifier):
                raise FieldSettingError(
                    f"{where}: an identifier field cannot have a mergeop (Lytics refuses it: "
                    "'Identifier Field cannot define a Merge Operation.'); remove `mergeop`"
                )
            mergeop = None
        if not key or not key.replace("_", "").isalnum() or not key.isascii():
            raise FieldSettingError(
                f"{where}: Lytics field {key!r} must be letters, digits and '_' only"
            )
        out.append(
            FieldDefinition(
                singer_stream=singer_stream,
                source=source,
                key=key,
                type=field_type,
                type_from=type_from,
                mergeop=mergeop,
                identifier=identifier,
                shortdesc=merged.get("shortdesc") or None,
            )
        )
    return out
