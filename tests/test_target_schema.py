"""target-lytics --schema-plan / --schema-publish against the Lytics stand-in, and the profiles
that the published mappings build from uploaded events."""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from tap_cordial_activity.streams import SCHEMA as ACTIVITY_SCHEMA
from target_lytics.schema_plan import (
    FieldStep,
    SchemaConflictError,
    SchemaPlan,
    StreamPlan,
    make_plan,
)
from target_lytics.schema_publish import publish_tag, run_schema_command
from target_lytics.target import DEFAULT_STREAMS, TargetLytics
from target_lytics.user_fields import (
    ACTIVITY_FIELDS,
    FieldSettingError,
    derive_type,
    field_definitions,
)
from test_target_lytics import activity_lines, cordial_records, run_target

from sandbox.httpbase import Fault
from sandbox.lytics import LyticsStandIn

FAST = {"retry_initial_delay_seconds": 0.01, "retry_max_delay_seconds": 0.05, "max_retries": 1}
DEFAULT_FIELD_IDS = [entry["field"] for entry in ACTIVITY_FIELDS.values()]


def config_for(lytics: LyticsStandIn, **overrides: Any) -> dict[str, Any]:
    return {"api_token": lytics.token, "api_url": lytics.url, **FAST, **overrides}


def schema(lytics: LyticsStandIn, *, publish: bool, **overrides: Any) -> str:
    """Run a schema command in-process; returns what it printed."""
    out = io.StringIO()
    target = TargetLytics(config=config_for(lytics, **overrides))
    run_schema_command(target, DEFAULT_STREAMS, publish=publish, out=out)
    return out.getvalue()


def cli(lytics: LyticsStandIn, flag: str, tmp_path: Path, **overrides: Any):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config_for(lytics, **overrides)))
    return subprocess.run(
        [sys.executable, "-m", "target_lytics.target", "--config", str(config_file), flag],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
        check=False,
    )


def create_field(lytics: LyticsStandIn, body: dict[str, Any]) -> None:
    response = requests.post(
        f"{lytics.url}/v2/schema/user/field",
        json=body,
        headers={"Authorization": lytics.token},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def publish_draft(lytics: LyticsStandIn) -> None:
    """Publish the draft, as the person who changed it would."""
    response = requests.post(
        f"{lytics.url}/v2/schema/user/publish",
        json={"tag": "colleague-change", "description": "a colleague's change"},
        headers={"Authorization": lytics.token},
        timeout=10,
    )
    assert response.status_code == 200, response.text


# -- field definitions ----------------------------------------------------------------------


def test_default_types_match_the_taps_singer_schema():
    """The default table agrees with what the tap's Singer schema would give."""
    plain = {"fields": {s: e["field"] for s, e in ACTIVITY_FIELDS.items()}}
    derived = field_definitions("activity", plain, singer_schema=ACTIVITY_SCHEMA)
    assert {d.id: d.type for d in derived} == {
        e["field"]: e["type"] for e in ACTIVITY_FIELDS.values()
    }
    assert {d.type_from for d in derived} == {"Singer schema"}
    assert derive_type({"type": ["integer", "null"]}) == "int"
    assert derive_type({"type": "array", "items": {"type": "string"}}) == "[]string"
    assert derive_type({"type": ["string", "integer"]}) is None


def test_plain_entries_take_the_default_definition_or_plain_string():
    defaults = DEFAULT_STREAMS["activity"]
    entry = {"fields": {"cID": "cr_contact_id", "time": "when_ts", "extra": "Cr_Extra"}}
    by_source = {d.source: d for d in field_definitions("activity", entry, defaults=defaults)}
    assert by_source["cID"].identifier is True  # same source, same field: the whole definition
    assert by_source["cID"].type_from == "default mapping"
    assert (by_source["time"].type, by_source["time"].mergeop) == ("date", None)  # type only
    assert by_source["time"].expr == "todate(when_ts)"
    extra = by_source["extra"]
    assert (extra.type, extra.type_from, extra.id, extra.expr) == (
        "string",
        "no known type",
        "cr_extra",
        "Cr_Extra",
    )
    bool_field = field_definitions("s", {"fields": {"b": {"field": "b", "type": "bool"}}})[0]
    assert bool_field.expr == "tobool(b)"


def test_an_identifier_with_a_mergeop_is_refused_before_any_call():
    entry = {"fields": {"id": {"field": "uid", "identifier": True, "mergeop": "latest"}}}
    with pytest.raises(FieldSettingError, match=r"streams\.orders\.fields\.id: an identifier"):
        field_definitions("orders", entry)


# -- plan and publish ------------------------------------------------------------------------


def test_plan_then_publish_then_publish_again_writes_nothing(lytics):
    plan = schema(lytics, publish=False)
    assert "stream activity -> Lytics stream cordial_activity" in plan
    assert "To create: 8 fields, 8 mappings; 0 fields exist; 0 conflicts." in plan
    assert re.search(
        r"create\s+cr_event_timestamp\s+type date, not an identifier, mergeop max", plan
    )
    assert "create   cr_contact_id <- cr_contact_id" in plan
    assert lytics.schema.writes == []

    published = schema(lytics, publish=True)
    assert "Created 8 fields and 8 mappings and published" in published
    fields = lytics.schema.published_fields
    assert sorted(fields) == sorted(DEFAULT_FIELD_IDS)
    assert fields["cr_contact_id"]["is_identifier"] is True
    assert "mergeop" not in fields["cr_contact_id"]
    assert (fields["cr_event_action"]["type"], fields["cr_event_action"]["mergeop"]) == (
        "string",
        "latest",
    )
    assert fields["cr_event_timestamp"]["mergeop"] == "max"
    assert fields["cr_event_timestamp"]["shortdesc"]
    exprs = {m["field"]: m["expr"] for m in lytics.schema.published_mappings.values()}
    assert exprs["cr_event_timestamp"] == "todate(cr_event_timestamp)"
    assert exprs["cr_first"] == "tobool(cr_first)"
    assert exprs["cr_event_action"] == "cr_event_action"
    assert {m["stream"] for m in lytics.schema.published_mappings.values()} == {"cordial_activity"}
    (publish,) = lytics.schema.publishes
    assert re.fullmatch(r"target-lytics-cordial-activity-\d{8}-\d{6}-[0-9a-f]{6}", publish["tag"])
    assert "target-lytics" in publish["description"]
    assert "cordial_activity" in publish["description"]

    writes = list(lytics.schema.writes)
    again = schema(lytics, publish=True)
    assert "Nothing to write" in again
    assert "8 fields exist; 0 conflicts" in again
    assert lytics.schema.writes == writes
    assert lytics.schema.version == 1


class DraftOnlyClient:
    """The Schema API calls make_plan reads, answering a draft as given."""

    def __init__(self, fields: list[dict[str, Any]], mappings: list[dict[str, Any]], diff):
        self._fields, self._mappings, self._diff = fields, mappings, diff

    def fields(self) -> dict[str, dict[str, Any]]:
        return {f["id"]: f for f in self._fields}

    def mappings(self) -> list[dict[str, Any]]:
        return self._mappings

    def compare(self) -> dict[str, Any]:
        to = {"status": "draft", "fields": self._fields, "mappings": self._mappings}
        return {"diff": self._diff, "from": {"status": "live"}, "to": to}

    def rank(self) -> list[str]:
        return []


def test_a_draft_change_is_ours_only_when_the_draft_holds_our_definition():
    entry = {"type": "string", "mergeop": "latest", "shortdesc": "ours"}
    names = ("f_a", "f_b", "f_c", "f_d", "f_e")
    streams = {"s": {"lytics_stream": "ls", "fields": {n: {"field": n, **entry} for n in names}}}
    ours = {"type": "string", "mergeop": "latest", "shortdesc": "ours", "is_pii": False}
    fields = [
        {"id": "f_a", **ours},  # created by our run, left unpublished
        {"id": "f_b", **ours, "edit_status": "draft"},  # modified back to ours
        {"id": "f_c", **ours, "shortdesc": "a colleague's words"},
        {"id": "f_e", **ours, "longdesc": "a colleague's longer words"},
        {"id": "stranger", "type": "int"},
    ]
    mappings = [
        {"id": "m1", "field": "f_a", "stream": "ls", "expr": "f_a"},
        {"id": "m2", "field": "f_b", "stream": "ls", "expr": "lower(f_b)"},
        {"id": "m3", "field": "f_c", "stream": "ls", "expr": "f_c", "guard_expr": "exists f_c"},
        {"id": "m4", "field": "f_e", "stream": "ls", "expr": "f_e"},
    ]
    diff = [
        {"subject": "field", "id": "f_a", "verb": "created"},
        {"subject": "field", "id": "f_b", "verb": "modified"},
        {"subject": "field", "id": "f_c", "verb": "modified"},
        {"subject": "field", "id": "f_d", "verb": "removed"},
        {"subject": "field", "id": "f_e", "verb": "modified"},
        {"subject": "field", "id": "stranger", "verb": "created"},
        {"subject": "mapping", "id": "m1", "verb": "created"},
        {"subject": "mapping", "id": "m2", "verb": "modified"},
        {"subject": "mapping", "id": "m3", "verb": "created"},
        {"subject": "mapping", "id": "m4", "verb": "modified"},
    ]
    plan = make_plan(DraftOnlyClient(fields, mappings, diff), streams, {})
    assert plan.draft_pending == [
        "field f_a (created)",
        "field f_b (modified)",
        "mapping f_a from stream ls (created)",
        "mapping f_e from stream ls (modified)",
    ]
    assert plan.draft_other == [
        "field f_c (modified)",
        "field f_d (removed)",
        "field f_e (modified)",
        "field stranger (created)",
        "mapping f_b from stream ls (modified)",
        "mapping f_c from stream ls (created)",
    ]


def test_two_publishes_within_a_second_get_different_tags():
    definition = field_definitions("activity", DEFAULT_STREAMS["activity"])[0]
    fields = [FieldStep(definition, "create")]
    plan = SchemaPlan([StreamPlan("activity", "cordial_activity", fields=fields)])
    moment = datetime.datetime(2026, 11, 20, 6, 0, 0, tzinfo=datetime.UTC)
    tags = {publish_tag(plan, moment)[0] for _ in range(20)}
    assert len(tags) == 20
    for tag in tags:
        assert re.fullmatch(r"target-lytics-cordial-activity-20261120-060000-[0-9a-f]{6}", tag)
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", tag)  # kebab-case, as Lytics asks


def test_a_conflicting_field_writes_nothing(lytics, tmp_path):
    create_field(lytics, {"id": "cr_event_timestamp", "type": "string", "mergeop": "latest"})
    plan = schema(lytics, publish=False)
    assert re.search(r"CONFLICT cr_event_timestamp .* Lytics has type string", plan)
    assert "7 fields, 8 mappings" in plan
    writes = list(lytics.schema.writes)
    with pytest.raises(SchemaConflictError) as caught:
        schema(lytics, publish=True)
    message = str(caught.value)
    assert message.startswith("Nothing was written to the Lytics schema.")
    assert "user field 'cr_event_timestamp' exists in Lytics with type string" in message
    assert "streams.activity.fields.time defines type date" in message
    assert "map 'time' onto another field name" in message
    assert lytics.schema.writes == writes
    result = cli(lytics, "--schema-publish", tmp_path)
    assert result.returncode == 1
    assert "Nothing was written to the Lytics schema." in result.stderr
    assert "Traceback" not in result.stderr
    assert lytics.schema.writes == writes
    assert lytics.schema.version == 0


def test_an_identifier_flag_differing_is_a_conflict(lytics):
    create_field(lytics, {"id": "cr_contact_id", "type": "string"})
    with pytest.raises(SchemaConflictError, match=r"not an identifier, but streams\.activity"):
        schema(lytics, publish=True)


def test_same_type_other_mergeop_is_left_as_it_is(lytics):
    create_field(lytics, {"id": "cr_event_action", "type": "string", "mergeop": "oldest"})
    # Published by whoever made it: left unpublished, it would be their draft change (refused).
    publish_draft(lytics)
    plan = schema(lytics, publish=True)
    assert re.search(
        r"as is\s+cr_event_action .*Lytics has mergeop oldest \(mapping: latest\), another "
        r"description; left as it is",
        plan,
    )
    assert "Created 7 fields and 8 mappings" in plan
    assert lytics.schema.published_fields["cr_event_action"]["mergeop"] == "oldest"


def test_patch_account_gets_one_patch_applied(lytics):
    lytics.set_options(schema_patches=True)
    out = schema(lytics, publish=True)
    assert re.search(r"Created 8 fields and 8 mappings through schema patch \w+ \(applied\)", out)
    paths = [path for _, path in lytics.schema.writes]
    assert not any(p.startswith("/v2/schema/user") for p in paths)
    assert paths[0] == "/v2/schema/patch/user"
    assert paths[-1].endswith("/apply")
    assert len(lytics.schema.patches) == 1
    assert sorted(lytics.schema.published_fields) == sorted(DEFAULT_FIELD_IDS)
    writes = list(lytics.schema.writes)
    assert "Nothing to write" in schema(lytics, publish=True)
    assert lytics.schema.writes == writes


def test_unreadable_account_setting_needs_schema_workflow(lytics, tmp_path):
    lytics.set_options(schema_patches=True, setting_refusal=403)
    result = cli(lytics, "--schema-publish", tmp_path)
    assert result.returncode == 1
    assert "Set schema_workflow to `direct`" in result.stderr
    assert "HTTP 403" in result.stderr
    assert re.search(r"request_id=[0-9a-f]{16}", result.stderr)
    assert "Traceback" not in result.stderr
    assert lytics.schema.version == 0
    out = schema(lytics, publish=True, schema_workflow="patch")
    assert "through schema patch" in out
    assert lytics.schema.version == 1


def test_direct_workflow_on_a_patch_account_ends_with_lytics_message(lytics, tmp_path):
    lytics.set_options(schema_patches=True)
    result = cli(lytics, "--schema-publish", tmp_path, schema_workflow="direct")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "creating user field 'cr_contact_id' failed with HTTP 400" in last
    assert re.search(r"Lytics: This account takes schema changes only through patches.*"
                     r"\(request_id=[0-9a-f]{16}\)$", last)  # fmt: skip
    assert "Traceback" not in result.stderr


def test_a_refused_schema_call_ends_the_run_with_lytics_message(lytics, tmp_path):
    lytics.inject("/v2/schema/user/field", Fault(status=403))
    result = cli(lytics, "--schema-plan", tmp_path)
    assert result.returncode == 1
    assert (
        "reading the user fields failed with HTTP 403: the token may not do this" in result.stderr
    )
    said = r"Lytics: injected fault: HTTP 403 \[FORBIDDEN-026\] \(request_id=[0-9a-f]{16}\)"
    assert re.search(said, result.stderr)
    assert "Traceback" not in result.stderr
    assert lytics.token not in result.stderr + result.stdout


def test_a_field_lytics_refuses_ends_with_its_message(lytics, tmp_path):
    streams = {"orders": {"fields": {"id": {"field": "order_id", "type": "string",
                                            "mergeop": "max"}}}}  # fmt: skip
    result = cli(lytics, "--schema-publish", tmp_path, streams=streams)
    assert result.returncode == 1
    assert "creating user field 'order_id' failed with HTTP 400" in result.stderr
    assert "merge operation 'max' does not apply to type 'string'" in result.stderr
    assert "Traceback" not in result.stderr


def test_streams_without_fields_are_listed_with_nothing_to_create(lytics):
    out = schema(lytics, publish=False, streams={"orders": {"lytics_stream": "shop_orders"}})
    assert "stream orders -> Lytics stream shop_orders" in out
    assert "no `fields` mapping" in out


def test_a_field_defined_twice_differently_is_a_settings_error(lytics):
    streams = {"other": {"fields": {"t": {"field": "cr_event_timestamp", "type": "string"}}}}
    with pytest.raises(FieldSettingError, match="cr_event_timestamp' is defined twice"):
        schema(lytics, publish=False, streams=streams)


# -- profiles from uploaded events -------------------------------------------------------------


def test_profiles_are_built_from_uploaded_events(lytics):
    assert "Created 8 fields" in schema(lytics, publish=True)
    records = cordial_records(300, seed=11)
    _, error = run_target(config_for(lytics), activity_lines(records))
    assert error is None
    by_contact: dict[str, list[dict]] = {}
    for record in records:
        by_contact.setdefault(record["cID"], []).append(record)
    contact, events = max(by_contact.items(), key=lambda kv: len(kv[1]))
    assert len(events) > 1
    response = requests.get(
        f"{lytics.url}/api/entity/user/cr_contact_id/{contact}",
        headers={"Authorization": lytics.token},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    profile = response.json()["data"]
    # The last event by time (ties: the later one) gives the latest values.
    last = max(enumerate(events), key=lambda ie: (ie[1]["time"], ie[0]))[1]
    last_time = max(e["time"] for e in events)
    assert profile["cr_contact_id"] == contact
    assert profile["cr_event_action"] == last["action"]
    assert profile["cr_system_event_id"] == last["_id"]
    assert profile["cr_event_timestamp"] == last_time.replace("+00:00", "Z")
    named = [e for e in events if e.get("message_name")]
    if named:
        latest_named = max(enumerate(named), key=lambda ie: (ie[1]["time"], ie[0]))[1]
        assert profile["cr_message_name"] == latest_named["message_name"]


def test_a_wrong_token_ends_with_lytics_message_and_keeps_the_token_secret(lytics, tmp_path):
    token = "wrong-" + os.urandom(8).hex()
    result = cli(lytics, "--schema-plan", tmp_path, api_token=token)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "reading the user fields failed with HTTP 401: the token is invalid" in last
    assert re.search(r"Lytics: Unauthorized.*\(request_id=[0-9a-f]{16}\)$", last)
    assert "Traceback" not in result.stderr
    assert token not in result.stderr + result.stdout
