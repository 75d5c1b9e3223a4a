"""The Lytics stand-in's schema API, patches, profiles and slow-link timing."""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import pytest
import requests

from sandbox import __main__ as sandbox_cli
from sandbox.httpbase import Fault
from sandbox.lytics import LyticsStandIn

STREAM = "cordial_activity"
FIELDS: list[dict[str, Any]] = [
    {"id": "cr_contact_id", "type": "string", "is_identifier": True, "shortdesc": "Contact"},
    {"id": "cr_event_action", "type": "string", "mergeop": "latest"},
    {"id": "cr_first_action", "type": "string", "mergeop": "oldest"},
    {"id": "cr_event_timestamp", "type": "date", "mergeop": "max"},
    {"id": "cr_first_seen", "type": "date", "mergeop": "min"},
    {"id": "cr_opened", "type": "bool", "mergeop": "latest"},
    {"id": "cr_points", "type": "int", "mergeop": "sum"},
    {"id": "cr_events", "type": "int", "mergeop": "count"},
    {"id": "cr_actions", "type": "[]string", "mergeop": "merge"},
]
MAPPINGS = [
    ("cr_contact_id", "cr_contact_id"),
    ("cr_event_action", "cr_event_action"),
    ("cr_first_action", "cr_event_action"),
    ("cr_event_timestamp", "todate(cr_event_timestamp)"),
    ("cr_first_seen", "todate(cr_event_timestamp)"),
    ("cr_opened", "tobool(opened)"),
    ("cr_points", "points"),
    ("cr_events", "cr_event_action"),
    ("cr_actions", "set(cr_event_action)"),
]


@pytest.fixture
def http(lytics: LyticsStandIn) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = lytics.token
    return session


def call(
    http: requests.Session, lytics: LyticsStandIn, method: str, path: str, body: Any = None
) -> requests.Response:
    data = None if body is None else orjson.dumps(body)
    return http.request(method, lytics.url + path, data=data, timeout=30)


def ok(response: requests.Response) -> Any:
    assert response.status_code == 200, response.text
    payload = response.json()
    assert set(payload) == {"data", "status", "message", "request_id"}
    assert payload["status"] == 200
    return payload["data"]


def refused(response: requests.Response, status: int, text: str) -> None:
    """An error in the published ``models.ApiErrorResponse`` shape (the stand-in's default)."""
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"errors", "status", "request_id"}
    assert payload["status"] == status
    (error,) = payload["errors"]
    assert set(error) == {"code", "level", "message", "timestamp"}
    assert text in error["message"]
    assert len(payload["request_id"]) == 16


def publish_schema(http: requests.Session, lytics: LyticsStandIn) -> None:
    for definition in FIELDS:
        ok(call(http, lytics, "POST", "/v2/schema/user/field", definition))
    for field_id, expr in MAPPINGS:
        body = {"field": field_id, "stream": STREAM, "expr": expr}
        ok(call(http, lytics, "POST", "/v2/schema/user/mapping", body))
    body = {"tag": "cordial-fields", "description": "test"}
    ok(call(http, lytics, "POST", "/v2/schema/user/publish", body))


def send(http: requests.Session, lytics: LyticsStandIn, events: list[dict]) -> None:
    response = http.post(
        f"{lytics.url}/collect/json/{STREAM}",
        data=orjson.dumps(events),
        params={"timestamp_field": "cr_event_timestamp"},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def entity(http: requests.Session, lytics: LyticsStandIn, value: str) -> requests.Response:
    return call(http, lytics, "GET", f"/api/entity/user/cr_contact_id/{value}")


def test_fields_and_mappings_are_drafts_until_published(http, lytics):
    assert ok(call(http, lytics, "GET", "/v2/schema/user/field")) == []
    refused(call(http, lytics, "GET", "/v2/schema/user/field/cr_contact_id"), 404, "not found")
    created = ok(call(http, lytics, "POST", "/v2/schema/user/field", FIELDS[0]))
    assert created["id"] == "cr_contact_id"
    assert created["is_identifier"] is True
    assert ok(call(http, lytics, "GET", "/v2/schema/user/field/cr_contact_id")) == created
    mapping = ok(
        call(
            http,
            lytics,
            "POST",
            "/v2/schema/user/mapping",
            {"field": "cr_contact_id", "stream": STREAM, "expr": "cr_contact_id"},
        )
    )
    assert ok(call(http, lytics, "GET", "/v2/schema/user/mapping")) == [mapping]
    compare = ok(call(http, lytics, "GET", "/v2/schema/user/compare"))
    # A models.VersionDiff: the draft against the live version (none yet).
    assert compare["to"]["status"] == "draft"
    assert [(c["subject"], c["verb"], c["id"]) for c in compare["diff"]] == [
        ("field", "created", "cr_contact_id"),
        ("mapping", "created", mapping["id"]),
    ]
    assert [m["field"] for m in compare["to"]["mappings"]] == ["cr_contact_id"]
    assert lytics.schema.version == 0
    published = ok(
        call(http, lytics, "POST", "/v2/schema/user/publish", {"tag": "a-b", "description": "d"})
    )
    # A models.SchemaResponse of the new live version.
    assert (published["status"], published["version_number"], published["tag"]) == (
        "live",
        1,
        "a-b",
    )
    assert [f["id"] for f in published["fields"]] == ["cr_contact_id"]
    after = ok(call(http, lytics, "GET", "/v2/schema/user/compare"))
    # No draft: compare shows the live version against the one before it.
    assert after["to"]["status"] == "live"
    assert ok(call(http, lytics, "GET", "/v2/schema/user/field/cr_contact_id"))["edit_status"] == (
        "published"
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "text"),
    [
        ("/v2/schema/user/field", {"id": "CR_X", "type": "string"}, 400, "lowercase"),
        ("/v2/schema/user/field", {"id": "x", "type": "decimal"}, 400, "unknown type"),
        (
            "/v2/schema/user/field",
            {"id": "x", "type": "string", "is_identifier": True, "mergeop": "latest"},
            400,
            "Identifier Field cannot define a Merge Operation.",
        ),
        ("/v2/schema/user/field", {"id": "x", "type": "string", "mergeop": "max"}, 400, "max"),
        ("/v2/schema/user/field/absent", {"id": "absent", "type": "string"}, 404, "not found"),
        (
            "/v2/schema/user/mapping",
            {"field": "nope", "stream": STREAM, "expr": "nope"},
            400,
            "does not exist",
        ),
        ("/v2/schema/user/publish", {"tag": "Not Kebab", "description": "d"}, 400, "kebab"),
        ("/v2/schema/user/publish", {"tag": "ok-tag"}, 400, "description is required"),
    ],
)
def test_documented_validations(http, lytics, path, body, status, text):
    refused(call(http, lytics, "POST", path, body), status, text)
    assert lytics.schema.draft_fields == {}
    assert lytics.schema.version == 0


def test_mapping_stream_cannot_change(http, lytics):
    ok(call(http, lytics, "POST", "/v2/schema/user/field", {"id": "x", "type": "string"}))
    mapping = ok(
        call(
            http,
            lytics,
            "POST",
            "/v2/schema/user/mapping",
            {"field": "x", "stream": "a", "expr": "x"},
        )
    )
    path = f"/v2/schema/user/mapping/{mapping['id']}"
    refused(
        call(http, lytics, "POST", path, {"field": "x", "stream": "b", "expr": "x"}),
        400,
        "cannot change",
    )
    updated = ok(call(http, lytics, "POST", path, {"field": "x", "stream": "a", "expr": "set(x)"}))
    assert updated["expr"] == "set(x)"


def test_auth_and_refusals_use_the_error_shape(http, lytics):
    response = requests.get(f"{lytics.url}/v2/schema/user/field", timeout=10)
    refused(response, 401, "Unauthorized")
    refused(
        requests.get(f"{lytics.url}/api/entity/user/cr_contact_id/1", timeout=10), 401, "Unauth"
    )
    lytics.inject("/v2/schema", Fault(status=403))
    refused(call(http, lytics, "GET", "/v2/schema/user/field"), 403, "injected")


def test_account_setting_is_switchable_and_refusable(http, lytics):
    path = "/api/account/setting/enable_schema_patches"
    assert ok(call(http, lytics, "GET", path))["value"] is False
    lytics.set_options(schema_patches=True)
    assert ok(call(http, lytics, "GET", path))["value"] is True
    lytics.set_options(setting_refusal=403)
    refused(call(http, lytics, "GET", path), 403, "Forbidden")
    # Over the admin endpoint as well (the demo and benchmark are other processes).
    reply = requests.post(
        f"{lytics.url}/_sandbox/options", json={"setting_refusal": None}, timeout=10
    )
    assert reply.json()["setting_refusal"] is None
    assert ok(call(http, lytics, "GET", path))["value"] is True


def test_patch_accounts_take_changes_only_through_patches(http, lytics):
    lytics.set_options(schema_patches=True)
    refused(call(http, lytics, "POST", "/v2/schema/user/field", FIELDS[0]), 400, "patches")
    refused(
        call(http, lytics, "POST", "/v2/schema/user/publish", {"tag": "a", "description": "d"}),
        400,
        "patches",
    )
    refused(call(http, lytics, "POST", "/v2/schema/patch/user", {"tag": "A B"}), 400, "kebab")
    patch = ok(
        call(http, lytics, "POST", "/v2/schema/patch/user", {"tag": "p-1", "description": "d"})
    )
    base = f"/v2/schema/patch/user/{patch['id']}"
    mapping = {"field": "cr_contact_id", "stream": STREAM, "expr": "cr_contact_id"}
    refused(call(http, lytics, "POST", base + "/mapping", mapping), 400, "does not exist")
    ok(call(http, lytics, "POST", base + "/field", FIELDS[0]))
    ok(call(http, lytics, "POST", base + "/mapping", mapping))
    assert ok(call(http, lytics, "GET", "/v2/schema/user/field")) == []  # not applied yet
    applied = ok(call(http, lytics, "POST", base + "/apply"))
    assert applied["state"] == "applied"
    assert lytics.schema.version == 1
    assert [f["id"] for f in ok(call(http, lytics, "GET", "/v2/schema/user/field"))] == [
        "cr_contact_id"
    ]
    refused(call(http, lytics, "POST", base + "/apply"), 400, "already applied")


def test_profiles_merge_events_by_identifier_with_each_merge_op(http, lytics):
    early = [
        {"cr_contact_id": "c1", "cr_event_action": "open", "opened": "1", "points": 2,
         "cr_event_timestamp": "2026-01-02T00:00:00Z"},
    ]  # fmt: skip
    send(http, lytics, early)  # before the publish: applied once published
    refused(entity(http, lytics, "c1"), 400, "not an identifier")
    publish_schema(http, lytics)
    later = [
        {"cr_contact_id": "c1", "cr_event_action": "click", "opened": "false", "points": 3,
         "cr_event_timestamp": "2026-01-03T00:00:00Z"},
        # Older in event time, arriving last: not the latest action.
        {"cr_contact_id": "c1", "cr_event_action": "message-sent", "points": 5,
         "cr_event_timestamp": "2026-01-01T00:00:00Z"},
        {"cr_contact_id": "c2", "cr_event_action": "optout",
         "cr_event_timestamp": "2026-01-05T00:00:00Z"},
        {"cr_event_action": "orphan", "cr_event_timestamp": "2026-01-05T00:00:00Z"},
    ]  # fmt: skip
    send(http, lytics, later)
    profile = ok(entity(http, lytics, "c1"))
    assert profile == {
        "cr_contact_id": "c1",
        "cr_event_action": "click",
        "cr_first_action": "message-sent",
        "cr_event_timestamp": "2026-01-03T00:00:00Z",
        "cr_first_seen": "2026-01-01T00:00:00Z",
        "cr_opened": False,
        "cr_points": 10,
        "cr_events": 3,
        "cr_actions": ["message-sent", "open", "click"],
    }
    assert ok(entity(http, lytics, "c2"))["cr_event_action"] == "optout"
    refused(entity(http, lytics, "c3"), 404, "not found")
    listing = requests.get(f"{lytics.url}/_sandbox/profiles?limit=1", timeout=10).json()
    assert listing["total"] == 2
    assert listing["identifier_fields"] == ["cr_contact_id"]
    assert listing["profiles"] == [{"events": 3, "fields": profile}]


def test_latency_is_added_to_each_request(http, lytics):
    lytics.set_options(latency_seconds=0.3)
    started = time.monotonic()
    send(http, lytics, [{"a": 1}])
    assert time.monotonic() - started >= 0.3
    # Admin calls pay no latency; options are settable over HTTP.
    reply = requests.post(f"{lytics.url}/_sandbox/options", json={"latency_seconds": 0}, timeout=10)
    assert reply.json()["latency_seconds"] == 0


def test_upload_bandwidth_paces_the_body_read():
    with LyticsStandIn(upload_bytes_per_second=200_000) as lytics:
        body = orjson.dumps([{"pad": "x" * 1000} for _ in range(100)])  # ~100 KB: >= 0.5 s
        started = time.monotonic()
        response = requests.post(
            f"{lytics.url}/collect/json/s",
            data=body,
            headers={"Authorization": lytics.token},
            timeout=30,
        )
        assert response.status_code == 200
        assert time.monotonic() - started >= len(body) / 200_000 * 0.95
        assert lytics.counts == {"s": 100}
        reply = requests.post(
            f"{lytics.url}/_sandbox/options", json={"upload_bytes_per_second": None}, timeout=10
        )
        assert reply.json()["upload_bytes_per_second"] is None
        refused_reply = requests.post(
            f"{lytics.url}/_sandbox/options", json={"upload_bytes_per_second": 0}, timeout=10
        )
        assert refused_reply.status_code == 400


def test_show_prints_profiles(http, lytics, tmp_path, capsys):
    (tmp_path / "sandbox.json").write_text(
        json.dumps({"lytics_admin": lytics.base_url + lytics.ADMIN_PREFIX})
    )
    env_arg = ["--env-file", str(tmp_path / "env.sh")]
    send(
        http,
        lytics,
        [
            {"cr_contact_id": "c1", "cr_event_action": "open", "cr_message_name": "Spring",
             "cr_event_timestamp": "2026-01-02T00:00:00Z"},
            {"cr_contact_id": "c1", "cr_event_action": "click",
             "cr_event_timestamp": "2026-01-03T00:00:00Z"},
        ],
    )  # fmt: skip
    assert sandbox_cli.main(["show", *env_arg]) == 0
    assert "no schema is published" in capsys.readouterr().out
    publish_schema(http, lytics)
    ok(
        call(
            http,
            lytics,
            "POST",
            "/v2/schema/user/field",
            {"id": "cr_message_name", "type": "string"},
        )
    )
    body = {"field": "cr_message_name", "stream": STREAM, "expr": "cr_message_name"}
    ok(call(http, lytics, "POST", "/v2/schema/user/mapping", body))
    ok(call(http, lytics, "POST", "/v2/schema/user/publish", {"tag": "two", "description": "d"}))
    assert sandbox_cli.main(["show", *env_arg]) == 0
    out = capsys.readouterr().out
    assert "user profiles (schema version 2, merged by cr_contact_id): 1 in all" in out
    assert (
        "contact c1: last action click, last event 2026-01-03T00:00:00Z, message Spring (2 events)"
        in out
    )


def test_upload_bandwidth_paces_chunked_bodies_too():
    with LyticsStandIn(upload_bytes_per_second=100_000) as lytics:
        parts = [b"[", b",".join(orjson.dumps({"pad": "y" * 1000}) for _ in range(40)), b"]"]
        size = sum(len(p) for p in parts)  # ~40 KB: >= 0.4 s
        started = time.monotonic()
        response = requests.post(
            f"{lytics.url}/collect/json/s",
            data=iter(parts),  # a generator body goes out chunked
            headers={"Authorization": lytics.token},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert time.monotonic() - started >= size / 100_000 * 0.95
        assert lytics.counts == {"s": 40}
