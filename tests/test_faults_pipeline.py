"""Issue 7, end to end: `tap-cordial-activity | target-lytics` against the sandbox under faults.

Every test runs the two real CLIs joined by a pipe (real OpenSSH sshd, Cordial and Lytics
stand-ins) and measures the outcome where it matters: what the Lytics stand-in stored, both exit
codes, the message, and the STATE the target emitted (what Meltano would store). Every captured
output is searched for every secret in play.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_faults_helpers import (
    LYTICS_STREAM,
    PipelineRun,
    assert_no_secrets,
    bookmark_of,
    lytics_ids,
    run_pipeline,
    wait_until,
)
from test_tap_helpers import event, iso

import sandbox.cordial
import sandbox.lytics
from sandbox.cordial import DEFAULT_SAVED_KEY, CordialStandIn
from sandbox.events import ALL_ACTIONS
from sandbox.httpbase import Fault
from sandbox.pytest_plugin import Sandbox, empty_folder
from sandbox.sftp import SftpServer, generate_ed25519_key

T0 = datetime(2024, 5, 1, tzinfo=UTC)
DAY1 = T0 + timedelta(days=1)
DAY2 = T0 + timedelta(days=2)
COLLECT = "/collect/json/"
#: The state a previous successful run left: everything up to DAY1 delivered.
PRIOR_STATE = {
    "bookmarks": {
        "activity": {"replication_key": "time", "replication_key_value": iso(DAY1),
                     "boundary_ids": []}
    }
}


@pytest.fixture
def quiet(sftp_server: SftpServer, lytics: Any) -> Iterator[Sandbox]:
    """The sandbox without default events: each test adds exactly what it needs."""
    empty_folder(sftp_server.root)
    with CordialStandIn(
        sftp_root=sftp_server.root, sftp_path=sftp_server.sftp_path, events=[], sftp=sftp_server
    ) as cordial:
        yield Sandbox(sftp=sftp_server, cordial=cordial, lytics=lytics)
    empty_folder(sftp_server.root)


def day2_events(count: int = 40, prefix: str = "d2") -> list[dict[str, Any]]:
    """``count`` events spread over (DAY1, DAY2), in time order."""
    step = 86_000 // count
    return [event(f"{prefix}-{i}", DAY1 + timedelta(seconds=step * i + 1)) for i in range(count)]


def day2_config(box: Sandbox, **overrides: Any) -> dict[str, Any]:
    """A run over DAY1 .. DAY2 (one window), plain JSON Lines unless overridden."""
    return box.tap_config(
        start_date=iso(T0), end_date=iso(DAY2), export_window_hours=24, **overrides
    )


def assert_bookmark_not_advanced(run: PipelineRun, prior: dict[str, Any]) -> None:
    """The target emitted no STATE beyond ``prior`` (Meltano keeps the prior bookmark)."""
    for state in run.states:
        assert bookmark_of(state) in (None, bookmark_of(prior)), state


def final_line(stderr: str) -> str:
    """The last line a failed process printed: where the user looks for the reason."""
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else ""


def assert_exactly_once(ids: list[str], expected: set[str]) -> None:
    """Each expected id arrived once, and nothing else arrived."""
    twice = [i for i, n in Counter(ids).items() if n > 1]
    assert not twice, f"{len(twice)} events arrived more than once, e.g. {twice[:3]}"
    assert set(ids) == expected, (
        f"missing {len(expected - set(ids))}, unexpected {len(set(ids) - expected)}"
    )


# -- 1. SFTP ------------------------------------------------------------------------------------


def test_sftp_drop_midway_through_a_file_loses_and_duplicates_nothing(quiet: Sandbox, tmp_path):
    """The connection is cut while the tap is midway through a ~34 MB file (back-pressured by a
    slow Lytics); the tap resumes at its byte offset and Lytics gets every event exactly once.
    """
    quiet.cordial.add_generated(60_000, seed=11, start=T0, end=DAY1 - timedelta(seconds=1))
    expected = {e["_id"] for e in quiet.cordial.events}
    # The first upload hangs 3 s: the target stops reading, the pipe fills, the tap stalls with
    # at most its 16 MB prefetch window read ahead, well short of the file's end.
    quiet.lytics.inject(COLLECT, Fault(delay_seconds=3))
    config = quiet.tap_config(
        start_date=iso(T0), end_date=iso(DAY1), compress=False, actions=sorted(ALL_ACTIONS)
    )

    def drop_midway() -> None:
        # The target's first upload has begun (it took the delay fault): the tap is streaming
        # the file. A moment later the pipe is full and the tap is stalled midway.
        wait_until(lambda: quiet.lytics.pending_faults() == 0, what="the first upload")
        time.sleep(0.3)
        quiet.sftp.drop_connections()

    run = run_pipeline(tmp_path, config, quiet.target_config(max_request_bytes=1_000_000),
                       while_running=drop_midway)
    assert run.ok, run.describe()
    size = sum(p.stat().st_size for p in quiet.sftp.root.iterdir())
    assert size > 24 << 20, f"the file ({size} bytes) is too small to be cut midway"
    assert re.search(r"SFTP connection to \S+ lost \(\w+\); reconnecting", run.tap_stderr)
    assert re.search(r"Read singer-activity-\S+ \d+ bytes in .*, [1-9]\d* reconnects",
                     run.tap_stderr), run.tap_stderr[-2000:]
    assert_exactly_once(lytics_ids(quiet.lytics), expected)
    assert bookmark_of(run.state) == "2024-05-02T00:00:00+00:00"
    run.assert_no_secrets(quiet.secrets())


def _other_host_key() -> str:
    """A valid Ed25519 public key that is not the server's (`ssh-ed25519 AAAA...`)."""
    _, public = generate_ed25519_key()
    return " ".join(public.split()[:2])


SFTP_REFUSALS = [
    pytest.param("wrong-password", r"SFTP login as '[^']+' on \S+ with the password was refused",
                 id="wrong-password"),
    pytest.param("wrong-key", r"SFTP login as '[^']+' on \S+ with the private key was refused",
                 id="wrong-key"),
    pytest.param("unknown-host-key", r"host key of \S+ is unknown", id="unknown-host-key"),
    pytest.param("changed-host-key", r"DOES NOT MATCH", id="changed-host-key"),
]


@pytest.mark.parametrize(("case", "message"), SFTP_REFUSALS)
def test_sftp_refusal_is_a_clear_error_before_any_export(sandbox: Sandbox, tmp_path, case,
                                                         message):
    """The tap checks its SFTP login and the host key before it asks Cordial for an export.

    tests/test_tap_sync.py checks these messages in detail; here the whole pipeline's outcome
    and the secrets (including the wrong credentials) are checked.
    """
    other_key, _ = generate_ed25519_key()
    extra_secrets = ["wrong-sftp-password", *_key_lines(other_key)]
    if case == "wrong-password":
        config = sandbox.tap_config(sftp_private_key=None, sftp_password="wrong-sftp-password")
    elif case == "wrong-key":
        config = sandbox.tap_config(sftp_password=None, sftp_private_key=other_key,
                                    cordial_saved_key=DEFAULT_SAVED_KEY)
    elif case == "unknown-host-key":
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text("")
        config = sandbox.tap_config(sftp_host_key=None, sftp_known_hosts_path=str(known_hosts))
    else:
        config = sandbox.tap_config(sftp_host_key=_other_host_key())
    run = run_pipeline(tmp_path, config, sandbox.target_config())
    assert run.tap_returncode != 0
    assert re.search(message, final_line(run.tap_stderr)), run.tap_stderr[-2000:]
    assert sandbox.cordial.exports == []
    assert sandbox.lytics.total() == 0
    assert run.states == []
    run.assert_no_secrets([*sandbox.secrets(), *extra_secrets])


def _key_lines(private_key: str) -> list[str]:
    return [line for line in private_key.splitlines() if line and not line.startswith("-----")]


# -- 2. Cordial ---------------------------------------------------------------------------------


def test_cordial_429_on_create_and_poll_and_5xx_bursts_then_delivered(quiet: Sandbox, tmp_path):
    added = day2_events()
    quiet.cordial.add_events(added)
    quiet.cordial.inject("/v2/contactactivityexport", Fault(status=429, retry_after=1),
                         Fault(status=500), Fault(status=500), Fault(status=503))
    quiet.cordial.inject("/v2/jobs/", Fault(status=429, retry_after=1), Fault(status=503),
                         Fault(status=503), Fault(status=500))
    run = run_pipeline(tmp_path, day2_config(quiet), quiet.target_config(), state=PRIOR_STATE)
    assert run.ok, run.describe()
    assert quiet.cordial.pending_faults() == 0
    assert run.seconds >= 2, "both Retry-After waits were honoured"
    assert run.tap_stderr.count("HTTP 429") >= 2
    assert "HTTP 503" in run.tap_stderr
    # A 429 on the create call did not create a second job: one export, one job.
    assert len(quiet.cordial.exports) == 1
    assert len(quiet.cordial.jobs) == 1
    assert_exactly_once(lytics_ids(quiet.lytics), {e["_id"] for e in added})
    assert bookmark_of(run.state) == "2024-05-03T00:00:00+00:00"
    run.assert_no_secrets(quiet.secrets())


@pytest.mark.parametrize(
    ("options", "overrides", "message"),
    [
        pytest.param({"fail_jobs": True, "fail_message": "SFTP write failed"}, {},
                     r"Cordial export job [0-9a-f]{24} failed: SFTP write failed", id="failed"),
        pytest.param({"never_finish": True}, {"job_timeout_seconds": 0.5},
                     r"Cordial export job [0-9a-f]{24} did not finish within 0\.5s",
                     id="never-finishes"),
    ],
)
def test_cordial_job_that_fails_keeps_the_bookmark(quiet: Sandbox, tmp_path, options, overrides,
                                                    message):
    added = day2_events()
    quiet.cordial.add_events(added)
    quiet.cordial.options.update(options)
    run = run_pipeline(tmp_path, day2_config(quiet, **overrides), quiet.target_config(),
                       state=PRIOR_STATE)
    assert run.tap_returncode != 0
    assert re.search(message, final_line(run.tap_stderr)), run.tap_stderr[-2000:]
    assert quiet.lytics.total() == 0
    assert_bookmark_not_advanced(run, PRIOR_STATE)
    run.assert_no_secrets(quiet.secrets())

    # The next run, with Cordial healthy again, delivers the window exactly once.
    quiet.cordial.options.update({"fail_jobs": False, "never_finish": False})
    rerun = run_pipeline(tmp_path / "rerun", day2_config(quiet), quiet.target_config(),
                         state=PRIOR_STATE)
    assert rerun.ok, rerun.describe()
    assert_exactly_once(lytics_ids(quiet.lytics), {e["_id"] for e in added})
    assert bookmark_of(rerun.state) == "2024-05-03T00:00:00+00:00"


@pytest.mark.parametrize("status", [401, 403])
def test_cordial_401_403_mention_the_key_and_the_ip_allow_list(quiet: Sandbox, tmp_path, status):
    quiet.cordial.add_events(day2_events())
    config = day2_config(quiet)
    if status == 401:
        config["api_key"] = "not-the-cordial-key"
    else:
        quiet.cordial.inject("/v2/contactactivityexport", Fault(status=403))
    run = run_pipeline(tmp_path, config, quiet.target_config(), state=PRIOR_STATE)
    assert run.tap_returncode != 0
    assert f"HTTP {status}" in run.tap_stderr
    assert "Check the Cordial API key (`api_key`)" in run.tap_stderr
    assert "IP allow-list" in run.tap_stderr
    assert "retry" not in run.tap_stderr  # not retried: waiting would not fix a key
    assert quiet.cordial.jobs == {}
    assert quiet.lytics.total() == 0
    assert_bookmark_not_advanced(run, PRIOR_STATE)
    run.assert_no_secrets([*quiet.secrets(), "not-the-cordial-key"])


# -- 3. Lytics ----------------------------------------------------------------------------------


def test_lytics_429_500_503_bursts_are_retried_then_delivered_once(quiet: Sandbox, tmp_path):
    added = day2_events(300)
    quiet.cordial.add_events(added)
    quiet.lytics.inject(COLLECT, Fault(status=429, retry_after=0.5), Fault(status=429),
                        Fault(status=500), Fault(status=500), Fault(status=503),
                        Fault(status=503), Fault(reset=True))
    run = run_pipeline(tmp_path, day2_config(quiet),
                       quiet.target_config(max_request_bytes=20_000), state=PRIOR_STATE)
    assert run.ok, run.describe()
    assert quiet.lytics.pending_faults() == 0
    for status in (429, 500, 503):
        assert f"HTTP {status}" in run.target_stderr
    # None of those faults stored anything: every event exactly once, over several requests.
    assert len([r for r in quiet.lytics.requests if r.status == 200]) > 1
    assert_exactly_once(lytics_ids(quiet.lytics), {e["_id"] for e in added})
    assert bookmark_of(run.state) == "2024-05-03T00:00:00+00:00"
    run.assert_no_secrets(quiet.secrets())


def test_lytics_timeout_after_store_delivers_at_least_once(quiet: Sandbox, tmp_path):
    """Lytics stores a request but answers after the target gave up: the retry stores it again.

    At-least-once, and the duplicates are exactly that one request's events.
    """
    added = day2_events(300)
    quiet.cordial.add_events(added)
    quiet.lytics.inject(COLLECT, Fault(delay_seconds=1.5))
    run = run_pipeline(
        tmp_path, day2_config(quiet),
        quiet.target_config(max_request_bytes=20_000, request_timeout_seconds=0.5),
        state=PRIOR_STATE,
    )
    assert run.ok, run.describe()
    assert "timed out" in run.target_stderr.lower() or "timeout" in run.target_stderr.lower()
    # The stand-in stores the delayed request once its delay is over, after the target gave up.
    wait_until(lambda: len(lytics_ids(quiet.lytics)) > len(added), timeout=5,
               what="the timed-out request to be stored")
    ids = lytics_ids(quiet.lytics)
    assert set(ids) == {e["_id"] for e in added}  # every event at least once
    duplicated = {i for i, n in Counter(ids).items() if n > 1}
    # The duplicates are exactly the events of the one request that timed out.
    bodies = [{e["cr_system_event_id"] for e in orjson.loads(r.body)}
              for r in quiet.lytics.requests]
    assert duplicated in bodies
    assert all(n <= 2 for n in Counter(ids).values())
    assert bookmark_of(run.state) == "2024-05-03T00:00:00+00:00"
    run.assert_no_secrets(quiet.secrets())


@pytest.mark.parametrize(
    ("status", "advice"),
    [(401, "check api_token"), (403, "IP allow-list"), (413, "lower max_request_bytes")],
    ids=["401", "403", "413"],
)
def test_lytics_401_403_413_end_the_run_without_state(quiet: Sandbox, tmp_path, status, advice):
    added = day2_events()
    quiet.cordial.add_events(added)
    target_config = quiet.target_config()
    if status == 401:
        target_config["api_token"] = "not-the-lytics-token"
    else:
        quiet.lytics.inject(COLLECT, Fault(status=status), Fault(status=status))
    run = run_pipeline(tmp_path, day2_config(quiet), target_config, state=PRIOR_STATE)
    assert run.target_returncode != 0
    assert f"HTTP {status}" in run.target_stderr
    assert advice in run.target_stderr
    assert f"HTTP {status}" in final_line(run.target_stderr)
    assert quiet.lytics.total() == 0
    assert_bookmark_not_advanced(run, PRIOR_STATE)  # Meltano keeps the prior bookmark
    if status != 401:
        assert quiet.lytics.pending_faults() == 1  # a 4xx is not retried
    run.assert_no_secrets([*quiet.secrets(), "not-the-lytics-token"])


def test_lytics_rejected_events_end_the_run_and_state_does_not_cover_them(
    quiet: Sandbox, tmp_path, monkeypatch
):
    """Lytics accepts a request but refuses one event in it (rejected_count = 1)."""
    added = day2_events(200)
    quiet.cordial.add_events(added)
    victim = added[150]["_id"]
    # Lytics refuses it without saying why (the stand-in's switch for that).
    quiet.lytics.set_options(refuse_where={"field": "cr_system_event_id", "equals": victim})
    run = run_pipeline(tmp_path, day2_config(quiet),
                       quiet.target_config(max_request_bytes=10_000), state=PRIOR_STATE)
    assert run.target_returncode != 0
    assert re.search(r"rejected 1 of \d+ events", run.target_stderr), run.target_stderr[-2000:]
    assert quiet.lytics.rejected == {LYTICS_STREAM: 1}
    assert victim not in lytics_ids(quiet.lytics)
    # No STATE covers the refused event (its time is after the prior bookmark).
    assert_bookmark_not_advanced(run, PRIOR_STATE)
    run.assert_no_secrets(quiet.secrets())


# -- 5. bad files -------------------------------------------------------------------------------


def test_lytics_refused_event_set_aside_with_a_limit_and_the_pipeline_goes_on(
    quiet: Sandbox, tmp_path
):
    """The same refusal with max_rejected_records: the event is in cordial_activity_rejects."""
    added = day2_events(200)
    quiet.cordial.add_events(added)
    victim = added[150]["_id"]
    quiet.lytics.set_options(refuse_where={"field": "cr_system_event_id", "equals": victim})
    target = quiet.target_config(max_request_bytes=10_000, max_rejected_records=1)
    run = run_pipeline(tmp_path, day2_config(quiet), target, state=PRIOR_STATE)
    assert run.target_returncode == 0, run.target_stderr[-2000:]
    stored = lytics_ids(quiet.lytics)
    assert sorted(stored) == sorted(e["_id"] for e in added if e["_id"] != victim)
    [reject] = quiet.lytics.events["cordial_activity_rejects"]
    assert reject["key"] == {"_id": victim}
    # Each event went out in one real request; the dry runs that found it stored nothing.
    real = [r for r in quiet.lytics.requests if r.stream == LYTICS_STREAM and not r.dryrun]
    assert sum(r.message_count for r in real) == len(added)
    assert bookmark_of(run.states[-1]) != bookmark_of(PRIOR_STATE)
    assert "1 set aside" in run.target_stderr
    run.assert_no_secrets(quiet.secrets())


def _add_extra_csv_column(monkeypatch: pytest.MonkeyPatch, line: int) -> None:
    """Make the Cordial stand-in write CSV line ``line`` with one column too many."""
    original = sandbox.cordial.write_export

    def write_export(job: Any, store: Any, selected: list[int], folder: Path) -> list[str]:
        names = original(job, store, selected, folder)
        path = folder / names[0]
        lines = path.read_bytes().split(b"\n")
        lines[line - 1] += b",surplus"
        path.write_bytes(b"\n".join(lines))
        return names

    monkeypatch.setattr(sandbox.cordial, "write_export", write_export)


BAD_FILES = [
    pytest.param({"corrupt_line": 7}, {}, [], r"\.json line 7: not JSON", id="non-json-line"),
    pytest.param({"truncate_gzip": True}, {"compress": True}, [],
                 r"\.json\.gz: truncated gzip file", id="truncated-gzip"),
    pytest.param({}, {"export_format": "csv"}, "csv-columns",
                 r"\.csv line 5: 21 columns where the header has 20", id="csv-column-count"),
    pytest.param({}, {}, [{"action": "open", "cID": "c", "time": iso(DAY1 + timedelta(hours=2))
                           .replace("Z", "+0000")}],
                 r"\.json line \d+: record without `_id`", id="missing-id"),
    pytest.param({}, {}, [{"_id": "no-time", "cID": "c", "action": "open"}],
                 r"\.json line \d+: record no-time without `time`", id="missing-time"),
    pytest.param({}, {}, [event("bad-time", "2024-05-02 noonish")],
                 r"\.json line \d+: `time` '2024-05-02 noonish' is not an ISO 8601",
                 id="unparseable-time"),
]


@pytest.mark.parametrize(("options", "overrides", "bad", "message"), BAD_FILES)
def test_bad_file_is_a_clear_error_with_file_and_line_and_keeps_the_bookmark(
    quiet: Sandbox, tmp_path, monkeypatch, options, overrides, bad, message
):
    quiet.cordial.add_events(day2_events())
    if bad == "csv-columns":
        _add_extra_csv_column(monkeypatch, line=5)
    elif bad:
        quiet.cordial.add_events(bad)
    quiet.cordial.options.update(options)
    config = day2_config(quiet, **{"compress": False, **overrides})
    run = run_pipeline(tmp_path, config, quiet.target_config(), state=PRIOR_STATE)
    assert run.tap_returncode != 0
    assert re.search(r"Bad export data in singer-activity-[0-9a-f-]+" + message,
                     final_line(run.tap_stderr)), run.tap_stderr[-2000:]
    # Records before the bad line may have been delivered; no STATE covers them, so the next run
    # starts from the prior bookmark again (at-least-once).
    assert_bookmark_not_advanced(run, PRIOR_STATE)
    assert set(lytics_ids(quiet.lytics)) <= {e["_id"] for e in day2_events()}
    run.assert_no_secrets(quiet.secrets())


@pytest.mark.parametrize("export_format", ["json", "csv"])
def test_zero_event_window_succeeds_with_nothing_emitted(quiet: Sandbox, tmp_path, export_format):
    run = run_pipeline(tmp_path, day2_config(quiet, export_format=export_format),
                       quiet.target_config(), state=PRIOR_STATE)
    assert run.ok, run.describe()
    assert len(quiet.cordial.exports) == 1
    files = list(quiet.sftp.root.iterdir())
    assert files, "Cordial wrote no (empty) export file"
    # Nothing stored; only the target's check of the endpoint and token (an empty dry run).
    assert [(r.body, r.query.get("dryrun")) for r in quiet.lytics.requests] == [(b"[]", "true")]
    assert quiet.lytics.total() == 0
    assert bookmark_of(run.state) == "2024-05-03T00:00:00+00:00"
    run.assert_no_secrets(quiet.secrets())


def test_secret_helper_catches_a_leak():
    """The shared check fails on a leak, and names the output, not the value."""
    with pytest.raises(AssertionError, match=r"secret #1 in log") as caught:
        assert_no_secrets(["k-1", "s3cr3t"], out="fine", log="password is s3cr3t")
    assert "s3cr3t" not in str(caught.value)
