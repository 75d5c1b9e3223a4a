"""Dagster runs the Meltano job: the definitions in orchestrate/dagster/, executed in-process.

The run goes through the Dagster instance that orchestrate/dagster/dagster.yaml describes: its
storage is a real PostgreSQL database (dagster-postgres), as in a deployment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType

import pytest
import yaml
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Failure,
    build_op_context,
    build_run_status_sensor_context,
    build_schedule_context,
)
from test_meltano import (
    BIN,
    LYTICS_STREAM,
    MELTANO,
    PLUGIN_ENV_PREFIXES,
    ROOT,
    _bookmark,
    _exported,
)
from test_topology_state import _worker

from sandbox.sftp import free_port

pytestmark = pytest.mark.meltano

DEFINITIONS = ROOT / "orchestrate" / "dagster" / "definitions.py"
INSTANCE_DIR = ROOT / "orchestrate" / "dagster"


def _load_definitions() -> ModuleType:
    """orchestrate/dagster/definitions.py as `dagster dev -f` loads it: a file, not a package."""
    spec = importlib.util.spec_from_file_location("cordial_activity_dagster", DEFINITIONS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def dagster_instance(postgres, monkeypatch, tmp_path):
    """The instance orchestrate/dagster/dagster.yaml describes, on a fresh PostgreSQL database."""
    monkeypatch.setenv("DAGSTER_PG_HOST", postgres.host)
    monkeypatch.setenv("DAGSTER_PG_PORT", str(postgres.port))
    monkeypatch.setenv("DAGSTER_PG_DB", postgres.create_database())
    monkeypatch.setenv("DAGSTER_PG_USERNAME", postgres.user)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", postgres.password)
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text((INSTANCE_DIR / "dagster.yaml").read_text("utf-8"), "utf-8")
    with DagsterInstance.from_config(str(home)) as instance:
        yield instance


def test_definitions_follow_meltano_yml():
    definitions = _load_definitions()
    job = definitions.defs.get_job_def("cordial_activity_to_lytics")
    assert job.tags == {"meltano/job": "cordial-activity-to-lytics"}
    [schedule] = [s for s in definitions.defs.schedules if s.job_name == job.name]
    project = yaml.safe_load((ROOT / "meltano.yml").read_text("utf-8"))
    [meltano_schedule] = [
        s for s in project["schedules"] if s["job"] == "cordial-activity-to-lytics"
    ]
    assert schedule.cron_schedule == meltano_schedule["interval"] == "0 */6 * * *"
    [op] = job.graph.node_defs
    assert op.retry_policy is not None
    assert op.retry_policy.max_retries == 2
    assert op.pool == "meltano-cordial-activity-to-lytics"
    # The instance config limits the job's tag to one run and every pool to one op.
    instance_config = yaml.safe_load((INSTANCE_DIR / "dagster.yaml").read_text("utf-8"))
    [limit] = instance_config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert limit == {"key": "meltano/job", "value": "cordial-activity-to-lytics", "limit": 1}
    assert instance_config["concurrency"]["pools"]["default_limit"] == 1


def test_dagster_job_runs_the_meltano_job_into_lytics(
    worker_projects,
    sandbox,
    dagster_instance,
    monkeypatch,
    tmp_path,
):
    # The op's `meltano` gets its settings from the process environment, as in a deployment.
    project = worker_projects[0]
    worker = _worker(
        project,
        sandbox,
        {"MELTANO_DATABASE_URI": f"sqlite:///{tmp_path / 'meltano.db'}"},
        [],
    )
    for name in [n for n in os.environ if n.startswith(PLUGIN_ENV_PREFIXES)]:
        monkeypatch.delenv(name)
    for name, value in worker.env.items():
        monkeypatch.setenv(name, value)
    definitions = _load_definitions()
    job = definitions.defs.get_job_def("cordial_activity_to_lytics")
    run_config = {
        "resources": {
            "meltano": {
                "config": {
                    "project_root": str(project),
                    "environment": "sandbox",
                    "executable": str(MELTANO),
                }
            }
        }
    }

    result = job.execute_in_process(run_config=run_config, instance=dagster_instance)

    assert result.success
    received = [e["cr_system_event_id"] for e in sandbox.lytics.events[LYTICS_STREAM]]
    assert sorted(received) == sorted(_exported(sandbox.cordial.events))
    assert _bookmark(worker.state())
    [record] = dagster_instance.get_run_records()
    assert record.dagster_run.status == DagsterRunStatus.SUCCESS
    assert record.dagster_run.tags["meltano/job"] == "cordial-activity-to-lytics"
    logged = "\n".join(e.user_message for e in dagster_instance.all_logs(record.dagster_run.run_id))
    assert "Run completed" in logged  # meltano's own output reached Dagster's log
    assert not [s for s in worker.secrets if s in logged], "a secret reached Dagster's log"

    # The schedule asks for a run; with one still in progress it skips the tick.
    [schedule] = [s for s in definitions.defs.schedules if s.name == "every_6_hours"]
    with build_schedule_context(instance=dagster_instance) as context:
        assert schedule.evaluate_tick(context).skip_message is None
    dagster_instance.add_run(
        DagsterRun(job_name=job.name, status=DagsterRunStatus.STARTED, tags=job.tags)
    )
    with build_schedule_context(instance=dagster_instance) as context:
        skip = schedule.evaluate_tick(context).skip_message
    assert skip is not None
    assert "still active" in skip


def test_dagster_dev_serves_the_job_and_its_running_schedule(tmp_path):
    """The README's local command, `dagster dev -f orchestrate/dagster/definitions.py`."""
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", "utf-8")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    log = tmp_path / "dagster-dev.log"
    query = (
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { jobs { name } "
        "schedules { name cronSchedule scheduleState { status } } } } } }"
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(BIN / "dagster"),
                "dev",
                "-f",
                str(DEFINITIONS),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its webserver, daemon and code servers share this group
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text("utf-8", "replace")[-3000:]
            assert time.monotonic() < deadline, log.read_text("utf-8", "replace")[-3000:]
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql",
                    data=json.dumps({"query": query}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                    answer = json.loads(response.read())
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    [repository] = answer["data"]["repositoriesOrError"]["nodes"]
    assert repository["jobs"] == [{"name": "cordial_activity_to_lytics"}]
    assert repository["schedules"] == [
        {
            "name": "every_6_hours",
            "cronSchedule": "0 */6 * * *",
            "scheduleState": {"status": "RUNNING"},
        }
    ]


def test_failed_run_alerts_the_webhook(dagster_instance, monkeypatch, tmp_path):
    alerts: list[dict] = []

    class Webhook(BaseHTTPRequestHandler):
        def do_POST(self):
            alerts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook")
        definitions = _load_definitions()
        job = definitions.defs.get_job_def("cordial_activity_to_lytics")
        # A meltano that cannot start fails the run at once: no retry would help.
        missing = tmp_path / "no-such-meltano"
        run_config = {"resources": {"meltano": {"config": {"executable": str(missing)}}}}
        result = job.execute_in_process(
            run_config=run_config, instance=dagster_instance, raise_on_error=False
        )
        assert not result.success
        event_types = [e.event_type_value for e in result.all_events]
        assert "STEP_UP_FOR_RETRY" not in event_types
        [step_failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert f"cannot start {missing}" in str(step_failure.event_specific_data)

        [sensor] = [s for s in definitions.defs.sensors if s.name == "alert_on_failed_run"]
        context = build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=result.get_run_failure_event(),
            dagster_instance=dagster_instance,
            dagster_run=result.dagster_run,
        ).for_run_failure()
        sensor(context)
    finally:
        server.shutdown()
        server.server_close()
    [alert] = alerts
    assert alert["text"].startswith(
        f"Dagster run {result.run_id} of cordial_activity_to_lytics failed"
    )
    # The alert says what failed, not only which step.
    assert f"cannot start {missing}" in alert["text"]


def test_a_run_failing_over_refused_events_names_them(tmp_path):
    """The failure (and so the alert) quotes target-lytics' line about set-aside events."""
    definitions = _load_definitions()
    line = (
        "Lytics rejected 1 of 200 events sent to stream 'cordial_activity' (accepted 199); ... "
        "To set such events aside into Lytics stream 'cordial_activity_rejects' and go on, set "
        "max_rejected_records (default 0: none)."
    )
    fake = tmp_path / "meltano"
    output = tmp_path / "output.txt"
    output.write_text(f"target-lytics | {line}\n")
    fake.write_text(f"#!/bin/sh\ncat '{output}'\nexit 1\n")
    fake.chmod(0o755)
    project = definitions.MeltanoProject(project_root=str(tmp_path), executable=str(fake))
    with pytest.raises(Failure) as failure:
        project.run_job(build_op_context(), "cordial-activity-to-lytics")
    description = failure.value.description or ""
    assert description.startswith("meltano run cordial-activity-to-lytics exited 1; target-lytics")
    assert "cordial_activity_rejects" in description
    assert line in description


@pytest.mark.parametrize(
    "line",
    [
        "Bad export data in singer-activity-x.json line 7: not JSON (...) (`max_bad_records` is 0: "
        "a bad record fails the run; set it to N to set up to N bad records per run aside in the "
        "`activity_rejects` stream)",
        "Bad export data in singer-activity-x.json line 9: not JSON (...). That is bad record 3 of "
        "this run, over `max_bad_records` (2): the run fails and no STATE moves past the window",
    ],
)
def test_a_run_failing_over_a_bad_record_names_the_tap_setting(tmp_path, line):
    """The failure (and so the alert) quotes the tap's line about bad records."""
    definitions = _load_definitions()
    fake = tmp_path / "meltano"
    output = tmp_path / "output.txt"
    output.write_text(
        "tap-cordial-activity | Set aside a bad record (1 of at most 2 this run, "
        "`max_bad_records`) in `activity_rejects`: ...\n"
        f"tap-cordial-activity | {line}\n"
    )
    fake.write_text(f"#!/bin/sh\ncat '{output}'\nexit 1\n")
    fake.chmod(0o755)
    project = definitions.MeltanoProject(project_root=str(tmp_path), executable=str(fake))
    with pytest.raises(Failure) as failure:
        project.run_job(build_op_context(), "cordial-activity-to-lytics")
    description = failure.value.description or ""
    assert description.startswith(
        "meltano run cordial-activity-to-lytics exited 1; tap-cordial-activity: a bad record"
    )
    assert "activity_rejects" in description
    assert description.endswith(line)
