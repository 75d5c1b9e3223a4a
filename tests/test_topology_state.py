"""Two workers, one pipeline: the state lives outside either worker (PostgreSQL or S3).

Worker A and worker B are two separate copies of the Meltano project, each with its own plugin
installs, as two machines of an orchestrator would have. They share only what docs/operations.md
("State backend") says to share: the PostgreSQL system database (`MELTANO_DATABASE_URI`), or the
S3 state backend (`MELTANO_STATE_BACKEND_URI`). The servers are real: Debian's PostgreSQL and
moto's S3 server, each a separate process on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_meltano import (
    LYTICS_STREAM,
    MELTANO,
    STATE_ID,
    Meltano,
    _base_env,
    _bookmark,
    _exported,
    _new_events_after,
    _same_instant,
    _setting_env,
)
from topology_services import MotoS3Server

pytestmark = pytest.mark.meltano

JOB = "cordial-activity-to-lytics"
RUN_JOB = ("--environment=sandbox", "run", JOB)


def _worker(project: Path, sandbox: Any, shared: dict[str, str], secret: list[str]) -> Meltano:
    """Meltano in one worker's project copy, wired to the sandbox and the shared state store."""
    env = _base_env()
    env.update(_setting_env("TAP_CORDIAL_ACTIVITY", sandbox.tap_config()))
    env.update(_setting_env("TARGET_LYTICS", sandbox.target_config()))
    env.update(shared)
    return Meltano(project=project, env=env, secrets=[*sandbox.secrets(), *secret])


def _start(worker: Meltano, log: Path, *args: str) -> subprocess.Popen[str]:
    """Start `meltano ARGS` in the background, output into `log`."""
    with log.open("w", encoding="utf-8") as out:
        return subprocess.Popen(
            [str(MELTANO), *args],
            cwd=worker.project,
            env=worker.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _finish(worker: Meltano, process: subprocess.Popen[str], log: Path) -> str:
    """Wait for a background run; it must succeed and print no secret."""
    returncode = process.wait(timeout=300)
    output = log.read_text("utf-8")
    assert not [s for s in worker.secrets if s in output], "a background run printed a secret"
    assert returncode == 0, f"background meltano exited {returncode}\n{output[-6000:]}"
    return output


def _wait_for(condition: Callable[[], bool], what: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert process.poll() is None, f"the background run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _hold_cordial_jobs(sandbox: Any) -> None:
    """Export jobs stay `Processing` until `_release_cordial_jobs`: worker A's run stays open."""
    sandbox.cordial.options.never_finish = True


def _release_cordial_jobs(sandbox: Any) -> None:
    sandbox.cordial.options.never_finish = False
    for job in list(sandbox.cordial.jobs.values()):
        job.options.never_finish = False


def _delivered_ids(sandbox: Any) -> list[str]:
    return [e["cr_system_event_id"] for e in sandbox.lytics.events.get(LYTICS_STREAM, [])]


def _assert_b_delivers_exactly_new_events(a: Meltano, b: Meltano, sandbox: Any) -> str:
    """Add events after A's bookmark; B's run sends those and nothing else. Returns B's bookmark."""
    a_bookmark = _bookmark(a.state())
    before = _delivered_ids(sandbox)
    exports_before = len(sandbox.cordial.exports)
    template = list(_exported(sandbox.cordial.events).values())[:20]
    added = _new_events_after(a_bookmark, template)
    sandbox.cordial.add_events(added)

    b(*RUN_JOB)

    after = _delivered_ids(sandbox)
    assert after[: len(before)] == before
    assert sorted(after[len(before) :]) == sorted(e["_id"] for e in added)
    b_exports = sandbox.cordial.exports[exports_before:]
    assert _same_instant(
        b_exports[0]["selected_timeframe_start"].replace("Z", "+00:00"), a_bookmark
    ), "worker B did not start from worker A's bookmark"
    b_bookmark = _bookmark(b.state())
    assert dt.datetime.fromisoformat(b_bookmark) > dt.datetime.fromisoformat(a_bookmark)
    # Both workers read the same store.
    assert _bookmark(a.state()) == b_bookmark
    return b_bookmark


def test_postgres_system_database_shared_by_two_workers(
    worker_projects, postgres, sandbox, tmp_path
):
    dbname = postgres.create_database()
    shared = {"MELTANO_DATABASE_URI": postgres.meltano_uri(dbname), "PGPASSWORD": postgres.password}
    project_a, project_b = worker_projects
    a = _worker(project_a, sandbox, shared, [postgres.password])
    b = _worker(project_b, sandbox, shared, [postgres.password])

    # Worker A's run is held open (its first export job does not finish) while B tries the job.
    _hold_cordial_jobs(sandbox)
    log_a = tmp_path / "worker-a.log"
    run_a = _start(a, log_a, *RUN_JOB)
    try:
        _wait_for(lambda: bool(sandbox.cordial.jobs), "worker A's first export job", run_a)
        refused = b(*RUN_JOB, check=False)
        assert run_a.poll() is None, "worker A finished before worker B tried: not concurrent"
    finally:
        _release_cordial_jobs(sandbox)
    _finish(a, run_a, log_a)

    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert f"Another '{STATE_ID}' pipeline is already running" in output, output[-3000:]
    with postgres.connect(dbname) as conn:
        runs = conn.execute(
            "SELECT state, COUNT(*) FROM runs WHERE job_name = %s GROUP BY state", (STATE_ID,)
        ).fetchall()
        # The refusal left no run row and no state of its own: only A's successful run.
        assert runs == [("SUCCESS", 1)]
        stored = conn.execute("SELECT state_id FROM state").fetchall()
        assert stored == [(STATE_ID,)]

    # Worker A delivered every exported event exactly once; B's refusal sent nothing.
    delivered = _delivered_ids(sandbox)
    assert sorted(delivered) == sorted(_exported(sandbox.cordial.events))

    _assert_b_delivers_exactly_new_events(a, b, sandbox)


def _s3_state_key(moto_s3: MotoS3Server, bucket: str, prefix: str) -> str:
    keys = [
        o["Key"]
        for o in moto_s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    ]
    assert keys == [f"{prefix}/{STATE_ID}/state.json"], keys
    return keys[0]


def _s3_bookmark(moto_s3: MotoS3Server, bucket: str, key: str) -> str:
    body = moto_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    stored = json.loads(body)
    return _bookmark(stored["completed"]["singer_state"])


def test_s3_state_backend_shared_by_two_workers(worker_projects, moto_s3, sandbox, tmp_path):
    bucket, prefix = "meltano-state-" + secrets.token_hex(4), "cordial-activity"
    s3 = moto_s3.client()
    s3.create_bucket(Bucket=bucket)
    shared = {
        "MELTANO_STATE_BACKEND_URI": f"s3://{bucket}/{prefix}",
        # A lock counts for 10 s by default; long enough here that only its removal frees B.
        "MELTANO_STATE_BACKEND_LOCK_TIMEOUT_SECONDS": "600",
        **moto_s3.env(),
    }
    project_a, project_b = worker_projects
    # Each worker keeps its own throwaway system database: only the state is shared.
    a = _worker(
        project_a, sandbox, {**shared, "MELTANO_DATABASE_URI": f"sqlite:///{tmp_path / 'a.db'}"}, []
    )
    b = _worker(
        project_b, sandbox, {**shared, "MELTANO_DATABASE_URI": f"sqlite:///{tmp_path / 'b.db'}"}, []
    )

    a(*RUN_JOB)
    assert sorted(_delivered_ids(sandbox)) == sorted(_exported(sandbox.cordial.events))
    key = _s3_state_key(moto_s3, bucket, prefix)
    a_bookmark = _s3_bookmark(moto_s3, bucket, key)
    assert a_bookmark == _bookmark(a.state())

    # Another writer holds the state ID's lock object (as Meltano writes it around a state
    # update): B's run waits for it and writes no state until it is gone.
    lock_key = f"{prefix}/{STATE_ID}/lock"
    s3.put_object(Bucket=bucket, Key=lock_key, Body=str(time.time()).encode())
    delivered = _delivered_ids(sandbox)
    exports_before = len(sandbox.cordial.exports)
    template = list(_exported(sandbox.cordial.events).values())[:20]
    added = _new_events_after(a_bookmark, template)
    sandbox.cordial.add_events(added)
    log_b = tmp_path / "worker-b.log"
    jobs_before = len(sandbox.cordial.jobs)
    run_b = _start(b, log_b, *RUN_JOB)
    try:
        # B's export is done (the tap polls Cordial on its own); unhindered, its records and
        # STATE would follow within a second or two. Held by the lock, its state stays A's.
        _wait_for(
            lambda: (
                len(sandbox.cordial.jobs) > jobs_before
                and all(
                    j.status == "Done" for j in list(sandbox.cordial.jobs.values())[jobs_before:]
                )
            ),
            "worker B's export job to finish",
            run_b,
        )
        time.sleep(5)  # five of Meltano's one-second lock retries
        assert run_b.poll() is None, "worker B finished while the lock was held"
        assert _s3_bookmark(moto_s3, bucket, key) == a_bookmark
    finally:
        s3.delete_object(Bucket=bucket, Key=lock_key)
    _finish(b, run_b, log_b)

    # Released, B delivers exactly the new events, starting from A's bookmark.
    after = _delivered_ids(sandbox)
    assert after[: len(delivered)] == delivered
    assert sorted(after[len(delivered) :]) == sorted(e["_id"] for e in added)
    b_export = sandbox.cordial.exports[exports_before]
    assert _same_instant(b_export["selected_timeframe_start"].replace("Z", "+00:00"), a_bookmark)
    b_bookmark = _s3_bookmark(moto_s3, bucket, key)
    assert dt.datetime.fromisoformat(b_bookmark) > dt.datetime.fromisoformat(a_bookmark)
    assert _bookmark(a.state()) == b_bookmark
    # Meltano removed its own lock after writing: only the state object is left.
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    assert [o["Key"] for o in listed] == [key]
