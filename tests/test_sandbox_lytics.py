"""The Lytics stand-in: auth, envelope, dryrun, timestamp_field, limits, rejections, faults."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import orjson
import pytest
import requests

from sandbox.httpbase import Fault
from sandbox.lytics import MAX_BODY_BYTES, LyticsStandIn, holds_array_of_objects


@pytest.fixture
def http(lytics: LyticsStandIn) -> requests.Session:
    """A session sending the raw token, as Lytics expects."""
    session = requests.Session()
    session.headers["Authorization"] = lytics.token
    return session


def post(
    http: requests.Session, lytics: LyticsStandIn, stream: str, payload: Any, **params: str
) -> requests.Response:
    return http.post(
        f"{lytics.url}/collect/json/{stream}", data=orjson.dumps(payload), params=params, timeout=30
    )


def assert_error_shape(response: requests.Response, status: int) -> str:
    """The published ``models.ApiErrorResponse`` (the default ``error_shape``); its message."""
    assert response.status_code == status
    payload = response.json()
    assert set(payload) == {"errors", "status", "request_id"}
    assert payload["status"] == status
    (error,) = payload["errors"]
    assert error["message"]
    assert error["code"].count("-") == 1
    assert len(payload["request_id"]) == 16
    return str(error["message"])


def test_error_shape_option_gives_the_older_top_level_message(lytics: LyticsStandIn) -> None:
    url = f"{lytics.url}/collect/json/s"
    published = requests.post(url, json=[{"a": 1}], timeout=30).json()
    assert published["errors"][0]["code"] == "UNAUTHORIZED-017"
    lytics.set_options(error_shape="message")
    older = requests.post(url, json=[{"a": 1}], timeout=30).json()
    assert set(older) == {"status", "message", "request_id"}
    assert "token" in older["message"]
    with pytest.raises(ValueError, match="error_shape"):
        lytics.set_options(error_shape="xml")


@pytest.mark.parametrize(
    ("kind", "status", "content_type", "head"),
    [
        ("html_login", 200, "text/html", b"<!doctype html>"),
        ("empty", 200, "application/json", b""),
        ("status_in_body", 200, "application/json", b'{"status":400'),
        ("redirect", 302, "text/html", b""),
        ("text_plain", 200, "text/plain", b"OK"),
    ],
)
def test_wrong_answer_option_answers_as_a_server_that_is_not_lytics(
    http: requests.Session,
    lytics: LyticsStandIn,
    kind: str,
    status: int,
    content_type: str,
    head: bytes,
) -> None:
    lytics.set_options(wrong_answer=kind)
    for response in (
        http.post(f"{lytics.url}/collect/json/s", json=[{"a": 1}], allow_redirects=False),
        http.get(f"{lytics.url}/v2/schema/user/field", timeout=30, allow_redirects=False),
    ):
        assert response.status_code == status
        assert response.headers["Content-Type"].startswith(content_type)
        assert response.content.startswith(head)
    assert lytics.total() == 0


def test_short_count_option_counts_and_stores_one_event_fewer(
    http: requests.Session, lytics: LyticsStandIn
) -> None:
    lytics.set_options(wrong_answer="short_count")
    answer = post(http, lytics, "s", [{"a": 1}, {"a": 2}, {"a": 3}]).json()
    assert answer["data"]["message_count"] == 2
    assert answer["data"]["rejected_count"] == 0
    assert [e["a"] for e in lytics.events["s"]] == [1, 2]


def test_auth_requires_the_raw_token(lytics: LyticsStandIn) -> None:
    url = f"{lytics.url}/collect/json/s"
    for headers in [{}, {"Authorization": "wrong"}, {"Authorization": f"Bearer {lytics.token}"}]:
        response = requests.post(url, json={"a": 1}, headers=headers, timeout=10)
        assert_error_shape(response, 401)
    # The token in the query string is not accepted either.
    response = requests.post(url, json={"a": 1}, params={"access_token": lytics.token}, timeout=10)
    assert response.status_code == 401
    assert lytics.counts == {}
    assert [r.status for r in lytics.requests] == [401] * 4


def test_object_and_array_bodies_get_the_envelope(
    http: requests.Session, lytics: LyticsStandIn
) -> None:
    single = post(http, lytics, "s1", {"email": "a@example.com", "name": "Zoë 🎉"})
    assert single.status_code == 200
    assert single.json() == {
        "status": 200,
        "message": "success",
        "data": {
            "message_count": 1,
            "rejected_count": 0,
            "content-type": "application/json",
            "droperrors": False,
            "dryrun": False,
            "stream": "s1",
        },
    }
    many = post(http, lytics, "s1", [{"n": 1}, {"n": 2}, {"n": 3}])
    assert many.json()["data"]["message_count"] == 3
    assert lytics.events["s1"] == [{"email": "a@example.com", "name": "Zoë 🎉"}] + [
        {"n": n} for n in (1, 2, 3)
    ]
    assert lytics.counts == {"s1": 4}
    assert lytics.total() == 4
    assert list(lytics.events) == ["s1"]
    assert lytics.events.get("other") is None
    record = lytics.requests[-1]
    assert (record.stream, record.status, record.message_count) == ("s1", 200, 3)
    assert orjson.loads(record.body) == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_empty_array_is_accepted(http: requests.Session, lytics: LyticsStandIn) -> None:
    response = post(http, lytics, "s", [])
    assert response.json()["data"]["message_count"] == 0
    assert lytics.events.get("s") is None


def test_dryrun_stores_nothing(http: requests.Session, lytics: LyticsStandIn) -> None:
    response = post(http, lytics, "s", [{"a": 1}], dryrun="true")
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["dryrun"] is True
    assert data["message_count"] == 1
    assert lytics.counts == {}
    assert "s" not in lytics.events
    assert lytics.requests[-1].dryrun is True


def test_dryrun_still_checks_auth_and_reports_rejections(
    http: requests.Session, lytics: LyticsStandIn
) -> None:
    nested = [{"a": 1}, {"x": {"items": [{"sku": 1}]}}]
    response = post(http, lytics, "s", nested, dryrun="1")
    assert response.json()["data"]["rejected_count"] == 1
    anonymous = requests.post(
        f"{lytics.url}/collect/json/s", json={}, params={"dryrun": "true"}, timeout=10
    )
    assert anonymous.status_code == 401


def test_timestamp_field_and_filename_are_recorded(
    http: requests.Session, lytics: LyticsStandIn
) -> None:
    response = post(
        http, lytics, "s", [{"ts": "2024-01-01T00:00:00Z"}], timestamp_field="ts", filename="f1"
    )
    data = response.json()["data"]
    assert data["timestamp_field"] == "ts"
    assert data["filename"] == "f1"
    record = lytics.requests[-1]
    assert record.timestamp_field == "ts"
    assert record.query == {"timestamp_field": "ts", "filename": "f1"}


def test_body_over_ten_million_bytes_is_413(http: requests.Session, lytics: LyticsStandIn) -> None:
    def body_of(size: int) -> bytes:
        prefix, suffix = b'[{"pad":"', b'"}]'
        return prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix

    # One 10 MB event: the per-event limit (16 KB inside a batch) is another test's subject.
    lytics.set_options(max_event_bytes_in_batch=None)
    exactly = http.post(f"{lytics.url}/collect/json/big", data=body_of(MAX_BODY_BYTES), timeout=30)
    assert exactly.status_code == 200
    over = http.post(f"{lytics.url}/collect/json/big", data=body_of(MAX_BODY_BYTES + 1), timeout=30)
    assert_error_shape(over, 413)
    assert str(MAX_BODY_BYTES) in over.json()["errors"][0]["message"]
    assert lytics.counts == {"big": 1}
    # The connection stays usable after a drained 413.
    assert post(http, lytics, "big", {"a": 1}).status_code == 200


def test_array_of_objects_inside_an_event_is_rejected(
    http: requests.Session, lytics: LyticsStandIn
) -> None:
    events = [
        {"ok": 1, "tags": ["a", "b"], "nested": {"deep": {"x": [1, 2]}}},
        {"properties": {"items": [{"sku": "A"}, {"sku": "B"}]}},
        {"items": [{"sku": "A"}]},
        {"matrix": [[{"a": 1}]]},
        {"ok": 2, "text": "looks like [{ but is a string"},
        "not an object",
        7,
    ]
    response = post(http, lytics, "s", events, timestamp_field="ts")
    data = response.json()["data"]
    assert data["message_count"] == 7
    assert data["rejected_count"] == 5
    assert lytics.events["s"] == [events[0], events[4]]
    assert lytics.counts == {"s": 2}
    assert lytics.rejected == {"s": 5}
    assert lytics.requests[-1].rejected_count == 5


def test_a_single_object_body_can_be_rejected(
    http: requests.Session, lytics: LyticsStandIn
) -> None:
    response = post(http, lytics, "s", {"properties": {"items": [{"sku": "A"}]}})
    assert response.json()["data"] == {
        "message_count": 1,
        "rejected_count": 1,
        "content-type": "application/json",
        "droperrors": False,
        "dryrun": False,
        "stream": "s",
    }
    assert "s" not in lytics.events


def test_holds_array_of_objects() -> None:
    assert holds_array_of_objects({"a": {"b": [{"c": 1}]}})
    assert holds_array_of_objects([[{}]])
    assert not holds_array_of_objects({"a": [1, "x", [2]], "b": {"c": None}})


@pytest.mark.parametrize("body", [b"{not json", b'"a string"', b"42"])
def test_bad_bodies_are_400(http: requests.Session, lytics: LyticsStandIn, body: bytes) -> None:
    response = http.post(f"{lytics.url}/collect/json/s", data=body, timeout=10)
    assert_error_shape(response, 400)


def test_other_paths_and_methods(http: requests.Session, lytics: LyticsStandIn) -> None:
    assert_error_shape(http.post(f"{lytics.url}/collect/csv/s", data=b"{}", timeout=10), 404)
    assert_error_shape(http.get(f"{lytics.url}/collect/json/s", timeout=10), 405)
    assert_error_shape(http.post(f"{lytics.url}/collect/json/", data=b"{}", timeout=10), 400)


def test_status_faults_use_the_lytics_error_shape(
    http: requests.Session, lytics: LyticsStandIn
) -> None:
    lytics.inject(
        "/collect/json/s",
        Fault(status=429, retry_after=3),
        Fault(status=500),
        Fault(status=503),
    )
    first = post(http, lytics, "s", {"a": 1})
    assert_error_shape(first, 429)
    assert first.headers["Retry-After"] == "3"
    assert_error_shape(post(http, lytics, "s", {"a": 2}), 500)
    assert_error_shape(post(http, lytics, "s", {"a": 3}), 503)
    assert post(http, lytics, "s", {"a": 4}).status_code == 200
    assert lytics.events["s"] == [{"a": 4}]


def test_faults_only_hit_their_prefix(http: requests.Session, lytics: LyticsStandIn) -> None:
    lytics.inject("/collect/json/other", Fault(status=500))
    assert post(http, lytics, "s", {"a": 1}).status_code == 200
    assert lytics.pending_faults() == 1
    assert post(http, lytics, "other", {"a": 1}).status_code == 500


def test_slow_answer_and_reset_connection(http: requests.Session, lytics: LyticsStandIn) -> None:
    lytics.inject("/collect", Fault(delay_seconds=0.3), Fault(reset=True))
    started = time.monotonic()
    assert post(http, lytics, "s", {"a": 1}).status_code == 200
    assert time.monotonic() - started >= 0.3
    with pytest.raises(requests.ConnectionError):
        post(http, lytics, "s", {"a": 2})
    assert lytics.events["s"] == [{"a": 1}]  # the reset request stored nothing
    assert post(http, lytics, "s", {"a": 3}).status_code == 200


def test_slow_answer_times_out_a_client(http: requests.Session, lytics: LyticsStandIn) -> None:
    lytics.inject("/collect", Fault(delay_seconds=0.5))
    with pytest.raises(requests.Timeout):
        http.post(f"{lytics.url}/collect/json/s", data=b"{}", timeout=0.1)


def test_failure_after_store_keeps_the_events(
    http: requests.Session, lytics: LyticsStandIn
) -> None:
    lytics.inject(
        "/collect/json/s", Fault(status=503, after_store=True), Fault(reset=True, after_store=True)
    )
    assert_error_shape(post(http, lytics, "s", [{"a": 1}]), 503)
    with pytest.raises(requests.ConnectionError):
        post(http, lytics, "s", [{"a": 2}])
    # A client that retries both creates duplicates: exactly what the target's tests look for.
    post(http, lytics, "s", [{"a": 1}])
    assert lytics.events["s"] == [{"a": 1}, {"a": 2}, {"a": 1}]


def test_fault_needs_an_effect() -> None:
    with pytest.raises(ValueError, match="needs"):
        Fault()
    with pytest.raises(ValueError, match="after_store"):
        Fault(after_store=True, delay_seconds=1)


def test_count_only_keeps_counts_but_no_events() -> None:
    with LyticsStandIn(count_only=True) as lytics:
        session = requests.Session()
        session.headers["Authorization"] = lytics.token
        response = post(session, lytics, "s", [{"a": i} for i in range(100)])
        assert response.json()["data"]["message_count"] == 100
        assert lytics.counts == {"s": 100}
        assert "s" not in lytics.events
        assert lytics.requests[-1].body == b""


def test_reset_forgets_everything(http: requests.Session, lytics: LyticsStandIn) -> None:
    post(http, lytics, "s", [{"a": 1}])
    lytics.inject("/collect", Fault(status=500))
    lytics.reset()
    assert (lytics.counts, lytics.requests, len(lytics.events)) == ({}, [], 0)
    assert lytics.pending_faults() == 0


def test_admin_endpoints(http: requests.Session, lytics: LyticsStandIn) -> None:
    admin = f"{lytics.base_url}/_sandbox"
    post(
        http,
        lytics,
        "cordial_activity",
        [{"cr_event_action": "open"}, {"cr_event_action": "open"}, {"cr_event_action": "click"}],
    )
    summary = http.get(f"{admin}/summary", timeout=10).json()
    assert summary["streams"] == {"cordial_activity": 3}
    assert summary["statuses"] == {"200": 1}
    sample = http.get(
        f"{admin}/events", params={"stream": "cordial_activity", "limit": 2}, timeout=10
    )
    assert sample.json()["total"] == 3
    assert len(sample.json()["events"]) == 2
    counts = http.get(f"{admin}/counts", params={"stream": "cordial_activity"}, timeout=10).json()
    assert counts == {
        "stream": "cordial_activity",
        "field": "cr_event_action",
        "values": {"open": 2, "click": 1},
    }
    faults = {"path_prefix": "/collect", "faults": [{"status": 503, "after_store": True}]}
    assert http.post(f"{admin}/faults", json=faults, timeout=10).json() == {"pending_faults": 1}
    assert post(http, lytics, "x", {"a": 1}).status_code == 503
    assert lytics.counts["x"] == 1
    options = http.post(f"{admin}/options", json={"count_only": True}, timeout=10).json()
    assert options["count_only"] is True
    assert lytics.count_only is True
    assert http.post(f"{admin}/options", json={"bogus": 1}, timeout=10).status_code == 400
    assert http.post(f"{admin}/reset", timeout=10).json()["streams"] == {}


def test_a_client_hanging_up_before_the_answer_prints_nothing(
    lytics: LyticsStandIn, capfd: pytest.CaptureFixture[str]
) -> None:
    """Killed clients are routine in the tests; the stand-in must not print tracebacks for them."""
    lytics.inject("/api/", Fault(delay_seconds=0.3), Fault(delay_seconds=0.3))
    for _ in range(2):
        with socket.create_connection((lytics.host, lytics.port)) as conn:
            conn.sendall(b"GET /api/schema HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            # Close with a reset, so the stand-in's later answer meets a closed connection.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline = time.monotonic() + 5
    while lytics.pending_faults() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # both answers written (and failed) by now
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err
    assert "Error" not in captured.err
