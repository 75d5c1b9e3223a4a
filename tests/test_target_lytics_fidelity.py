"""target-lytics against Lytics as its published definitions describe it, and against mistakes.

The stand-in answers in the published shapes (``models.VersionDiff`` from compare, a
``models.SchemaResponse`` from publish, ``models.ApiErrorResponse`` errors, a ``models.RankList``)
and, through its options, in the older error shape or as a server that is not Lytics at all (a
wrong ``api_url``). Every output is searched for the secrets.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from target_lytics.client import describe_answer, lytics_session
from target_lytics.settings import DEFAULT_STREAMS
from test_target_lytics import _cli, activity_lines, cordial_records

from sandbox.httpbase import Fault
from sandbox.lytics import LyticsStandIn

FAST = {"retry_initial_delay_seconds": 0.01, "retry_max_delay_seconds": 0.05, "max_retries": 1}
STREAM = "cordial_activity"


def config_for(lytics: LyticsStandIn, **overrides: Any) -> dict[str, Any]:
    return {"api_token": lytics.token, "api_url": lytics.url, **FAST, **overrides}


def run(
    config: dict[str, Any], tmp_path: Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """The target's CLI with ``config``: its exit code, stdout (STATE) and stderr (the log)."""
    return _cli(list(args), config, tmp_path, stdin)


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed run ends with (no traceback before it)."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def records_in(count: int) -> str:
    """A tap's output: SCHEMA, ``count`` RECORDs, then a STATE."""
    state = json.dumps({"type": "STATE", "value": {"bookmarks": {"activity": {"n": count}}}})
    return "".join(activity_lines(cordial_records(count))) + state + "\n"


def add_to_draft(lytics: LyticsStandIn, kind: str, body: dict[str, Any]) -> None:
    """Someone else's change, made in Lytics' UI or API and left unpublished."""
    response = requests.post(
        f"{lytics.url}/v2/schema/user/{kind}",
        json=body,
        headers={"Authorization": lytics.token},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def profile(lytics: LyticsStandIn, contact_id: str) -> requests.Response:
    return requests.get(
        f"{lytics.url}/api/entity/user/cr_contact_id/{contact_id}",
        headers={"Authorization": lytics.token},
        timeout=10,
    )


# -- 24.4: the draft, read as a VersionDiff ---------------------------------------------------


def test_a_publish_refused_at_its_last_step_publishes_when_run_again(lytics, tmp_path):
    """The token's role could write fields but not publish; the admin fixed it and ran it again."""
    lytics.inject("/v2/schema/user/publish", Fault(status=403))
    first = run(config_for(lytics), tmp_path, "--schema-publish")
    assert "publishing the schema as 'target-lytics-cordial-activity-" in last_line(first)
    assert "HTTP 403" in last_line(first)
    assert lytics.schema.version == 0  # fields and mappings wait in the draft

    plan = run(config_for(lytics), tmp_path, "--schema-plan")
    assert plan.returncode == 0, plan.stderr
    assert "Unpublished in the draft: field cr_contact_id (created)" in plan.stdout
    assert "mapping cr_contact_id from stream cordial_activity (created)" in plan.stdout
    assert "not ours" not in plan.stdout

    second = run(config_for(lytics), tmp_path, "--schema-publish")
    assert second.returncode == 0, second.stderr
    assert "Created 0 fields and 0 mappings and published" in second.stdout
    assert lytics.schema.version == 1

    records = cordial_records(20)
    sent = run(config_for(lytics), tmp_path, stdin=records_in(20))
    assert sent.returncode == 0, sent.stderr
    found = profile(lytics, records[0]["cID"])
    assert found.status_code == 200, found.text
    assert found.json()["data"]["cr_contact_id"] == records[0]["cID"]

    again = run(config_for(lytics), tmp_path, "--schema-publish")
    assert "Nothing to write" in again.stdout
    assert lytics.schema.version == 1


def test_another_persons_draft_change_is_named_and_not_published_by_default(lytics, tmp_path):
    add_to_draft(lytics, "field", {"id": "colleague_score", "type": "int", "mergeop": "max"})
    add_to_draft(lytics, "mapping", {"field": "colleague_score", "stream": "web", "expr": "score"})
    writes_before = list(lytics.schema.writes)

    plan = run(config_for(lytics), tmp_path, "--schema-plan")
    assert plan.returncode == 0, plan.stderr
    assert "field colleague_score (created)" in plan.stdout
    assert "mapping colleague_score from stream web (created)" in plan.stdout
    assert "changes that are not ours" in plan.stdout

    refused = last_line(run(config_for(lytics), tmp_path, "--schema-publish"))
    assert "Nothing was written to the Lytics schema" in refused
    assert "field colleague_score (created)" in refused
    assert "mapping colleague_score from stream web (created)" in refused
    assert "publish_others_changes" in refused
    assert lytics.schema.writes == writes_before
    assert lytics.schema.version == 0

    opted_in = run(config_for(lytics, publish_others_changes=True), tmp_path, "--schema-publish")
    assert opted_in.returncode == 0, opted_in.stderr
    assert "also published others' changes: field colleague_score (created)" in opted_in.stdout
    published, _ = lytics.schema.published()
    assert {"colleague_score", "cr_contact_id"} <= set(published)


def test_others_changes_do_not_block_when_ours_are_all_published(lytics, tmp_path):
    assert run(config_for(lytics), tmp_path, "--schema-publish").returncode == 0
    add_to_draft(lytics, "field", {"id": "colleague_flag", "type": "bool"})
    result = run(config_for(lytics), tmp_path, "--schema-publish")
    assert result.returncode == 0, result.stderr
    assert "Nothing to write" in result.stdout
    assert "colleague_flag" in result.stdout  # listed in the plan
    assert "colleague_flag" not in lytics.schema.published()[0]
    assert lytics.schema.version == 1


def test_a_colleagues_draft_edit_of_our_field_is_theirs_not_ours(lytics, tmp_path):
    """Our field, its description changed in the draft by someone else and left unpublished."""
    assert run(config_for(lytics), tmp_path, "--schema-publish").returncode == 0
    published = lytics.schema.published()
    edited = {**lytics.schema.published_fields["cr_event_action"], "shortdesc": "Colleague's text"}
    add_to_draft(lytics, "field", edited)
    writes_before = list(lytics.schema.writes)

    plan = run(config_for(lytics), tmp_path, "--schema-plan")
    assert plan.returncode == 0, plan.stderr
    assert "Unpublished in the draft" not in plan.stdout  # not ours to complete
    assert "changes that are not ours" in plan.stdout
    assert "  field cr_event_action (modified)" in plan.stdout

    nothing = run(config_for(lytics), tmp_path, "--schema-publish")
    assert nothing.returncode == 0, nothing.stderr
    assert "Nothing to write" in nothing.stdout

    # With something of ours to write, the publish is refused, naming the colleague's change.
    fields = {**DEFAULT_STREAMS["activity"]["fields"], "channel": "cr_channel"}
    streams = {"activity": {**DEFAULT_STREAMS["activity"], "fields": fields}}
    refused = last_line(run(config_for(lytics, streams=streams), tmp_path, "--schema-publish"))
    assert "Nothing was written to the Lytics schema" in refused
    assert "field cr_event_action (modified)" in refused
    assert "publish_others_changes" in refused
    assert lytics.schema.writes == writes_before
    assert lytics.schema.version == 1
    assert lytics.schema.published() == published


# -- 24.5: Lytics' error text, in both shapes --------------------------------------------------


@pytest.mark.parametrize("shape", ["errors", "message"])
@pytest.mark.parametrize("mode", ["upload", "--test", "--schema-plan"])
def test_lytics_error_text_reaches_the_user_in_both_shapes(lytics, tmp_path, shape, mode):
    lytics.set_options(error_shape=shape)
    token = "wrong-" + os.urandom(8).hex()
    args = () if mode == "upload" else (mode,)
    result = run(config_for(lytics, api_token=token), tmp_path, *args, stdin=records_in(3))
    line = last_line(result)
    assert "HTTP 401" in line
    assert "Unauthorized: the API token is missing or invalid" in line
    if shape == "errors":
        assert "UNAUTHORIZED-017" in line
    assert token not in result.stdout + result.stderr
    assert result.stdout.strip() == ""  # no STATE


# -- 24.6: where the identifier stands in the ranking ---------------------------------------


@pytest.mark.parametrize(
    ("ranks", "expected"),
    [
        (["email", "cr_contact_id"], "identifier cr_contact_id: ranked 2 of 2."),
        (["email"], "identifier cr_contact_id: not in the ranking"),
        ([], "Identifier ranking: empty."),
        (None, "Identifier ranking: none (Lytics answered 404)."),
    ],
)
def test_schema_plan_shows_where_the_identifier_stands_in_the_ranking(
    lytics, tmp_path, ranks, expected
):
    lytics.set_options(id_ranks=ranks)
    plan = run(config_for(lytics), tmp_path, "--schema-plan")
    assert plan.returncode == 0, plan.stderr
    assert expected in plan.stdout
    assert "GET /v2/schema/user/idconfig" in plan.stdout
    assert run(config_for(lytics), tmp_path, "--schema-publish").returncode == 0
    assert not [w for w in lytics.schema.writes if "/rank" in w[1] or "/idconfig" in w[1]]
    assert lytics.options()["id_ranks"] == ranks  # never changed


# -- 25.1: only a verified success counts ---------------------------------------------------

WRONG = ["html_login", "empty", "status_in_body", "redirect", "text_plain"]
SEEN = {
    "html_login": 'HTTP 200, content type text/html; charset=utf-8, body "<!doctype html>',
    "empty": "HTTP 200, content type application/json, empty body",
    "status_in_body": 'HTTP 200, content type application/json, body \'{"status":400',
    "redirect": "HTTP 302, content type text/html, redirect to http://127.0.0.1:",
    "text_plain": "HTTP 200, content type text/plain, body 'OK'",
}


@pytest.mark.parametrize("kind", WRONG)
@pytest.mark.parametrize("mode", ["upload", "--test", "--schema-plan", "--schema-publish"])
def test_an_answer_that_is_not_lytics_is_an_error_naming_url_and_answer(
    lytics, tmp_path, kind, mode
):
    lytics.set_options(wrong_answer=kind)
    args = () if mode == "upload" else (mode,)
    result = run(config_for(lytics), tmp_path, *args, stdin=records_in(3))
    line = last_line(result)
    path = "/collect/json/cordial_activity" if mode in ("upload", "--test") else "/v2/schema/user"
    assert f"{lytics.url}{path}" in line
    assert SEEN[kind] in line
    assert "not Lytics' success envelope" in line
    assert "Check api_url" in line
    assert result.stdout.strip() == ""  # no STATE, no plan
    assert lytics.token not in result.stdout + result.stderr
    if kind == "redirect":
        assert "?next" not in line  # a redirect's query string is not quoted


def test_a_count_short_of_the_body_is_refused_like_a_rejection(lytics, tmp_path):
    lytics.set_options(wrong_answer="short_count")
    result = run(config_for(lytics, max_concurrent_uploads=1), tmp_path, stdin=records_in(3))
    line = last_line(result)
    assert "Lytics counted 2 of the 3 events sent to stream 'cordial_activity'" in line
    assert "missing or rejected events would be lost" in line
    assert result.stdout.strip() == ""  # no STATE


def test_the_dry_run_check_refuses_a_count_short_of_the_sample(lytics, tmp_path):
    lytics.set_options(wrong_answer="short_count")
    line = last_line(run(config_for(lytics), tmp_path, "--test"))
    assert "counted 0 of the 1 events" in line


# -- 25.5: the token, stripped, and never printed ---------------------------------------------


@pytest.mark.parametrize("padding", ["{}\n", " {}", "\t{}\r\n"])
@pytest.mark.parametrize("mode", ["upload", "--test", "--schema-plan"])
def test_a_token_with_surrounding_whitespace_is_stripped(lytics, tmp_path, padding, mode):
    args = () if mode == "upload" else (mode,)
    config = config_for(lytics, api_token=padding.format(lytics.token))
    result = run(config, tmp_path, *args, stdin=records_in(3))
    assert result.returncode == 0, result.stderr
    assert lytics.token not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("secret-{}\nx", "control character"),
        ("secret-{}\x01", "control character"),
        ("secret-{}\u20ac", "not Latin-1"),
    ],
)
@pytest.mark.parametrize("mode", ["upload", "--test", "--schema-plan"])
def test_a_token_that_cannot_be_a_header_is_refused_naming_the_setting(
    lytics, tmp_path, token, problem, mode
):
    secret = token.format(os.urandom(8).hex())
    args = () if mode == "upload" else (mode,)
    result = run(config_for(lytics, api_token=secret), tmp_path, *args, stdin=records_in(3))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "`api_token`" in result.stderr
    assert problem in result.stderr
    visible = secret.strip().split("\n")[0].rstrip("\x01\u20ac")
    assert visible not in result.stdout + result.stderr
    assert lytics.requests == []
    assert result.stdout.strip() == ""


# -- 25.6: no user name or password in api_url ------------------------------------------------


@pytest.mark.parametrize("mode", ["upload", "--test", "--schema-plan"])
def test_userinfo_in_api_url_is_refused_and_never_printed(lytics, tmp_path, mode):
    password = "pw-" + os.urandom(8).hex()
    url = lytics.url.replace("http://", f"http://admin:{password}@")
    args = () if mode == "upload" else (mode,)
    result = run(config_for(lytics, api_url=url), tmp_path, *args, stdin=records_in(3))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "`api_url` holds a user name or password" in result.stderr
    assert password not in result.stdout + result.stderr
    assert lytics.requests == []
    assert lytics.schema.writes == []


def test_the_session_never_sends_basic_auth_from_a_url(lytics):
    session = lytics_session(lytics.token)
    url = lytics.url.replace("http://", "http://admin:pw@") + f"/collect/json/{STREAM}"
    # Basic auth would replace the raw token, and the stand-in would answer 401.
    response = session.post(url, data=b"[]", params={"dryrun": "true"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.request.headers["Authorization"] == lytics.token


def test_a_redirect_is_described_without_user_password_or_query():
    response = requests.Response()
    response.status_code = 302
    response.headers["Location"] = "https://someone:pw-x@app.lytics.com/login?session=abc"
    response._content = b""
    described = describe_answer(response)
    assert (
        described
        == "HTTP 302, content type none, redirect to https://app.lytics.com/login, empty body"
    )
