"""Dagster runs the Meltano job `cordial-activity-to-lytics` every 6 hours, one run at a time.

Load with `dagster dev -f orchestrate/dagster/definitions.py` (or a `workspace.yaml` entry). The op
runs `meltano run` as a subprocess in the Meltano project, so plugins, settings and state work
exactly as on the command line; credentials come from the process environment.
"""

# No `from __future__ import annotations`: Dagster reads the `context` annotation at runtime.
import json
import os
import subprocess
import urllib.request
from collections import deque
from pathlib import Path

import yaml
from dagster import (
    Backoff,
    ConfigurableResource,
    DagsterEventType,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    Failure,
    Jitter,
    OpExecutionContext,
    RetryPolicy,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    job,
    op,
    run_failure_sensor,
    schedule,
)

MELTANO_JOB = "cordial-activity-to-lytics"
# Dagster names allow letters, digits and underscores only.
DAGSTER_JOB = "cordial_activity_to_lytics"
# One run at a time: dagster.yaml's run queue limits runs carrying this tag to one, the schedule
# skips a tick while a run is queued or in progress, and the op's pool has a limit of one.
CONCURRENCY_TAG = "meltano/job"
POOL = "meltano-cordial-activity-to-lytics"
DEFAULT_PROJECT_ROOT = Path(__file__).resolve().parents[2]
ACTIVE_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
OUTPUT_TAIL_LINES = 40
# Where failed runs are reported: a Slack-style incoming webhook (JSON {"text": ...}). The URL holds
# a token, so it is read from the environment and never logged.
ALERT_WEBHOOK_ENV = "ALERT_WEBHOOK_URL"
ALERT_TIMEOUT_SECONDS = 10


class MeltanoProject(ConfigurableResource):
    """Where and how `meltano` runs: project folder, Meltano environment and executable."""

    project_root: str = os.environ.get("MELTANO_PROJECT_ROOT", str(DEFAULT_PROJECT_ROOT))
    environment: str = os.environ.get("MELTANO_ENVIRONMENT", "production")
    executable: str = "meltano"

    def run_job(self, context: OpExecutionContext, job_name: str) -> None:
        """`meltano --environment=ENV run JOB`, output into Dagster's log; Failure if it fails."""
        command = [self.executable, f"--environment={self.environment}", "run", job_name]
        context.log.info(f"running {' '.join(command)} in {self.project_root}")
        tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
        try:
            process = subprocess.Popen(
                command,
                cwd=self.project_root,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
        except OSError as error:
            # A missing executable or project folder does not heal on retry.
            raise Failure(
                description=f"cannot start {self.executable} in {self.project_root}: {error}",
                allow_retries=False,
            ) from error
        with process:
            assert process.stdout is not None
            for line in process.stdout:
                tail.append(line.rstrip("\n"))
                context.log.info(tail[-1])
        if process.returncode != 0:
            description = f"meltano run {job_name} exited {process.returncode}"
            description += _set_aside_clause(tail)
            raise Failure(
                description=description,
                metadata={"output_tail": "\n".join(tail)},
            )


# target-lytics' error names this setting whenever a run fails over events Lytics refused or could
# not take (too many to set aside into `<stream>_rejects`, or none allowed).
TARGET_REJECTS_SETTING = "max_rejected_records"
# tap-cordial-activity's error says one of these whenever a run fails over a bad record in an
# export (none allowed, or one more than may be set aside into `activity_rejects`); its warnings
# about records set aside name the setting too, so they are not matched.
TAP_REJECTS_ERRORS = ("`max_bad_records` is 0", "over `max_bad_records`")


def _set_aside_clause(tail: "deque[str]") -> str:
    """The plugins' lines about bad or refused records, for the failure and its alert."""
    clause = ""
    tap_lines = [line for line in tail if any(error in line for error in TAP_REJECTS_ERRORS)]
    if tap_lines:
        clause += (
            "; tap-cordial-activity: a bad record in an export (set-aside ones are in the "
            "activity_rejects stream, in Lytics cordial_activity_rejects): "
            f"{tap_lines[-1].strip()}"
        )
    lines = [line for line in tail if TARGET_REJECTS_SETTING in line]
    if lines:
        clause += (
            "; target-lytics: Lytics refused events (set-aside events are in the Lytics stream "
            f"<stream>_rejects, e.g. cordial_activity_rejects): {lines[-1].strip()}"
        )
    return clause


def _step_failures(context: RunFailureSensorContext) -> list[str]:
    """The failed steps' own descriptions (the run's failure event names only the steps)."""
    descriptions = []
    records = context.instance.all_logs(
        context.dagster_run.run_id, of_type=DagsterEventType.STEP_FAILURE
    )
    for record in records:
        event = record.dagster_event
        data = event.event_specific_data if event is not None else None
        user = getattr(data, "user_failure_data", None)
        error = getattr(data, "error", None)
        text = getattr(user, "description", None) or getattr(error, "message", None)
        if text:
            descriptions.append(str(text).strip())
    return descriptions


def _meltano_schedule_cron(project_root: str, job_name: str) -> str:
    """The cron expression of the job's schedule in meltano.yml (one place for the interval)."""
    project = yaml.safe_load((Path(project_root) / "meltano.yml").read_text(encoding="utf-8"))
    [interval] = [s["interval"] for s in project.get("schedules", []) if s["job"] == job_name]
    return str(interval)


@op(
    # Full-jitter exponential backoff, as the plugins retry; a retry resumes from the stored state.
    retry_policy=RetryPolicy(
        max_retries=2, delay=60, backoff=Backoff.EXPONENTIAL, jitter=Jitter.FULL
    ),
    pool=POOL,
)
def meltano_run(context: OpExecutionContext, meltano: MeltanoProject) -> None:
    """Run the Meltano job (tap-cordial-activity into target-lytics)."""
    meltano.run_job(context, MELTANO_JOB)


@job(
    name=DAGSTER_JOB,
    description=f"meltano run {MELTANO_JOB}",
    tags={CONCURRENCY_TAG: MELTANO_JOB},
)
def cordial_activity_to_lytics() -> None:
    """The Meltano job as one Dagster op."""
    meltano_run()


@schedule(
    job=cordial_activity_to_lytics,
    cron_schedule=_meltano_schedule_cron(MeltanoProject().project_root, MELTANO_JOB),
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
)
def every_6_hours(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
    """One run per tick, none while the previous one is still queued or running."""
    active = context.instance.get_run_records(
        RunsFilter(job_name=DAGSTER_JOB, statuses=ACTIVE_STATUSES), limit=1
    )
    if active:
        return SkipReason(f"run {active[0].dagster_run.run_id} of {DAGSTER_JOB} is still active")
    return RunRequest()


@run_failure_sensor(
    monitored_jobs=[cordial_activity_to_lytics], default_status=DefaultSensorStatus.RUNNING
)
def alert_on_failed_run(context: RunFailureSensorContext) -> SkipReason | None:
    """POST the failed run's id and error to the webhook in ALERT_WEBHOOK_URL."""
    url = os.environ.get(ALERT_WEBHOOK_ENV)
    if not url:
        return SkipReason(f"{ALERT_WEBHOOK_ENV} is not set: no alert sent")
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"{ALERT_WEBHOOK_ENV} must be an http(s) URL")
    run = context.dagster_run
    text = f"Dagster run {run.run_id} of {run.job_name} failed: {context.failure_event.message}"
    # Say what failed (e.g. events Lytics refused, see _set_aside_clause), not only which step.
    for description in _step_failures(context):
        text += f"\n{description}"
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url,
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=ALERT_TIMEOUT_SECONDS):  # noqa: S310 - checked
        pass
    return None


defs = Definitions(
    jobs=[cordial_activity_to_lytics],
    schedules=[every_6_hours],
    sensors=[alert_on_failed_run],
    resources={"meltano": MeltanoProject()},
)
