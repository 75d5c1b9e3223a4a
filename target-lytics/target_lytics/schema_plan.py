"""The plan behind ``--schema-plan``: the account's user schema compared with the mapping.

The user fields that the ``streams`` setting defines (see :mod:`target_lytics.user_fields`) are
compared with the account's fields and mappings:

- a missing field or mapping is to be created;
- a field with the same type and identifier flag exists: it is kept as it is, and a different
  merge op or description is reported, not changed;
- a field with another type or identifier flag is a conflict: publishing then writes nothing;
- a mapping of the field from the same stream with another expression is kept as it is.

The draft's unpublished changes come from ``GET /v2/schema/user/compare``, a ``models.VersionDiff``
(``openapi/lytics-schema-api-openapi.yml`` in ``api-evangelist/lytics``): each
``v2schemadiff.SchemaChange`` is read by ``subject`` and ``verb``; a field change's ``id`` is the
field's name, a mapping change's ``id`` the mapping's id, looked up in ``to.mappings`` (``from``
for a removal). Only a diff whose ``to`` is the draft (``status`` "draft", or no status given)
is pending: without a draft, compare shows the live version against the one before it. A change
is ours only when our own run could have made it: ``created`` or ``modified`` for a field or
mapping the definitions define (same field id; same field and stream) whose draft definition
is ours (every key of :meth:`FieldDefinition.field_body` / :meth:`MappingStep.body` the same,
and no ``longdesc`` / ``guard_expr``, which we never set). Every other change (a colleague's
field, a colleague's edit of one of ours, a removal, a rank change) is someone else's, and
``--schema-publish`` refuses to publish it unless told to. The identifier ranking
(``GET /v2/schema/user/rank``, a ``models.RankList``) is shown, never changed.

Reading the plan writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from target_lytics.errors import LyticsError
from target_lytics.schema_client import LyticsSchemaClient, SchemaApiError
from target_lytics.user_fields import FieldDefinition, FieldSettingError, field_definitions


class SchemaConflictError(LyticsError):
    """The account's schema disagrees with the mapping in a way that publishing must not fix."""


@dataclass
class FieldStep:
    """One user field: what the account has and what to do."""

    definition: FieldDefinition
    #: "create", "exists" (matches), "kept" (same type and identifier, other details) or "conflict".
    action: str
    existing: Mapping[str, Any] | None = None
    note: str = ""


@dataclass
class MappingStep:
    """One mapping from a Lytics stream key to a user field."""

    definition: FieldDefinition
    stream: str
    #: "create", "exists" or "kept" (another expression from the same stream).
    action: str
    existing_expr: str | None = None

    def body(self) -> dict[str, Any]:
        """The body of ``POST /v2/schema/user/mapping``."""
        return {"field": self.definition.id, "stream": self.stream, "expr": self.definition.expr}


@dataclass
class StreamPlan:
    """The plan for one configured Singer stream."""

    singer_stream: str
    lytics_stream: str
    fields: list[FieldStep] = field(default_factory=list)
    mappings: list[MappingStep] = field(default_factory=list)


@dataclass
class SchemaPlan:
    """What publishing would do, per stream."""

    streams: list[StreamPlan]
    #: Unpublished draft changes our run made (our definitions; a publish completes them).
    draft_pending: list[str] = field(default_factory=list)
    #: Unpublished draft changes that are not ours, also to our fields (a publish includes them).
    draft_other: list[str] = field(default_factory=list)
    #: The identifier ranking (``RankList.fields``); None when the account has none (404).
    ranking: list[str] | None = None
    #: Why the ranking could not be read, when it could not.
    ranking_problem: str = ""

    def steps(self, action: str) -> tuple[list[FieldStep], list[MappingStep]]:
        """Field and mapping steps with ``action``; a field shared by streams appears once."""
        seen: set[str] = set()
        fields = []
        for stream in self.streams:
            for step in stream.fields:
                if step.action == action and step.definition.id not in seen:
                    seen.add(step.definition.id)
                    fields.append(step)
        maps = [m for s in self.streams for m in s.mappings if m.action == action]
        return fields, maps

    @property
    def conflicts(self) -> list[FieldStep]:
        """The fields that stop a publish."""
        return self.steps("conflict")[0]

    @property
    def has_writes(self) -> bool:
        """True when publishing would create something."""
        fields, maps = self.steps("create")
        return bool(fields or maps)

    def lytics_streams(self) -> list[str]:
        """The Lytics streams whose keys are mapped."""
        return sorted({s.lytics_stream for s in self.streams if s.fields})


def desired_fields(
    streams_config: Mapping[str, Mapping[str, Any]],
    defaults: Mapping[str, Mapping[str, Any]],
) -> list[tuple[str, str, list[FieldDefinition]]]:
    """``(singer stream, lytics stream, definitions)`` per configured stream, by name."""
    out = []
    for singer_stream in sorted(streams_config):
        entry = streams_config[singer_stream] or {}
        lytics_stream = str(entry.get("lytics_stream") or singer_stream)
        definitions = field_definitions(singer_stream, entry, defaults=defaults.get(singer_stream))
        out.append((singer_stream, lytics_stream, definitions))
    by_id: dict[str, FieldDefinition] = {}
    for _, _, definitions in out:
        for definition in definitions:
            other = by_id.setdefault(definition.id, definition)
            if (other.type, other.identifier) != (definition.type, definition.identifier):
                raise FieldSettingError(
                    f"user field '{definition.id}' is defined twice in the streams setting with "
                    f"different types or identifier flags: {other.describe()} (stream "
                    f"'{other.singer_stream}', source '{other.source}') and "
                    f"{definition.describe()} (stream '{definition.singer_stream}', source "
                    f"'{definition.source}'); make them agree"
                )
    return out


def _field_step(definition: FieldDefinition, existing: Mapping[str, Any] | None) -> FieldStep:
    if existing is None:
        return FieldStep(definition, "create")
    same_type = existing.get("type") == definition.type
    same_identifier = bool(existing.get("is_identifier")) == definition.identifier
    if not (same_type and same_identifier):
        return FieldStep(definition, "conflict", existing)
    differences = []
    if (existing.get("mergeop") or None) != (None if definition.identifier else definition.mergeop):
        differences.append(
            f"mergeop {existing.get('mergeop') or 'none'} (mapping: {definition.mergeop or 'none'})"
        )
    if (existing.get("shortdesc") or "") != (definition.shortdesc or ""):
        differences.append("another description")
    if differences:
        note = "Lytics has " + ", ".join(differences) + "; left as it is"
        return FieldStep(definition, "kept", existing, note)
    return FieldStep(definition, "exists", existing)


def make_plan(
    client: LyticsSchemaClient,
    streams_config: Mapping[str, Mapping[str, Any]],
    defaults: Mapping[str, Mapping[str, Any]],
) -> SchemaPlan:
    """Read the account's schema and compare it with the mapping (writes nothing)."""
    wanted = desired_fields(streams_config, defaults)
    existing_fields = client.fields()
    existing_mappings = client.mappings()
    streams: list[StreamPlan] = []
    # What our run would write, per field id and per (field, stream): a draft change is ours
    # only when the draft holds one of these.
    our_fields: dict[str, list[dict[str, Any]]] = {}
    our_mappings: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for singer_stream, lytics_stream, definitions in wanted:
        plan = StreamPlan(singer_stream, lytics_stream)
        for definition in definitions:
            plan.fields.append(_field_step(definition, existing_fields.get(definition.id)))
            our_fields.setdefault(definition.id, []).append(definition.field_body())
            exprs = [
                str(m.get("expr"))
                for m in existing_mappings
                if m.get("field") == definition.id and m.get("stream") == lytics_stream
            ]
            if definition.expr in exprs:
                action, other = "exists", None
            elif exprs:
                action, other = "kept", exprs[0]
            else:
                action, other = "create", None
            step = MappingStep(definition, lytics_stream, action, other)
            plan.mappings.append(step)
            our_mappings.setdefault((definition.id, lytics_stream), []).append(step.body())
        streams.append(plan)
    result = SchemaPlan(streams)
    if any(plan.fields for plan in streams):
        drafts = _DraftDefinitions(existing_fields, existing_mappings, our_fields, our_mappings)
        _read_draft(client, result, drafts)
        try:
            result.ranking = client.rank()
        except SchemaApiError as exc:
            if exc.status is None or exc.status < 400:
                raise  # not Lytics' answer (a wrong api_url): the run must not go on
            result.ranking_problem = str(exc)
    return result


#: Keys our run never sets: a draft definition holding one is not ours.
_FIELD_KEYS_NEVER_SET = ("longdesc",)
_MAPPING_KEYS_NEVER_SET = ("guard_expr",)


def _is_ours(
    draft: Mapping[str, Any] | None,
    bodies: Sequence[Mapping[str, Any]],
    never_set: tuple[str, ...],
) -> bool:
    """Whether the draft's definition is one our run writes: each key of a body the same."""
    if draft is None or any(draft.get(key) for key in never_set):
        return False
    return any(all(_same(draft.get(key), value) for key, value in b.items()) for b in bodies)


def _same(have: Any, want: Any) -> bool:
    """A draft value against ours; an absent value is Lytics' empty one (false, "")."""
    if isinstance(want, bool):
        return bool(have) == want
    if isinstance(want, str) and have is None:
        return want == ""
    return bool(have == want)


@dataclass
class _DraftDefinitions:
    """What the account holds (the draft's fields and mappings) and what our run writes."""

    fields: Mapping[str, Mapping[str, Any]]
    mappings: Sequence[Mapping[str, Any]]
    our_fields: Mapping[str, Sequence[Mapping[str, Any]]]
    our_mappings: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]]


def _read_draft(client: LyticsSchemaClient, plan: SchemaPlan, drafts: _DraftDefinitions) -> None:
    """Sort the draft's unpublished changes (a ``models.VersionDiff``) into ours and others'."""
    version_diff = client.compare()
    to = _version(version_diff, "to")
    if to.get("status") not in (None, "draft"):
        return  # no draft: the diff is of versions already published
    before = _version(version_diff, "from")
    # "to" wins: a field or mapping as the draft has it; the account's lists when "to" has none.
    fields_by_id: dict[str, Mapping[str, Any]] = dict(drafts.fields)
    for item in to.get("fields") or []:
        if isinstance(item, Mapping) and item.get("id") is not None:
            fields_by_id[str(item["id"])] = item
    mappings_by_id: dict[str, Mapping[str, Any]] = {}
    for mappings in (before.get("mappings") or [], drafts.mappings, to.get("mappings") or []):
        for mapping in mappings:
            if isinstance(mapping, Mapping) and mapping.get("id") is not None:
                mappings_by_id[str(mapping["id"])] = mapping
    for change in version_diff.get("diff") or []:
        if not isinstance(change, Mapping):
            continue
        subject, verb, change_id = change.get("subject"), change.get("verb"), change.get("id")
        # Our run only creates; "modified" is ours when the draft now holds our definition.
        ours_verb = verb in ("created", "modified")
        if subject == "field":
            label = f"field {change_id} ({verb})"
            bodies = drafts.our_fields.get(str(change_id), [])
            is_ours = ours_verb and _is_ours(
                fields_by_id.get(str(change_id)), bodies, _FIELD_KEYS_NEVER_SET
            )
        elif subject == "mapping":
            mapping = mappings_by_id.get(str(change_id), {})
            target, stream = mapping.get("field"), mapping.get("stream")
            label = f"mapping {target or change_id} from stream {stream or '?'} ({verb})"
            bodies = drafts.our_mappings.get((str(target), str(stream)), [])
            is_ours = ours_verb and _is_ours(mapping, bodies, _MAPPING_KEYS_NEVER_SET)
        else:  # "rank", "rank_setting": the ranking is a human decision, never ours
            label = f"{subject} {change_id or ''}".rstrip() + f" ({verb})"
            is_ours = False
        (plan.draft_pending if is_ours else plan.draft_other).append(label)


def _version(version_diff: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``from`` or ``to`` of a VersionDiff (a ``models.SchemaResponse``), empty when absent."""
    value = version_diff.get(key)
    return value if isinstance(value, Mapping) else {}


def render_identity(plan: SchemaPlan, out: TextIO) -> None:
    """Where each identifier field of ours stands in the account's identifier ranking."""
    identifiers = sorted(
        {
            d.id
            for stream in plan.streams
            for step in stream.fields
            for d in [step.definition]
            if d.identifier
        }
    )
    if not identifiers:
        return
    check = (
        "An admin should check the ranking (GET /v2/schema/user/rank) and the identifier "
        "settings (GET /v2/schema/user/idconfig); this target never changes them."
    )
    if plan.ranking_problem:
        print(f"Identifier ranking: not read ({plan.ranking_problem}). {check}", file=out)
        return
    ranking = plan.ranking or []
    shown = ", ".join(ranking) if ranking else "empty"
    print(
        "Identifier ranking: "
        + ("none (Lytics answered 404)" if plan.ranking is None else shown)
        + ".",
        file=out,
    )
    for name in identifiers:
        if name in ranking:
            where = f"ranked {ranking.index(name) + 1} of {len(ranking)}"
        else:
            where = (
                "not in the ranking: whether Lytics merges profiles on an unranked identifier "
                "is unconfirmed"
            )
        print(f"  identifier {name}: {where}.", file=out)
    print(f"  {check}", file=out)


def render_plan(plan: SchemaPlan, api_url: str, out: TextIO, *, hint: bool = True) -> None:
    """Print the plan: per stream, fields and mappings to create, existing, conflicting."""
    print(
        f"Lytics user schema (table user) at {api_url}, compared with the streams setting:",
        file=out,
    )
    labels = {"create": "create", "exists": "exists", "kept": "as is", "conflict": "CONFLICT"}
    for stream in plan.streams:
        print(f"\nstream {stream.singer_stream} -> Lytics stream {stream.lytics_stream}", file=out)
        if not stream.fields:
            print(
                "  no `fields` mapping: events are sent as they are and feed no user field",
                file=out,
            )
            continue
        print("  user fields:", file=out)
        for step in stream.fields:
            d = step.definition
            line = f"    {labels[step.action]:<8} {d.id:<28} {d.describe()}"
            if d.type_from != "setting":
                line += f" (type from {d.type_from})"
            if step.action == "conflict" and step.existing is not None:
                line += f"; Lytics has {describe_existing(step.existing)}"
            elif step.note:
                line += f"; {step.note}"
            print(line, file=out)
        print(f"  mappings from stream {stream.lytics_stream}:", file=out)
        for mapping in stream.mappings:
            d = mapping.definition
            line = f"    {labels[mapping.action]:<8} {d.id} <- {d.expr}"
            if mapping.action == "kept":
                line += f" (Lytics maps it as {mapping.existing_expr}; left as it is)"
            print(line, file=out)
    fields, maps = plan.steps("create")
    exists = len(plan.steps("exists")[0]) + len(plan.steps("kept")[0])
    print(
        f"\nTo create: {len(fields)} fields, {len(maps)} mappings; {exists} fields exist; "
        f"{len(plan.conflicts)} conflicts.",
        file=out,
    )
    if plan.draft_pending:
        print(f"Unpublished in the draft: {', '.join(plan.draft_pending)}.", file=out)
    if plan.draft_other:
        print(
            "The draft also holds changes that are not ours (a publish would make them live "
            "too; --schema-publish refuses unless publish_others_changes is true):",
            file=out,
        )
        for label in plan.draft_other:
            print(f"  {label}", file=out)
    render_identity(plan, out)
    if plan.conflicts:
        print("Publishing would write nothing until the conflicts are resolved:", file=out)
        for step in plan.conflicts:
            print(f"  {conflict_text(step)}", file=out)
    elif (plan.has_writes or plan.draft_pending) and hint:
        print(
            "Run with --schema-publish (meltano: target-lytics:schema-publish) to apply it.",
            file=out,
        )
    elif not (plan.has_writes or plan.draft_pending):
        print("Nothing to do: the account's schema already maps these fields.", file=out)


def describe_existing(existing: Mapping[str, Any]) -> str:
    """A field as Lytics holds it, in the words of :meth:`FieldDefinition.describe`."""
    parts = [f"type {existing.get('type')}"]
    parts.append("identifier" if existing.get("is_identifier") else "not an identifier")
    if existing.get("mergeop"):
        parts.append(f"mergeop {existing['mergeop']}")
    return ", ".join(parts)


def conflict_text(step: FieldStep) -> str:
    """The conflict of one field: both definitions and the ways out."""
    d = step.definition
    return (
        f"user field '{d.id}' exists in Lytics with {describe_existing(step.existing or {})}, "
        f"but streams.{d.singer_stream}.fields.{d.source} defines {d.describe()}. Either set "
        f"its `type`/`identifier` in the streams setting to Lytics' definition, map "
        f"'{d.source}' onto another field name, or change the field in Lytics and publish."
    )
