"""tap-cordial-activity against the sandbox (Cordial stand-in + real OpenSSH sshd).

Formats, gzip and split files, both SFTP auth methods, host key refusal, windows and backfill,
exactly-once across runs at window boundaries, every error path, and secrets never in output.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest
from tap_cordial_activity.streams import SCHEMA
from test_tap_helpers import event, iso, run_tap

from sandbox.cordial import DEFAULT_SAVED_KEY, CordialStandIn
from sandbox.httpbase import Fault
from sandbox.pytest_plugin import Sandbox
from sandbox.sftp import generate_ed25519_key

DEFAULT_ACTIONS = {"message-sent", "open", "click", "optout", "bounce", "complaint"}
RESERVED = DEFAULT_ACTIONS | {"pageview", "message-stopped"}


def expected_ids(cordial: CordialStandIn) -> set[str]:
    """Ids of the default events the tap's default `actions` select."""
    return {
        e["_id"]
        for e in cordial.events
        if e["action"] in DEFAULT_ACTIONS or e["action"] not in RESERVED
    }


def assert_clean(run, sandbox: Sandbox) -> None:
    """No secret in anything the tap printed."""
    for secret in sandbox.secrets():
        assert secret not in run.stdout
        assert secret not in run.stderr


def test_default_run_emits_every_event_once_with_valid_schema(sandbox: Sandbox, tmp_path):
    run = run_tap(tmp_path, sandbox.tap_config())
    assert run.returncode == 0, run.stderr
    schema_msgs = [m for m in run.messages if m["type"] == "SCHEMA"]
    assert schema_msgs[0]["schema"] == SCHEMA
    assert schema_msgs[0]["key_properties"] == ["_id"]
    assert schema_msgs[0]["bookmark_properties"] == ["time"]
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    ids = [r["_id"] for r in run.records]
    assert len(ids) == len(set(ids))
    assert set(ids) == expected_ids(sandbox.cordial)
    for record in run.records:
        validator.validate(record)
        assert "+0000" not in record["time"]
        datetime.fromisoformat(record["time"])
        if "first" in record:
            assert isinstance(record["first"], bool)
    # gzip by default, one STATE per window, bookmark at the run's end
    assert all(body["compress"] is True for body in sandbox.cordial.exports)
    assert len(run.states) >= len(sandbox.cordial.exports)
    assert run.bookmark["replication_key"] == "time"
    assert "Read singer-activity-" in run.stderr
    assert "bytes in" in run.stderr
    assert_clean(run, sandbox)


@pytest.fixture
def reference_ids(sandbox: Sandbox) -> set[str]:
    return expected_ids(sandbox.cordial)


@pytest.mark.parametrize(
    ("overrides", "options"),
    [
        pytest.param({"compress": False}, {}, id="jsonl-plain"),
        pytest.param({}, {"json_array": True}, id="json-array-gzip"),
        pytest.param({"compress": False}, {"json_array": True}, id="json-array-plain"),
        pytest.param({"export_format": "csv"}, {}, id="csv-gzip"),
        pytest.param({"export_format": "csv", "compress": False}, {}, id="csv-plain"),
        pytest.param({"limit_records_per_file": 40}, {}, id="split-gzip"),
        pytest.param(
            {"limit_records_per_file": 40, "export_format": "csv"}, {"omit_file_name": True},
            id="split-csv-no-fileName",
        ),
    ],
)
def test_formats_give_the_same_records(sandbox, tmp_path, reference_ids, overrides, options):
    sandbox.cordial.options.update(options)
    run = run_tap(tmp_path, sandbox.tap_config(**overrides))
    assert run.returncode == 0, run.stderr
    assert sorted(r["_id"] for r in run.records) == sorted(reference_ids)
    validator = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    for record in run.records:
        validator.validate(record)
        assert all(value != "" for value in record.values())
    if "limit_records_per_file" in overrides:
        files = [p.name for p in sandbox.sftp.root.iterdir()]
        assert any(name.split(".")[0].endswith("-2") for name in files), files
    if overrides.get("export_format") == "csv":
        nested = [r for r in run.records if "sp" in r]
        assert nested
        assert all(isinstance(r["sp"], dict) for r in nested)


def test_delete_exported_files_waits_for_the_next_run(sandbox, tmp_path, reference_ids):
    """A window's files are listed in its final STATE and deleted only by a run that starts from
    that STATE (stored by the orchestrator once delivered): a failed run can still resume."""
    root = sandbox.sftp.root
    (root / "unrelated.txt").write_text("not an export")
    config = sandbox.tap_config(limit_records_per_file=40, delete_exported_files=True)
    first = run_tap(tmp_path, config)
    assert first.returncode == 0, first.stderr
    assert sorted(r["_id"] for r in first.records) == sorted(reference_ids)
    first_files = {p.name for p in root.iterdir()} - {"unrelated.txt"}
    assert len(first_files) > 2  # split files of every window, all still there
    listed = first.bookmark["read_files"]
    assert {path.rsplit("/", 1)[-1] for path in listed} == first_files
    # A checkpoint inside a window never lists that window's own files (they may be resumed).
    checkpoints = [s["bookmarks"]["activity"] for s in first.states]
    checkpoints = [b for b in checkpoints if "progress" in b]
    assert checkpoints
    for bookmark in checkpoints:
        own = {f"{sandbox.sftp.sftp_path.rstrip('/')}/{f}" for f in bookmark["progress"]["files"]}
        assert own.isdisjoint(bookmark.get("read_files", []))
        assert own <= set(listed)  # ... until its window ends

    second = run_tap(tmp_path, config, state=first.states[-1])
    assert second.returncode == 0, second.stderr
    left = {p.name for p in root.iterdir()}
    assert "unrelated.txt" in left
    assert not left & first_files  # the delivered run's files are gone
    assert "(delete_exported_files: its window was delivered)" in second.stderr
    if second.states:
        assert set(second.bookmark.get("read_files", [])).isdisjoint(listed)

    third = run_tap(tmp_path, config, state=first.states[-1])  # the same STATE again
    assert third.returncode == 0, third.stderr
    assert "Already gone:" in third.stderr


def test_delete_exported_files_off_keeps_files_and_state_clean(sandbox, tmp_path):
    run = run_tap(tmp_path, sandbox.tap_config())
    assert run.returncode == 0, run.stderr
    assert "read_files" not in run.bookmark
    assert any(sandbox.sftp.root.iterdir())


def test_a_refused_delete_is_a_warning(sandbox, tmp_path, reference_ids):
    root = sandbox.sftp.root
    config = sandbox.tap_config(delete_exported_files=True)
    first = run_tap(tmp_path, config)
    assert first.returncode == 0, first.stderr
    root.chmod(0o555)  # the SFTP user may read but not delete; Cordial (root) still writes
    try:
        second = run_tap(tmp_path, config, state=first.states[-1])
    finally:
        root.chmod(0o755)
    assert second.returncode == 0, second.stderr
    assert "cannot delete SFTP file" in second.stderr
    assert "the file is kept" in second.stderr
    assert {p.rsplit("/", 1)[-1] for p in first.bookmark["read_files"]} <= {
        p.name for p in root.iterdir()
    }


def test_password_login_only(sandbox, tmp_path, reference_ids):
    run = run_tap(tmp_path, sandbox.tap_config(sftp_private_key=None))
    assert run.returncode == 0, run.stderr
    assert {r["_id"] for r in run.records} == reference_ids
    assert sandbox.cordial.exports[0]["destination"]["password"] == sandbox.sftp.password


def test_key_login_with_saved_key_sends_no_password(sandbox, tmp_path, reference_ids):
    config = sandbox.tap_config(sftp_password=None, cordial_saved_key=DEFAULT_SAVED_KEY)
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr
    assert {r["_id"] for r in run.records} == reference_ids
    destination = sandbox.cordial.exports[0]["destination"]
    assert destination["savedKey"] == DEFAULT_SAVED_KEY
    assert "password" not in destination


def test_encrypted_key_with_passphrase(sandbox, tmp_path, reference_ids):
    key_file = tmp_path / "id_ed25519"
    key_file.write_text(sandbox.sftp.private_key)
    key_file.chmod(0o600)
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-N", "s3cret-phrase", "-P", "", "-f", str(key_file)],
        check=True, capture_output=True,
    )
    encrypted = key_file.read_text()
    base = sandbox.tap_config(sftp_password=None, cordial_saved_key=DEFAULT_SAVED_KEY)
    run = run_tap(tmp_path, {**base, "sftp_private_key": encrypted,
                             "sftp_private_key_passphrase": "s3cret-phrase"})
    assert run.returncode == 0, run.stderr
    assert {r["_id"] for r in run.records} == reference_ids
    assert "s3cret-phrase" not in run.stderr + run.stdout
    exports_before = len(sandbox.cordial.exports)

    missing = run_tap(tmp_path, {**base, "sftp_private_key": encrypted})
    assert missing.returncode != 0
    assert "encrypted: set `sftp_private_key_passphrase`" in missing.stderr
    wrong = run_tap(tmp_path, {**base, "sftp_private_key": encrypted,
                               "sftp_private_key_passphrase": "nope"})
    assert wrong.returncode != 0
    assert "wrong `sftp_private_key_passphrase`" in wrong.stderr
    assert len(sandbox.cordial.exports) == exports_before  # settings rejected before any call


def test_wrong_sftp_password_is_refused_before_any_export(sandbox, tmp_path):
    run = run_tap(tmp_path, sandbox.tap_config(sftp_private_key=None, sftp_password="wrong-pw"))
    assert run.returncode != 0
    assert "SFTP login as" in run.stderr
    assert "was refused" in run.stderr
    assert sandbox.cordial.exports == []


def _other_host_key() -> str:
    private, _ = generate_ed25519_key()
    import io

    import paramiko

    key = paramiko.Ed25519Key.from_private_key(io.StringIO(private))
    return f"{key.get_name()} {key.get_base64()}"


def test_unknown_host_key_is_refused(sandbox, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    run = run_tap(
        tmp_path, sandbox.tap_config(sftp_host_key=None, sftp_known_hosts_path=str(empty))
    )
    assert run.returncode != 0
    assert "is unknown" in run.stderr
    assert f"ssh-keyscan -p {sandbox.sftp.port} {sandbox.sftp.host}" in run.stderr
    assert "never trusts a key on first use" in run.stderr
    assert sandbox.cordial.exports == []
    assert empty.read_text() == ""  # nothing was learned


def test_changed_host_key_is_refused(sandbox, tmp_path):
    run = run_tap(tmp_path, sandbox.tap_config(sftp_host_key=_other_host_key()))
    assert run.returncode != 0
    assert "DOES NOT MATCH" in run.stderr
    assert "ssh-keyscan" in run.stderr
    assert "Traceback" not in run.stderr
    assert sandbox.cordial.exports == []


@pytest.mark.parametrize("form", ["keyscan", "bare", "known_hosts"])
def test_host_key_forms_are_accepted(sandbox, tmp_path, form):
    line = sandbox.sftp.host_key_line  # "[127.0.0.1]:PORT ssh-ed25519 AAAA..."
    if form == "keyscan":
        config = sandbox.tap_config(sftp_host_key=f"# comment\n{_other_host_key()}\n{line}\n")
    elif form == "bare":
        config = sandbox.tap_config(sftp_host_key=" ".join(line.split()[1:3]))
    else:
        known = tmp_path / "known_hosts"
        known.write_text(line + "\n")
        config = sandbox.tap_config(sftp_host_key=None, sftp_known_hosts_path=str(known))
    run = run_tap(tmp_path, config, "--test")
    assert run.returncode == 0, run.stderr
    assert "host key verified" in run.stderr


# -- windows, state and exactly-once ------------------------------------------------------------


@pytest.fixture
def quiet_cordial(sftp_server) -> Iterator[CordialStandIn]:
    """A Cordial stand-in without default events (tests add exactly what they need)."""
    from sandbox.pytest_plugin import empty_folder

    empty_folder(sftp_server.root)
    with CordialStandIn(
        sftp_root=sftp_server.root, sftp_path=sftp_server.sftp_path, events=[], sftp=sftp_server
    ) as stand_in:
        yield stand_in
    empty_folder(sftp_server.root)


@pytest.fixture
def quiet(sftp_server, quiet_cordial, lytics) -> Sandbox:
    return Sandbox(sftp=sftp_server, cordial=quiet_cordial, lytics=lytics)


T0 = datetime(2024, 5, 1, tzinfo=UTC)


def test_backfill_is_split_into_windows_in_time_order(quiet, tmp_path):
    quiet.cordial.add_events(
        [event(f"e{h}", T0 + timedelta(hours=h, minutes=30)) for h in range(0, 72, 5)]
    )
    config = quiet.tap_config(
        start_date="2024-05-01", end_date=iso(T0 + timedelta(days=3)), export_window_hours=24,
        target_events_per_window=0,
    )
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr
    frames = [(b["selected_timeframe_start"], b["selected_timeframe_end"])
              for b in quiet.cordial.exports]
    assert frames == [
        ("2024-05-01T00:00:00.000Z", "2024-05-02T00:00:00.000Z"),
        ("2024-05-02T00:00:00.000Z", "2024-05-03T00:00:00.000Z"),
        ("2024-05-03T00:00:00.000Z", "2024-05-04T00:00:00.000Z"),
    ]
    names = [b["name"] for b in quiet.cordial.exports]
    assert len(set(names)) == 3
    assert all(n.startswith("singer-activity-") for n in names)
    assert sorted(r["_id"] for r in run.records) == sorted(f"e{h}" for h in range(0, 72, 5))
    bookmarks = [s["bookmarks"]["activity"]["replication_key_value"] for s in run.states]
    assert bookmarks == [
        "2024-05-02T00:00:00+00:00", "2024-05-03T00:00:00+00:00", "2024-05-04T00:00:00+00:00"
    ]
    # The STATE of a window follows that window's records and precedes the next one's.
    kinds = [(m["type"], m.get("record", {}).get("_id")) for m in run.messages]
    first_state = kinds.index(("STATE", None))
    assert {k[1] for k in kinds[:first_state] if k[0] == "RECORD"} == {"e0", "e5", "e10", "e15",
                                                                         "e20"}


def test_boundary_events_are_emitted_exactly_once_across_runs(quiet, tmp_path):
    edge = T0 + timedelta(hours=6)
    quiet.cordial.add_events([
        event("before", edge - timedelta(seconds=1)),
        event("edge-a", edge), event("edge-b", edge),
        event("after", edge + timedelta(seconds=1)),
    ])
    first = run_tap(tmp_path, quiet.tap_config(start_date=iso(T0), end_date=iso(edge)))
    assert first.returncode == 0, first.stderr
    assert sorted(r["_id"] for r in first.records) == ["before", "edge-a", "edge-b"]
    assert first.bookmark["replication_key_value"] == "2024-05-01T06:00:00+00:00"
    assert first.bookmark["boundary_ids"] == ["edge-a", "edge-b"]

    later = edge + timedelta(hours=1)
    second = run_tap(
        tmp_path, quiet.tap_config(start_date=iso(T0), end_date=iso(later)), state=first.states[-1]
    )
    assert second.returncode == 0, second.stderr
    # Cordial's export included the boundary instant again; the tap did not re-emit it.
    assert quiet.cordial.exports[-1]["selected_timeframe_start"] == "2024-05-01T06:00:00.000Z"
    assert [r["_id"] for r in second.records] == ["after"]
    assert "skipped 0 outside the window and 2 already delivered" in second.stderr

    third = run_tap(
        tmp_path, quiet.tap_config(start_date=iso(T0), end_date=iso(later)),
        state=second.states[-1],
    )
    assert third.returncode == 0
    assert third.records == []


def test_empty_window_moves_the_bookmark(quiet, tmp_path):
    run = run_tap(tmp_path, quiet.tap_config(start_date=iso(T0), end_date=iso(T0 + timedelta(2))))
    assert run.returncode == 0, run.stderr
    assert run.records == []
    assert run.bookmark["replication_key_value"] == "2024-05-03T00:00:00+00:00"


def test_no_start_date_means_seven_days(quiet, tmp_path):
    run = run_tap(tmp_path, quiet.tap_config(start_date=None, export_window_hours=24 * 8))
    assert run.returncode == 0, run.stderr
    body = quiet.cordial.exports[0]
    start = datetime.fromisoformat(body["selected_timeframe_start"])
    end = datetime.fromisoformat(body["selected_timeframe_end"])
    # The end is settle_minutes (default 15) before the run; the start 7 days before it.
    span = timedelta(days=7) - timedelta(minutes=15)
    assert span - timedelta(seconds=5) <= end - start <= span
    assert abs(end - (datetime.now(UTC) - timedelta(minutes=15))) < timedelta(minutes=1)


def test_failed_run_keeps_the_bookmark_and_rerun_loses_nothing(quiet, tmp_path):
    quiet.cordial.add_events(
        [event(f"e{h}", T0 + timedelta(hours=h, minutes=1)) for h in range(0, 48, 3)]
    )
    config = quiet.tap_config(start_date=iso(T0), end_date=iso(T0 + timedelta(days=2)),
                              export_window_hours=12, max_retries=0, target_events_per_window=0)
    # The third window's export is refused: the run fails after two finished windows.
    original = quiet.cordial.route
    calls = {"n": 0}

    def flaky(request):
        if request.path.startswith("/v2/contactactivityexport"):
            calls["n"] += 1
            if calls["n"] == 3:
                from sandbox.httpbase import Response

                return Response.json(503, {"error": True, "errorKey": "DOWN", "message": "down"})
        return original(request)

    quiet.cordial.route = flaky  # type: ignore[method-assign]
    failed = run_tap(tmp_path, config)
    assert failed.returncode != 0
    assert "HTTP 503" in failed.stderr
    assert "down" in failed.stderr
    assert failed.bookmark["replication_key_value"] == "2024-05-02T00:00:00+00:00"
    quiet.cordial.route = original  # type: ignore[method-assign]
    rerun = run_tap(tmp_path, config, state=failed.states[-1])
    assert rerun.returncode == 0, rerun.stderr
    emitted = [r["_id"] for r in failed.records + rerun.records]
    assert sorted(emitted) == sorted(f"e{h}" for h in range(0, 48, 3))
    assert len(emitted) == len(set(emitted))


# -- error paths ------------------------------------------------------------------------------


def test_wrong_api_key_names_status_and_allow_list(sandbox, tmp_path):
    run = run_tap(tmp_path, sandbox.tap_config(api_key="not-the-key"))
    assert run.returncode != 0
    assert "HTTP 401" in run.stderr
    assert "IP allow-list" in run.stderr
    assert "Traceback" not in run.stderr  # the message alone, once
    assert run.stderr.count("HTTP 401 from POST") == 1
    assert "not-the-key" not in run.stderr + run.stdout
    assert not run.states or "replication_key_value" not in run.bookmark


def test_failed_job_names_job_and_message(sandbox, tmp_path):
    sandbox.cordial.options.update({"fail_jobs": True, "fail_message": "Disk full on SFTP"})
    run = run_tap(tmp_path, sandbox.tap_config())
    assert run.returncode != 0
    job_id = next(iter(sandbox.cordial.jobs))
    assert f"Cordial export job {job_id} failed: Disk full on SFTP" in run.stderr
    assert run.records == []


def test_job_timeout(sandbox, tmp_path):
    sandbox.cordial.options.update({"never_finish": True})
    run = run_tap(tmp_path, sandbox.tap_config(job_timeout_seconds=0.3))
    assert run.returncode != 0
    job_id = next(iter(sandbox.cordial.jobs))
    assert f"Cordial export job {job_id} did not finish within 0.3s" in run.stderr


def test_export_rejected_with_4xx_is_not_retried(sandbox, tmp_path):
    sandbox.cordial.inject("/v2/contactactivityexport", Fault(status=406))
    run = run_tap(tmp_path, sandbox.tap_config())
    assert run.returncode != 0
    assert "HTTP 406" in run.stderr
    assert "creating the export job" in run.stderr
    assert sandbox.cordial.pending_faults() == 0
    assert "retry" not in run.stderr
    assert sandbox.cordial.exports == []  # the one (faulted) request was not sent again


def test_429_retry_after_5xx_and_resets_are_retried(sandbox, tmp_path, reference_ids):
    sandbox.cordial.inject("/v2/contactactivityexport", Fault(status=429, retry_after=1),
                           Fault(status=500), Fault(reset=True))
    sandbox.cordial.inject("/v2/jobs/", Fault(status=502), Fault(status=503))
    started = datetime.now(UTC)
    run = run_tap(tmp_path, sandbox.tap_config())
    assert run.returncode == 0, run.stderr
    assert datetime.now(UTC) - started >= timedelta(seconds=1)  # Retry-After was honoured
    assert "HTTP 429" in run.stderr
    assert "retry 1/8 in 1.0s" in run.stderr
    assert "HTTP 500" in run.stderr
    assert "HTTP 502" in run.stderr
    assert {r["_id"] for r in run.records} == reference_ids


def test_lost_create_reply_is_retried_under_a_new_name(sandbox, tmp_path, reference_ids):
    """The first attempt starts a job but its answer is lost: the retry uses another export name,
    so the orphan job's files are not read with the retried job's."""
    sandbox.cordial.inject("/v2/contactactivityexport", Fault(reset=True, after_store=True))
    run = run_tap(tmp_path, sandbox.tap_config())
    assert run.returncode == 0, run.stderr
    exports = sandbox.cordial.exports
    first, second = exports[0]["name"], exports[1]["name"]
    # One job per window, plus the orphan of the first window.
    windows = {(e["selected_timeframe_start"], e["selected_timeframe_end"]) for e in exports}
    assert len(exports) == len(windows) + 1
    assert first != second
    assert not second.startswith(first)
    assert f"The export is sent again as {second!r}" in run.stderr
    assert any(f.name.startswith(first) for f in sandbox.sftp.root.iterdir())  # orphan's file
    ids = [r["_id"] for r in run.records]
    assert len(ids) == len(set(ids))
    assert set(ids) == reference_ids


def test_5xx_gives_up_after_max_retries(sandbox, tmp_path):
    sandbox.cordial.inject("/v2/contactactivityexport", *[Fault(status=500)] * 3)
    run = run_tap(tmp_path, sandbox.tap_config(max_retries=2))
    assert run.returncode != 0
    assert "HTTP 500" in run.stderr
    assert "Gave up after 3 attempts" in run.stderr


@pytest.mark.parametrize(
    ("options", "overrides", "message"),
    [
        ({"corrupt_line": 7}, {}, r"\.json\.gz line 7: not JSON"),
        ({"corrupt_line": 5}, {"export_format": "csv"}, r"\.csv\.gz line 6: `time` 'not-a-time'"),
        ({"truncate_gzip": True}, {}, r"\.json\.gz: truncated gzip file"),
    ],
)
def test_bad_export_data_fails_without_advancing(sandbox, tmp_path, options, overrides, message):
    import re

    sandbox.cordial.options.update(options)
    # The files fall short of Cordial's count: the tap waits a moment for them to grow first.
    config = sandbox.tap_config(short_export_wait_seconds=0.1, **overrides)
    run = run_tap(tmp_path, config)
    assert run.returncode != 0
    assert re.search(r"Bad export data in singer-activity-[0-9a-f-]+" + message, run.stderr), (
        run.stderr[-2000:]
    )
    assert "Traceback" not in run.stderr
    assert run.states == [] or "replication_key_value" not in run.bookmark


def test_bad_record_missing_id_names_line(quiet, tmp_path):
    quiet.cordial.add_events([event("ok", T0 + timedelta(minutes=1)),
                              {"action": "open", "time": "2024-05-01T00:02:00+0000"}])
    run = run_tap(tmp_path, quiet.tap_config(start_date=iso(T0), end_date=iso(T0 + timedelta(1)),
                                             compress=False))
    assert run.returncode != 0
    assert re_search(r"\.json line 2: record without `_id`", run.stderr)


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_unknown_top_level_field_is_kept_and_named_once(quiet, tmp_path):
    quiet.cordial.add_events([event(f"e{i}", T0 + timedelta(minutes=i), newField=i)
                              for i in range(3)])
    run = run_tap(tmp_path, quiet.tap_config(start_date=iso(T0), end_date=iso(T0 + timedelta(1))))
    assert run.returncode == 0, run.stderr
    assert [r["newField"] for r in sorted(run.records, key=lambda r: r["_id"])] == [0, 1, 2]
    assert run.stderr.count("does not describe: newField") == 1


# -- CLI ----------------------------------------------------------------------------------------


def test_connection_test_creates_no_export(sandbox, tmp_path):
    run = run_tap(tmp_path, sandbox.tap_config(), "--test")
    assert run.returncode == 0, run.stderr
    assert "/health OK" in run.stderr
    assert "login OK, host key verified" in run.stderr
    assert sandbox.cordial.exports == []
    assert [p for _, p, _ in sandbox.cordial.request_log] == ["/v2/health"]
    bad = run_tap(tmp_path, sandbox.tap_config(api_key="wrong"), "--test")
    assert bad.returncode != 0
    assert "HTTP 401" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert "IP allow-list" in bad.stderr
    missing = run_tap(tmp_path, sandbox.tap_config(sftp_path="/no/such/folder"), "--test")
    assert missing.returncode != 0
    assert "cannot list SFTP folder '/no/such/folder'" in missing.stderr
    assert_clean(run, sandbox)


def test_sftp_reconnects_mid_file_without_loss_or_duplicates(sandbox: Sandbox):
    from tap_cordial_activity.sftp import SftpReader, SftpSettings

    payload = random.Random(9).randbytes(10_000_000)  # no period: a misplaced block shows
    (sandbox.sftp.root / "big.bin").write_bytes(payload)
    settings = SftpSettings(
        host=sandbox.sftp.host, port=sandbox.sftp.port, username=sandbox.sftp.username,
        password=sandbox.sftp.password, host_key=sandbox.sftp.host_key_line,
        reconnect_backoff_seconds=0.05,
    )
    with SftpReader(settings) as reader:
        remote = reader.open(f"{sandbox.sftp.sftp_path}/big.bin")
        got = bytearray()
        while len(got) < 3_000_000:
            got += remote.read(1 << 20)
        sandbox.sftp.drop_connections()
        while chunk := remote.read(1 << 20):
            got += chunk
        remote.close()
    assert remote.reconnects >= 1
    assert bytes(got) == payload
