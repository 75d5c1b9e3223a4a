"""``--schema-publish``: make the Lytics user schema match the plan.

Publishing creates what the plan lacks and publishes it with a kebab-case tag, or, on accounts that
take schema changes only as patches, does the same through one patch that it applies. A conflict
writes nothing. With nothing to create it writes nothing and does not publish, unless the draft
holds our own unpublished definitions of these fields or mappings (an earlier run refused at its
last step), which it then publishes. A draft that also holds changes that are not ours (a
colleague's field, or a colleague's edit of one of ours) is refused, naming each, with nothing
written: a publish makes the whole draft live.
``publish_others_changes`` true publishes them anyway.
"""

from __future__ import annotations

import re
import secrets
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from target_lytics import __version__
from target_lytics.client import LyticsClient
from target_lytics.schema_client import LyticsSchemaClient, SchemaApiError
from target_lytics.schema_plan import (
    SchemaConflictError,
    SchemaPlan,
    conflict_text,
    make_plan,
    render_plan,
)


class OthersChangesError(SchemaConflictError):
    """The draft holds someone else's unpublished changes, which a publish would make live."""


class TargetLike(Protocol):
    """What the schema commands use of the target: its settings and its upload client."""

    @property
    def config(self) -> Mapping[str, Any]:
        """The validated settings."""

    @property
    def streams_config(self) -> Mapping[str, Mapping[str, Any]]:
        """The ``streams`` setting merged over the defaults."""

    @property
    def client(self) -> LyticsClient:
        """The upload client (its URL, timeout and retry policy are reused)."""


def kebab(text: str) -> str:
    """Lowercase letters and digits joined by single dashes."""
    return "-".join(p for p in re.split(r"[^a-z0-9]+", text.lower()) if p)


def publish_tag(plan: SchemaPlan, now: datetime | None = None) -> tuple[str, str]:
    """A kebab-case tag and a description naming the target and the streams.

    The tag ends in six random hex digits: two publishes within one second (two projects, or a
    run again at once) would otherwise share a tag.
    """
    moment = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    streams = plan.lytics_streams()
    tag = kebab(f"target-lytics-{'-'.join(streams)}-{moment}-{secrets.token_hex(3)}")
    description = (
        f"target-lytics {__version__}: user fields and mappings for the Lytics stream(s) "
        f"{', '.join(streams)}"
    )
    return tag, description


def choose_workflow(client: LyticsSchemaClient, setting: str) -> str:
    """``direct`` or ``patch``: from ``schema_workflow``, or the account setting for ``auto``."""
    if setting in ("direct", "patch"):
        return setting
    try:
        return "patch" if client.schema_patches_enabled() else "direct"
    except SchemaApiError as exc:
        if exc.status not in (401, 403):
            raise
        raise SchemaApiError(
            "cannot tell whether this account takes schema changes as patches: reading the "
            f"account setting enable_schema_patches was refused ({exc}). Set schema_workflow to "
            "`direct` (fields and mappings written, then published) or `patch` (one schema patch, "
            "applied), as your Lytics account requires.",
            status=exc.status,
        ) from exc


def apply_plan(
    client: LyticsSchemaClient,
    plan: SchemaPlan,
    workflow_setting: str,
    out: TextIO,
    *,
    publish_others: bool = False,
) -> str:
    """Apply the plan; returns what was done in one line.

    Nothing is written on a conflict, nor over others' draft changes unless ``publish_others``.
    """
    if plan.conflicts:
        texts = " ".join(conflict_text(step) for step in plan.conflicts)
        raise SchemaConflictError(f"Nothing was written to the Lytics schema. {texts}")
    fields, maps = plan.steps("create")
    if not fields and not maps and not plan.draft_pending:
        return "Nothing to write: the Lytics schema already has every field and mapping."
    if plan.draft_other and not publish_others:
        raise OthersChangesError(
            "Nothing was written to the Lytics schema: its draft holds changes that are not "
            f"this target's ({'; '.join(plan.draft_other)}), and publishing makes the whole "
            "draft live. Ask whoever made them to publish or revert them, or set "
            "publish_others_changes to true to publish them with ours."
        )
    workflow = choose_workflow(client, workflow_setting)
    tag, description = publish_tag(plan)
    if workflow == "patch":
        patch_id = client.create_patch(tag, description)
        for step in fields:
            client.create_field(step.definition.field_body(), patch_id)
        for mapping in maps:
            client.create_mapping(mapping.body(), patch_id)
        client.apply_patch(patch_id)
        how = f"through schema patch {patch_id} (applied)"
    else:
        for step in fields:
            client.create_field(step.definition.field_body())
        for mapping in maps:
            client.create_mapping(mapping.body())
        client.publish(tag, description)
        how = "and published"
    for step in fields:
        print(f"created user field {step.definition.id} ({step.definition.describe()})", file=out)
    for mapping in maps:
        print(f"created mapping {mapping.definition.id} <- {mapping.definition.expr}", file=out)
    if plan.draft_other and workflow == "direct":
        print(f"also published others' changes: {'; '.join(plan.draft_other)}", file=out)
    return f"Created {len(fields)} fields and {len(maps)} mappings {how}, tag '{tag}'."


def run_schema_command(
    target: TargetLike,
    defaults: Mapping[str, Mapping[str, Any]],
    *,
    publish: bool,
    out: TextIO | None = None,
) -> None:
    """``--schema-plan`` (print the plan) or ``--schema-publish`` (print it, then apply it)."""
    out = out or sys.stdout
    upload_client = target.client
    client = LyticsSchemaClient(
        api_url=upload_client.api_url,
        api_token=str(target.config["api_token"]),
        timeout_seconds=upload_client.timeout_seconds,
        retry=upload_client.retry,
    )
    try:
        plan = make_plan(client, target.streams_config, defaults)
        render_plan(plan, client.api_url, out, hint=not publish)
        if publish:
            workflow = str(target.config.get("schema_workflow") or "auto")
            others = bool(target.config.get("publish_others_changes", False))
            done = apply_plan(client, plan, workflow, out, publish_others=others)
            print(f"\n{done}", file=out)
    finally:
        client.close()
