"""The Lytics stand-in's v2 Schema API (table ``user``), account setting and patches.

Follows Lytics' docs on stream fields becoming user fields (docs/design.md). Writes go to a
draft; ``GET`` of fields and mappings shows the draft (what the account holds, published or not),
``GET /v2/schema/user/compare`` what the draft changes, and ``POST /v2/schema/user/publish`` makes
it the published schema, which alone builds profiles. Accounts with ``enable_schema_patches`` refuse
direct writes and publishes; they take changes through a patch, applied (and so published) at once.

Every answer is ``(status, data)`` for success or ``(status, message)`` for an error; the HTTP
layer (:mod:`sandbox.lytics`) wraps them in Lytics' envelope.

Shapes follow Lytics' published v2 Schema API (``openapi/lytics-schema-api-openapi.yml`` in
``api-evangelist/lytics``): ``compare`` answers a ``models.VersionDiff`` (``diff`` of
``v2schemadiff.SchemaChange`` items, ``from`` and ``to`` ``models.SchemaResponse``), ``publish``
the new live ``models.SchemaResponse``, ``rank`` a ``models.RankList``; fields and mappings carry
``edit_status``. Where the definitions leave room: ``compare`` without a draft compares the live
version with the one before it (the defaults "latest" and "previous"); ``id_ranks`` None answers
404 at ``rank`` (an account without a ranking).
"""

from __future__ import annotations

import copy
import re
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from sandbox.lytics_profiles import parse_expr

SCHEMA_PREFIX = "/v2/schema/user"
PATCH_PREFIX = "/v2/schema/patch/user"
SETTING_PATH = "/api/account/setting/enable_schema_patches"
FIELD_TYPES = frozenset(
    {
        "string",
        "bool",
        "int",
        "number",
        "date",
        "[]string",
        "[]int",
        "[]time",
        "map[string]string",
        "map[string]int",
        "map[string]number",
        "map[string]bool",
        "map[string]time",
    }
)
MERGE_OPS = frozenset({"latest", "oldest", "max", "min", "sum", "count", "merge"})
#: Merge operations limited to some types (others apply to any type).
_OPS_FOR_TYPES = {
    "max": frozenset({"int", "number", "date"}),
    "min": frozenset({"int", "number", "date"}),
    "sum": frozenset({"int", "number"}),
}
_KEBAB = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_FIELD_KEYS = frozenset(
    {"id", "type", "shortdesc", "longdesc", "mergeop", "is_identifier", "is_pii"}
)
PATCH_ONLY = (
    "This account takes schema changes only through patches (enable_schema_patches is true): "
    "use POST /v2/schema/patch/user"
)

Answer = tuple[int, Any]


class SchemaRefused(Exception):  # noqa: N818 - carries an answer, as the API would give it
    """An error answer: HTTP status and Lytics' message."""

    def __init__(self, status: int, message: str) -> None:
        """Refuse with ``status`` and ``message``."""
        super().__init__(message)
        self.status = status
        self.message = message


def _new_id() -> str:
    return secrets.token_hex(12)


def _with_status(item: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
    """A draft field or mapping as listed: with ``edit_status`` (``published`` or ``draft``)."""
    out = copy.deepcopy(item)
    out["edit_status"] = "published" if live == item else "draft"
    return out


def _changes(
    subject: str, before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``v2schemadiff.SchemaChange`` items between two versions' fields or mappings (by id)."""
    old = {str(item["id"]): item for item in before}
    new = {str(item["id"]): item for item in after}
    out: list[dict[str, Any]] = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            out.append({"id": key, "subject": subject, "verb": "created", "diff": []})
        elif key not in new:
            out.append({"id": key, "subject": subject, "verb": "removed", "diff": []})
        elif old[key] != new[key]:
            props = sorted(set(old[key]) | set(new[key]))
            diff = [
                {"property": p, "from_val": old[key].get(p), "to_val": new[key].get(p)}
                for p in props
                if old[key].get(p) != new[key].get(p)
            ]
            out.append({"id": key, "subject": subject, "verb": "modified", "diff": diff})
    return out


@dataclass
class Patch:
    """A schema patch: the fields and mappings it will write when applied."""

    id: str
    tag: str
    description: str
    fields: list[dict[str, Any]] = field(default_factory=list)
    mappings: list[dict[str, Any]] = field(default_factory=list)
    applied: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The patch as the API shows it."""
        return {
            "id": self.id,
            "tag": self.tag,
            "description": self.description,
            "state": "applied" if self.applied else "open",
            "fields": copy.deepcopy(self.fields),
            "mappings": copy.deepcopy(self.mappings),
        }


def _check_tag(body: Any) -> tuple[str, str]:
    if not isinstance(body, dict):
        raise SchemaRefused(400, "the body must be a JSON object")
    tag, description = body.get("tag"), body.get("description")
    if not isinstance(tag, str) or not _KEBAB.match(tag):
        raise SchemaRefused(400, "tag is required and must be kebab-case (e.g. 'add-user-fields')")
    if not isinstance(description, str) or not description.strip():
        raise SchemaRefused(400, "description is required")
    return tag, description


def check_field(body: Any, field_id: str | None = None) -> dict[str, Any]:
    """A valid field definition from a request body (400 otherwise)."""
    if not isinstance(body, dict):
        raise SchemaRefused(400, "the body must be a JSON object")
    unknown = sorted(set(body) - _FIELD_KEYS)
    if unknown:
        raise SchemaRefused(400, f"unknown field keys: {', '.join(unknown)}")
    fid = body.get("id", field_id)
    if field_id is not None and fid != field_id:
        raise SchemaRefused(400, f"the body's id {fid!r} differs from the URL's {field_id!r}")
    if not isinstance(fid, str) or not fid:
        raise SchemaRefused(400, "id is required")
    if fid != fid.lower() or not re.fullmatch(r"[a-z0-9_]+", fid):
        raise SchemaRefused(400, f"Field id {fid!r} must be lowercase letters, digits and '_'")
    ftype = body.get("type")
    if ftype not in FIELD_TYPES:
        raise SchemaRefused(400, f"Field {fid!r}: unknown type {ftype!r}")
    mergeop = body.get("mergeop") or None
    identifier = bool(body.get("is_identifier", False))
    if identifier and mergeop:
        raise SchemaRefused(400, "Identifier Field cannot define a Merge Operation.")
    if mergeop is not None:
        if mergeop not in MERGE_OPS:
            raise SchemaRefused(400, f"Field {fid!r}: unknown merge operation {mergeop!r}")
        allowed = _OPS_FOR_TYPES.get(mergeop)
        if allowed is not None and ftype not in allowed:
            raise SchemaRefused(
                400, f"Field {fid!r}: merge operation {mergeop!r} does not apply to type {ftype!r}"
            )
    out: dict[str, Any] = {
        "id": fid,
        "type": ftype,
        "shortdesc": str(body.get("shortdesc") or ""),
        "is_identifier": identifier,
        "is_pii": bool(body.get("is_pii", False)),
    }
    if body.get("longdesc"):
        out["longdesc"] = str(body["longdesc"])
    if mergeop:
        out["mergeop"] = mergeop
    return out


def check_mapping(body: Any) -> dict[str, Any]:
    """A valid mapping from a request body (400 otherwise); its field is checked by the caller."""
    if not isinstance(body, dict):
        raise SchemaRefused(400, "the body must be a JSON object")
    for key in ("field", "stream", "expr"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise SchemaRefused(400, f"mapping: {key} is required")
    if parse_expr(body["expr"]) is None:
        raise SchemaRefused(400, f"mapping: cannot parse expression {body['expr']!r}")
    out = {k: body[k] for k in ("field", "stream", "expr")}
    if body.get("guard_expr"):
        out["guard_expr"] = str(body["guard_expr"])
    return out


class SchemaStore:
    """The account's ``user`` schema: draft, published version, patches and the patch setting."""

    def __init__(self, *, schema_patches: bool = False) -> None:
        """``schema_patches`` is the account setting ``enable_schema_patches``."""
        self.schema_patches = schema_patches
        #: Status answered to reads of the account setting (e.g. 403), None to answer it.
        self.setting_refusal: int | None = None
        self._lock = threading.Lock()
        self.draft_fields: dict[str, dict[str, Any]] = {}
        self.draft_mappings: dict[str, dict[str, Any]] = {}
        self.published_fields: dict[str, dict[str, Any]] = {}
        self.published_mappings: dict[str, dict[str, Any]] = {}
        #: Every publish (direct or applied patch): ``{"tag", "description", "version"}``.
        self.publishes: list[dict[str, Any]] = []
        self.patches: dict[str, Patch] = {}
        #: Every write to the schema: ``(method, path)`` of field/mapping/publish/patch calls.
        self.writes: list[tuple[str, str]] = []
        #: Published versions (``models.SchemaResponse``), oldest first.
        self.versions: list[dict[str, Any]] = []
        #: The identifier ranking served at ``GET .../rank`` (None: 404, no ranking).
        self.id_ranks: list[str] | None = []

    @property
    def version(self) -> int:
        """Number of publishes so far (0: nothing published)."""
        return len(self.publishes)

    def reset(self) -> None:
        """Forget every field, mapping, patch and publish (the account setting stays)."""
        with self._lock:
            for store in (
                self.draft_fields,
                self.draft_mappings,
                self.published_fields,
                self.published_mappings,
                self.patches,
            ):
                store.clear()
            self.publishes.clear()
            self.writes.clear()
            self.versions.clear()

    def published(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """A copy of the published fields and mappings."""
        with self._lock:
            return (
                copy.deepcopy(self.published_fields),
                copy.deepcopy(list(self.published_mappings.values())),
            )

    # -- API -----------------------------------------------------------------------------------
    def handle(self, method: str, path: str, body: Any) -> Answer:
        """Answer one schema or account-setting call (raises :class:`SchemaRefused`)."""
        with self._lock:
            if method == "POST":
                self.writes.append((method, path))
            if path == SETTING_PATH:
                return self._setting(method)
            if path.startswith(PATCH_PREFIX):
                return self._patch_call(method, path.removeprefix(PATCH_PREFIX), body)
            return self._schema_call(method, path.removeprefix(SCHEMA_PREFIX), body)

    def _setting(self, method: str) -> Answer:
        if method != "GET":
            raise SchemaRefused(405, f"method not allowed: {method}")
        if self.setting_refusal is not None:
            raise SchemaRefused(
                self.setting_refusal, "Forbidden: the token may not read account settings"
            )
        return 200, {"name": "enable_schema_patches", "value": self.schema_patches}

    def _schema_call(self, method: str, rest: str, body: Any) -> Answer:
        parts = [p for p in rest.split("/") if p]
        kind = parts[0] if parts else ""
        item = parts[1] if len(parts) == 2 else None
        if len(parts) > 2 or kind not in ("field", "mapping", "compare", "publish", "rank"):
            raise SchemaRefused(404, f"not found: {SCHEMA_PREFIX}{rest}")
        if kind == "rank":
            if method != "GET" or item is not None:
                # The ranking is a human decision: this stand-in serves it read-only.
                raise SchemaRefused(405, f"method not allowed: {method}")
            if self.id_ranks is None:
                raise SchemaRefused(404, "rank list not found for table user")
            return 200, {"fields": list(self.id_ranks), "edit_status": "published"}
        if method == "GET":
            if kind == "compare" and item is None:
                return 200, self._compare()
            if kind == "publish":
                raise SchemaRefused(405, "method not allowed: GET")
            draft, live = (
                (self.draft_fields, self.published_fields)
                if kind == "field"
                else (self.draft_mappings, self.published_mappings)
            )
            if item is None:
                return 200, [_with_status(v, live.get(k)) for k, v in sorted(draft.items())]
            if item not in draft:
                raise SchemaRefused(404, f"{kind} {item!r} not found")
            return 200, _with_status(draft[item], live.get(item))
        if method != "POST" or kind == "compare":
            raise SchemaRefused(405, f"method not allowed: {method}")
        if self.schema_patches:
            raise SchemaRefused(400, PATCH_ONLY)
        if kind == "publish":
            tag, description = _check_tag(body)
            return 200, self._publish(tag, description)
        if kind == "field":
            definition = check_field(body, item)
            if item is not None and item not in self.draft_fields:
                raise SchemaRefused(404, f"field {item!r} not found")
            self.draft_fields[definition["id"]] = definition
            return 200, _with_status(definition, self.published_fields.get(definition["id"]))
        mapping = _new = self._write_mapping(check_mapping(body), item, self.draft_fields)
        return 200, _with_status(_new, self.published_mappings.get(mapping["id"]))

    def _write_mapping(
        self, mapping: dict[str, Any], item: str | None, fields: dict[str, Any]
    ) -> dict[str, Any]:
        if mapping["field"] not in fields:
            raise SchemaRefused(
                400, f"mapping: field {mapping['field']!r} does not exist; create it first"
            )
        if item is not None:
            existing = self.draft_mappings.get(item)
            if existing is None:
                raise SchemaRefused(404, f"mapping {item!r} not found")
            if existing["stream"] != mapping["stream"]:
                raise SchemaRefused(400, "mapping: the stream of a mapping cannot change")
        mapping["id"] = item or _new_id()
        self.draft_mappings[mapping["id"]] = mapping
        return copy.deepcopy(mapping)

    def draft_pending(self) -> bool:
        """True when the draft differs from the live version."""
        return (self.draft_fields, self.draft_mappings) != (
            self.published_fields,
            self.published_mappings,
        )

    def _compare(self) -> dict[str, Any]:
        """A ``models.VersionDiff``: the draft against the live version, else the live version
        against the one before it (``version_id`` latest, ``compare_id`` previous)."""
        if self.draft_pending():
            to = self._version("draft", self.draft_fields, self.draft_mappings, self.version + 1)
            before = self.versions[-1] if self.versions else self._empty_version()
        elif self.versions:
            to = self.versions[-1]
            before = self.versions[-2] if len(self.versions) > 1 else self._empty_version()
        else:
            to = before = self._empty_version()
        changes = _changes("field", before["fields"], to["fields"])
        changes += _changes("mapping", before["mappings"], to["mappings"])
        return {"diff": changes, "from": copy.deepcopy(before), "to": copy.deepcopy(to)}

    def _empty_version(self) -> dict[str, Any]:
        return self._version("live", {}, {}, 0, version_id="")

    def _version(
        self,
        status: str,
        fields: dict[str, dict[str, Any]],
        mappings: dict[str, dict[str, Any]],
        number: int,
        *,
        version_id: str | None = None,
        tag: str = "",
        description: str = "",
    ) -> dict[str, Any]:
        """A ``models.SchemaResponse`` of table user."""
        return {
            "id": _new_id() if version_id is None else version_id,
            "table": "user",
            "status": status,
            "version_number": number,
            "parent_id": self.versions[-1]["id"] if self.versions else "",
            "tag": tag,
            "description": description,
            "fields": [copy.deepcopy(v) for _, v in sorted(fields.items())],
            "mappings": [copy.deepcopy(v) for _, v in sorted(mappings.items())],
            "ranks": {"id_ranks": {"fields": list(self.id_ranks or [])}, "id_config": []},
            "is_patch": False,
        }

    def _publish(self, tag: str, description: str) -> dict[str, Any]:
        """Make the draft live; answers the new live ``models.SchemaResponse``."""
        self.published_fields = copy.deepcopy(self.draft_fields)
        self.published_mappings = copy.deepcopy(self.draft_mappings)
        self.publishes.append({"tag": tag, "description": description, "version": self.version + 1})
        for older in self.versions:
            older["status"] = "archived"
        live = self._version(
            "live",
            self.published_fields,
            self.published_mappings,
            self.version,
            tag=tag,
            description=description,
        )
        self.versions.append(live)
        return copy.deepcopy(live)

    # -- patches ---------------------------------------------------------------------------------
    def _patch_call(self, method: str, rest: str, body: Any) -> Answer:
        parts = [p for p in rest.split("/") if p]
        if method == "GET" and len(parts) == 1 and parts[0] in self.patches:
            return 200, self.patches[parts[0]].as_dict()
        if method != "POST":
            raise SchemaRefused(405, f"method not allowed: {method}")
        if not parts:
            tag, description = _check_tag(body)
            patch = Patch(id=_new_id(), tag=tag, description=description)
            self.patches[patch.id] = patch
            return 200, patch.as_dict()
        if parts[0] not in self.patches:
            raise SchemaRefused(404, f"patch {parts[0]!r} not found")
        patch = self.patches[parts[0]]
        action = parts[1] if len(parts) == 2 else ""
        if patch.applied:
            raise SchemaRefused(400, f"patch {patch.id} is already applied")
        if action == "field":
            definition = check_field(body)
            patch.fields = [f for f in patch.fields if f["id"] != definition["id"]] + [definition]
            return 200, copy.deepcopy(definition)
        if action == "mapping":
            mapping = check_mapping(body)
            known = set(self.draft_fields) | {f["id"] for f in patch.fields}
            if mapping["field"] not in known:
                raise SchemaRefused(
                    400, f"mapping: field {mapping['field']!r} does not exist; add it first"
                )
            mapping["id"] = _new_id()
            patch.mappings.append(mapping)
            return 200, copy.deepcopy(mapping)
        if action == "apply":
            for definition in patch.fields:
                self.draft_fields[definition["id"]] = copy.deepcopy(definition)
            for mapping in patch.mappings:
                self.draft_mappings[mapping["id"]] = copy.deepcopy(mapping)
            patch.applied = True
            self._publish(patch.tag, patch.description)
            return 200, patch.as_dict()
        raise SchemaRefused(404, f"not found: {PATCH_PREFIX}{rest}")
