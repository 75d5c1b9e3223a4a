"""End to end through the real `meltano` CLI, against the sandbox (real OpenSSH sftp).

Meltano runs in a temporary copy of the project (its own `.meltano/` plugin venvs, installed once
per session), and every test gets its own system database, so the developer's `.meltano/` is never
touched and no test sees another's state. The sandbox's settings reach the plugins the way
production credentials do: through Meltano's `TAP_CORDIAL_ACTIVITY_*` / `TARGET_LYTICS_*` variables.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_faults_settings import PASSPHRASE, _encrypted
from test_meltano_project import meltano_yml_plugin
from test_target_lytics import COLLECT

from sandbox.cordial import DEFAULT_SAVED_KEY
from sandbox.events import RESERVED_ACTIONS
from sandbox.httpbase import Fault

pytestmark = pytest.mark.meltano

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MELTANO = BIN / "meltano"
STATE_ID = "sandbox:tap-cordial-activity-to-target-lytics"
LYTICS_STREAM = "cordial_activity"
# The reserved actions in the tap's default `actions`; its `custom` adds every non-reserved one.
DEFAULT_RESERVED_ACTIONS = {"message-sent", "open", "click", "optout", "bounce", "complaint"}
PLUGIN_ENV_PREFIXES = ("TAP_CORDIAL_ACTIVITY_", "TARGET_LYTICS_", "TARGET_JSONL_", "MELTANO_")
COPY_IGNORE = shutil.ignore_patterns(
    "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache", ".mypy_cache", ".ruff_cache"
)


def _base_env() -> dict[str, str]:
    """The caller's environment without anything that would configure Meltano or the plugins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PLUGIN_ENV_PREFIXES)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MELTANO_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    return env


def _setting_env(prefix: str, config: Mapping[str, Any]) -> dict[str, str]:
    """Meltano's env-var form of a plugin config: PREFIX_<SETTING>, JSON for non-strings."""
    return {
        f"{prefix}_{key.upper()}": value if isinstance(value, str) else json.dumps(value)
        for key, value in config.items()
        if value is not None
    }


@dataclass
class Meltano:
    """The project copy plus one test's system database and sandbox settings."""

    project: Path
    env: dict[str, str]
    secrets: list[str]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `meltano ARGS` in the project copy; fail with its output when it fails."""
        result = subprocess.run(
            [str(MELTANO), *args],
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        output = result.stdout + result.stderr
        leaked = [i for i, s in enumerate(self.secrets) if s in output]
        assert not leaked, f"meltano {' '.join(args)} printed secret #{leaked}"
        if check:
            assert result.returncode == 0, (
                f"meltano {' '.join(args)} exited {result.returncode}\n{output[-6000:]}"
            )
        return result

    def state(self, state_id: str = STATE_ID) -> dict[str, Any]:
        """The Singer state Meltano stored for a pipeline."""
        stored = json.loads(self("state", "get", state_id).stdout)
        return stored["singer_state"]


def install_project_copy(project: Path) -> Path:
    """Copy the project into the empty folder ``project``; `meltano install` its plugins (~10 s)."""
    assert MELTANO.exists(), f"meltano is not installed in {BIN}: run scripts/bootstrap.sh"
    shutil.copy2(ROOT / "meltano.yml", project / "meltano.yml")
    for plugin in ("tap-cordial-activity", "target-lytics"):
        shutil.copytree(ROOT / plugin, project / plugin, ignore=COPY_IGNORE)
    env = _base_env()
    env["MELTANO_DATABASE_URI"] = f"sqlite:///{project / 'install.db'}"
    result = subprocess.run(
        [str(MELTANO), "install"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"meltano install failed\n{result.stdout}{result.stderr}"
    return project


@pytest.fixture(scope="session")
def meltano_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project with its plugins installed (once per session)."""
    return install_project_copy(tmp_path_factory.mktemp("meltano-project"))


@pytest.fixture
def meltano(meltano_project: Path, sandbox: Any, tmp_path: Path) -> Meltano:
    """Meltano wired to this test's sandbox, with a fresh system database."""
    tap_config = sandbox.tap_config()
    target_config = sandbox.target_config()
    env = _base_env()
    env["MELTANO_DATABASE_URI"] = f"sqlite:///{tmp_path / 'meltano.db'}"
    env.update(_setting_env("TAP_CORDIAL_ACTIVITY", tap_config))
    env.update(_setting_env("TARGET_LYTICS", target_config))
    env["TARGET_JSONL_DESTINATION_PATH"] = str(tmp_path / "jsonl")
    return Meltano(project=meltano_project, env=env, secrets=sandbox.secrets())


def _exported(events: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The raw Cordial events the tap's default settings export, by `_id`."""
    return {
        e["_id"]: e
        for e in events
        if e["action"] in DEFAULT_RESERVED_ACTIONS or e["action"] not in RESERVED_ACTIONS
    }


def _rfc3339_z(cordial_time: str) -> str:
    """Cordial's `2017-03-13T22:48:40+0000` as the target sends it: RFC 3339 UTC with `Z`."""
    parsed = dt.datetime.strptime(cordial_time, "%Y-%m-%dT%H:%M:%S%z").astimezone(dt.UTC)
    return parsed.strftime("%Y-%m-%dT%H:%M:%SZ")


def _same_instant(a: str, b: str) -> bool:
    return dt.datetime.fromisoformat(a) == dt.datetime.fromisoformat(b)


def _assert_mapped(received: dict[str, Any], raw: dict[str, Any]) -> None:
    """A Lytics event is the default mapping of its raw Cordial event."""
    assert received["cr_system_event_id"] == raw["_id"]
    assert received["cr_contact_id"] == raw["cID"]
    assert received["cr_event_action"] == raw["action"]
    assert received["cr_event_timestamp"].endswith("Z")
    assert _same_instant(received["cr_event_timestamp"], _rfc3339_z(raw["time"]))
    if raw.get("mcID") is not None:
        assert received["cr_message_contact_id"] == raw["mcID"]
    if raw.get("message_name") is not None:
        assert received["cr_message_name"] == raw["message_name"]
    if raw.get("first") is not None:
        assert received["cr_first"] is bool(raw["first"] in (True, 1, "1", "true"))
    # Only mapped fields are sent by default (include_unmapped_fields is false).
    assert set(received) <= {
        "cr_contact_id",
        "cr_first",
        "cr_system_event_id",
        "cr_message_contact_id",
        "cr_message_name",
        "cr_message_sent_timestamp",
        "cr_event_action",
        "cr_event_timestamp",
    }


def _bookmark(state: dict[str, Any]) -> str:
    activity = state["bookmarks"]["activity"]
    assert activity["replication_key"] == "time"
    return str(activity["replication_key_value"])


def _new_events_after(bookmark: str, template: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fresh Cordial events timed strictly after the bookmark, at a whole second already past.

    The bookmark is the previous run's end, so anything timed after it and before the next run
    starts belongs to the next run.
    """
    after = dt.datetime.fromisoformat(bookmark).astimezone(dt.UTC)
    when = dt.datetime.fromtimestamp(math.floor(after.timestamp()) + 1, dt.UTC)
    wait = when.timestamp() - time.time()
    if wait > 0:
        time.sleep(wait + 0.01)  # at most one second: the next run must end after these events
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S+0000")
    return [{**event, "_id": secrets.token_hex(12), "time": stamp} for event in template]


def test_first_run_lands_every_generated_event_in_lytics_mapped(meltano, sandbox):
    expected = _exported(sandbox.cordial.events)
    assert expected, "the sandbox generated no exportable events"

    meltano("--environment=sandbox", "run", "cordial-activity-to-lytics")

    received = sandbox.lytics.events[LYTICS_STREAM]
    ids = [e["cr_system_event_id"] for e in received]
    assert len(ids) == len(set(ids)), "an event arrived twice"
    assert set(ids) == set(expected)
    for event in received:
        _assert_mapped(event, expected[event["cr_system_event_id"]])
    # Lytics was told which field holds the event time.
    assert all(r.query.get("timestamp_field") for r in sandbox.lytics.requests)

    bookmark = _bookmark(meltano.state())
    latest = max(dt.datetime.fromisoformat(_rfc3339_z(e["time"])) for e in expected.values())
    assert dt.datetime.fromisoformat(bookmark) >= latest


def test_second_run_delivers_only_new_events_from_meltano_state(meltano, sandbox):
    # With delete_exported_files, the files of the first run go once Meltano stored its STATE.
    meltano.env["TAP_CORDIAL_ACTIVITY_DELETE_EXPORTED_FILES"] = "true"
    meltano("--environment=sandbox", "run", "tap-cordial-activity", "target-lytics")
    first = list(sandbox.lytics.events[LYTICS_STREAM])
    first_bookmark = _bookmark(meltano.state())
    first_files = {p.name for p in sandbox.sftp.root.iterdir()}
    assert first_files
    assert meltano.state()["bookmarks"]["activity"]["read_files"]
    exports_before = len(sandbox.cordial.exports)

    template = list(_exported(sandbox.cordial.events).values())[:25]
    added = _new_events_after(first_bookmark, template)
    sandbox.cordial.add_events(added)

    meltano("--environment=sandbox", "run", "tap-cordial-activity", "target-lytics")
    received = sandbox.lytics.events[LYTICS_STREAM]
    assert received[: len(first)] == first
    new = received[len(first) :]
    assert sorted(e["cr_system_event_id"] for e in new) == sorted(e["_id"] for e in added)
    for event, raw in zip(
        sorted(new, key=lambda e: e["cr_system_event_id"]),
        sorted(added, key=lambda e: e["_id"]),
        strict=True,
    ):
        _assert_mapped(event, raw)

    # The second run started from the stored bookmark, not from start_date.
    second_exports = sandbox.cordial.exports[exports_before:]
    assert second_exports
    assert _same_instant(
        second_exports[0]["selected_timeframe_start"].replace("Z", "+00:00"), first_bookmark
    )
    assert dt.datetime.fromisoformat(_bookmark(meltano.state())) > dt.datetime.fromisoformat(
        first_bookmark
    )
    listed = meltano("--environment=sandbox", "state", "list").stdout
    assert STATE_ID in listed
    assert not first_files & {p.name for p in sandbox.sftp.root.iterdir()}


def test_target_jsonl_writes_the_same_events(meltano, sandbox, tmp_path):
    meltano("--environment=sandbox", "run", "tap-cordial-activity", "target-lytics")
    meltano("--environment=sandbox", "run", "tap-cordial-activity", "target-jsonl")

    files = sorted((tmp_path / "jsonl").glob("activity*.jsonl"))
    assert files, "target-jsonl wrote no activity file"
    records = [json.loads(line) for f in files for line in f.read_text("utf-8").splitlines()]
    by_id = {r["_id"]: r for r in records}
    assert len(by_id) == len(records), "a record was written twice"
    assert set(by_id) == set(_exported(sandbox.cordial.events))
    lytics = {e["cr_system_event_id"]: e for e in sandbox.lytics.events[LYTICS_STREAM]}
    assert set(lytics) == set(by_id)
    for event_id, record in by_id.items():
        assert record["cID"] == lytics[event_id]["cr_contact_id"]
        assert _same_instant(record["time"], lytics[event_id]["cr_event_timestamp"])
    # Each loader keeps its own bookmark.
    assert _bookmark(meltano.state("sandbox:tap-cordial-activity-to-target-jsonl"))


def test_installed_plugins_carry_compiled_bytecode(meltano_project):
    """`meltano install` (uv) compiles the plugins' dependencies: a plugin start imports .pyc files
    instead of compiling singer-sdk and paramiko again (meltano.yml: UV_COMPILE_BYTECODE)."""
    for kind, plugin, package in (
        ("extractors", "tap-cordial-activity", "paramiko"),
        ("loaders", "target-lytics", "singer_sdk"),
    ):
        venv = meltano_project / ".meltano" / kind / plugin / "venv"
        compiled = list(venv.glob(f"lib/python3*/site-packages/{package}/__pycache__/*.pyc"))
        assert compiled, f"{plugin}: no bytecode under {package} in {venv}"


def test_schedule_list_shows_the_six_hour_schedule(meltano):
    listed = json.loads(meltano("schedule", "list", "--format=json").stdout)
    schedules = listed["schedules"]["job"]
    [schedule] = [s for s in schedules if s["job"]["name"] == "cordial-activity-to-lytics"]
    assert schedule["cron_interval"] == "0 */6 * * *"
    assert schedule["job"]["tasks"] == ["tap-cordial-activity target-lytics"]
    text = meltano("schedule", "list").stdout
    assert "[0 */6 * * *]" in text


def test_config_list_redacts_secrets(meltano):
    result = meltano("--environment=sandbox", "config", "list", "tap-cordial-activity")
    lines = {
        line.split(" ", 1)[0]: line for line in result.stdout.splitlines() if line[:1].isalpha()
    }
    for name in ("api_key", "sftp_password"):
        assert name in lines, f"{name} not listed"
        assert "(redacted)" in lines[name], lines[name]
    # The __call__ helper has already checked that no secret value was printed.
    target = meltano("--environment=sandbox", "config", "list", "target-lytics").stdout
    token_lines = [line for line in target.splitlines() if line.startswith("api_token ")]
    assert token_lines, "api_token not listed"
    assert all("(redacted)" in line for line in token_lines), token_lines
    assert not (meltano.project / ".env").exists(), "secrets were written to .env"


def test_production_reads_credentials_from_the_environment(meltano):
    env = dict(meltano.env)
    env["TAP_CORDIAL_ACTIVITY_API_KEY"] = "prod-key-" + secrets.token_hex(8)
    production = Meltano(
        project=meltano.project, env=env, secrets=[env["TAP_CORDIAL_ACTIVITY_API_KEY"]]
    )
    listed = production("--environment=production", "config", "list", "tap-cordial-activity")
    [line] = [line for line in listed.stdout.splitlines() if line.startswith("api_key ")]
    assert "(redacted)" in line
    assert "TAP_CORDIAL_ACTIVITY_API_KEY variable in the environment" in line


def test_config_set_keeps_secrets_out_of_meltano_yml(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy2(ROOT / "meltano.yml", project / "meltano.yml")
    env = _base_env()
    env["MELTANO_DATABASE_URI"] = f"sqlite:///{tmp_path / 'meltano.db'}"
    secret = "set-key-" + secrets.token_hex(8)
    config_set = Meltano(project=project, env=env, secrets=[secret])
    production = "--environment=production"
    config_set(production, "config", "set", "tap-cordial-activity", "api_key", secret)
    config_set(production, "config", "set", "tap-cordial-activity", "sftp_host", "sftp.example.com")
    assert secret not in (project / "meltano.yml").read_text(encoding="utf-8")
    assert "sftp.example.com" in (project / "meltano.yml").read_text(encoding="utf-8")
    assert f"TAP_CORDIAL_ACTIVITY_API_KEY='{secret}'" in (project / ".env").read_text("utf-8")


def _meltano_settings(plugin_type: str, name: str) -> dict[str, dict[str, Any]]:
    """The settings meltano.yml declares for a plugin, by name."""
    return {s["name"]: s for s in meltano_yml_plugin(plugin_type, name)["settings"]}


def _secret_names(name: str) -> set[str]:
    plugin_type = "extractors" if name.startswith("tap-") else "loaders"
    return {k for k, s in _meltano_settings(plugin_type, name).items() if s.get("sensitive")}


def test_every_setting_of_both_plugins_from_environment_variables(meltano, sandbox, tmp_path):
    # Numbers arrive as text ("0.05"), as from any secret store or .env; each value differs from
    # the default where it can, so the run shows it was used.
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sandbox.sftp.host_key_line + "\n")
    tap = {
        "api_key": sandbox.cordial.api_key,
        "api_url": sandbox.cordial.url,
        "start_date": sandbox.cordial.default_start.date().isoformat(),
        "end_date": now.isoformat(),
        "actions": ["open", "click"],
        # Sent by name beside the two actions; no sandbox event has it, so nothing else arrives.
        "custom_actions": ["no-such-custom-event"],
        # The S3 settings reach the tap as given; with `sftp` as the destination they are unused.
        "export_destination": "sftp",
        "s3_bucket": "unused-bucket",
        "s3_prefix": "unused/prefix",
        "s3_region": "eu-west-1",
        "s3_endpoint_url": "http://127.0.0.1:9",
        "s3_access_key_id": "unused-access-key-id",
        "s3_secret_access_key": "unused-secret-access-key",
        "cordial_s3_access_key_id": "unused-cordial-key-id",
        "cordial_s3_secret_access_key": "unused-cordial-secret-key",
        "export_format": "csv",
        "compress": False,
        "export_window_hours": "12.5",
        "sftp_host": sandbox.sftp.host,
        "sftp_port": sandbox.sftp.port,
        "sftp_username": sandbox.sftp.username,
        "sftp_path": sandbox.sftp.sftp_path,
        "sftp_password": sandbox.sftp.password,
        "sftp_private_key": _encrypted(sandbox.sftp.private_key, tmp_path),
        "sftp_private_key_passphrase": PASSPHRASE,
        "cordial_saved_key": DEFAULT_SAVED_KEY,
        "sftp_host_key": sandbox.sftp.host_key_line,
        "sftp_known_hosts_path": str(known_hosts),
        "poll_interval_seconds": "0.05",
        "job_timeout_seconds": "90.5",
        "limit_records_per_file": 40,
        "delete_exported_files": True,
        "max_concurrent_prefetch_requests": 8,
        "request_timeout_seconds": "20.5",
        "max_retries": 3,
        "retry_initial_delay_seconds": "0.1",
        "retry_max_delay_seconds": "2.5",
        "settle_minutes": 5,
        "max_concurrent_exports": 2,
        "target_events_per_window": 0,
        "count_mismatch": "warn",
        "max_bad_records": 2,
        "short_export_wait_seconds": "1.5",
        "progress_interval_seconds": "0.5",
        "stream_maps": {"activity": {"source_system": "config['source']"}},
        "stream_map_config": {"source": "cordial"},
        "faker_config": {"seed": 1, "locale": "en_US"},
        "flattening_enabled": True,
        "flattening_max_depth": 1,
        "flattening_max_key_length": 100,
        "flattening_separator": "__",
        # With the stream map above the tap writes RECORD messages (and says batch_config is
        # ignored): the setting still reaches it as given.
        "batch_config": {
            "encoding": {"format": "jsonl", "compression": "gzip"},
            "storage": {"root": (tmp_path / "batches").as_uri(), "prefix": "env-"},
        },
    }
    target = {
        "api_token": sandbox.lytics.token,
        "api_url": sandbox.lytics.url,
        "streams": {
            "activity": {
                "lytics_stream": "cordial_from_env",
                "fields": {"_id": "event_id", "action": "event_action", "time": "event_time"},
                "timestamp_field": "event_time",
            }
        },
        "include_unmapped_fields": True,
        "dry_run": False,
        "max_request_bytes": 20000,
        "max_rejected_records": 3,
        "request_timeout_seconds": "15.5",
        "max_retries": 2,
        "retry_initial_delay_seconds": "0.1",
        "retry_max_delay_seconds": "1.5",
        "max_concurrent_uploads": 2,
        "progress_interval_seconds": "0.5",
        "schema_workflow": "direct",
        "batch_size_rows": 50,
        "add_record_metadata": True,
        "load_method": "append-only",
        "validate_records": True,
        "stream_maps": {"activity": {"loaded_by": "config['loader']"}},
        "stream_map_config": {"loader": "target-lytics"},
        "faker_config": {"seed": 2},
        "flattening_enabled": True,
        "flattening_max_depth": 1,
        "flattening_max_key_length": 100,
        "flattening_separator": "__",
        "delete_batch_files": False,
        "batch_file_roots": [(tmp_path / "batches").as_uri()],
        "min_state_interval_seconds": "0.5",
        "publish_others_changes": True,
    }
    assert set(tap) == set(_meltano_settings("extractors", "tap-cordial-activity"))
    assert set(target) == set(_meltano_settings("loaders", "target-lytics"))
    meltano.env.update(_setting_env("TAP_CORDIAL_ACTIVITY", tap))
    meltano.env.update(_setting_env("TARGET_LYTICS", target))
    meltano.secrets.append(PASSPHRASE)

    # Each value reaches the plugin as given (secrets redacted), not the meltano.yml value.
    for name, settings in (("tap-cordial-activity", tap), ("target-lytics", target)):
        listed = meltano("--environment=sandbox", "config", "print", name)
        printed = json.loads(listed.stdout)
        for key, value in settings.items():
            if key in _secret_names(name):
                assert printed[key] == "*****", key
            else:
                assert printed[key] == value, f"{name} {key}: {printed[key]!r} != {value!r}"

    meltano("--environment=sandbox", "run", "tap-cordial-activity", "target-lytics")

    expected = {e["_id"]: e for e in sandbox.cordial.events if e["action"] in ("open", "click")}
    assert expected, "the sandbox generated no open or click events"
    received = sandbox.lytics.events["cordial_from_env"]
    assert sorted(e["event_id"] for e in received) == sorted(expected)
    for event in received:
        raw = expected[event["event_id"]]
        assert event["event_action"] == raw["action"]
        assert _same_instant(event["event_time"], _rfc3339_z(raw["time"]))
        assert event["source_system"] == "cordial"
        assert event["loaded_by"] == "target-lytics"
    assert all(r.query.get("timestamp_field") == "event_time" for r in sandbox.lytics.requests)
    assert all(len(r.body) <= target["max_request_bytes"] for r in sandbox.lytics.requests)
    [first_export, *_] = sandbox.cordial.exports
    assert first_export["destination"].get("savedKey") == DEFAULT_SAVED_KEY
    assert len(sandbox.cordial.exports) >= 4, "12.5-hour windows over two days and more"
    files = [p.name for p in sandbox.sftp.root.iterdir()]
    assert files
    assert all(f.endswith(".csv") for f in files), files
    assert _bookmark(meltano.state())


@pytest.mark.parametrize(("setting", "date"), [("start_date", "2026-13-01"), ("end_date", "Nov 5")])
def test_a_wrong_date_is_refused_not_rewritten(meltano, sandbox, setting, date):
    meltano.env[f"TAP_CORDIAL_ACTIVITY_{setting.upper()}"] = date
    if setting == "end_date":
        meltano.env["TAP_CORDIAL_ACTIVITY_START_DATE"] = "2026-01-01"

    failed = meltano(
        "--environment=sandbox", "run", "tap-cordial-activity", "target-lytics", check=False
    )

    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    # The message names the setting and quotes the text as typed (not a date Meltano made of it).
    assert any(setting in line and f"'{date}'" in line for line in output.splitlines()), output
    assert not sandbox.cordial.exports, "an export was requested for a wrong date"
    assert not sandbox.lytics.requests


def test_without_environment_a_command_gets_production_settings(meltano):
    meltano.env.pop("TAP_CORDIAL_ACTIVITY_POLL_INTERVAL_SECONDS", None)
    sandbox_config = json.loads(
        meltano("--environment=sandbox", "config", "print", "tap-cordial-activity").stdout
    )
    assert sandbox_config["poll_interval_seconds"] == 0.1

    default = json.loads(meltano("config", "print", "tap-cordial-activity").stdout)
    assert default["poll_interval_seconds"] == 15
    assert default["job_timeout_seconds"] == 7200
    assert default["retry_initial_delay_seconds"] == 1


@pytest.mark.parametrize("lytics_delay", [0.0, 0.2], ids=["instant-lytics", "lytics-200ms"])
def test_batch_config_delivers_through_batch_files(meltano, sandbox, tmp_path, lytics_delay):
    # With batch_config the tap writes BATCH files; the target reads, uploads and deletes them.
    # With Lytics answering in 200 ms the files wait in the folder and STATE waits for Lytics.
    expected = _exported(sandbox.cordial.events)
    if lytics_delay:
        sandbox.lytics.inject(COLLECT, *[Fault(delay_seconds=lytics_delay)] * 1000)
        meltano.env["TARGET_LYTICS_MAX_REQUEST_BYTES"] = "20000"  # many requests, not one
    batches = tmp_path / "batches"
    batch_config = {
        "encoding": {"format": "jsonl", "compression": "gzip"},
        "storage": {"root": batches.as_uri(), "prefix": "activity-"},
    }
    meltano.env["TAP_CORDIAL_ACTIVITY_BATCH_CONFIG"] = json.dumps(batch_config)
    meltano.env["TARGET_LYTICS_BATCH_FILE_ROOTS"] = json.dumps([batches.as_uri()])

    result = meltano("--environment=sandbox", "run", "tap-cordial-activity", "target-lytics")

    assert "Record output: BATCH files (jsonl, gzip)" in result.stdout + result.stderr
    ids = [e["cr_system_event_id"] for e in sandbox.lytics.events[LYTICS_STREAM]]
    assert sorted(ids) == sorted(expected)
    bookmark = _bookmark(meltano.state(STATE_ID))
    latest = max(dt.datetime.fromisoformat(_rfc3339_z(e["time"])) for e in expected.values())
    assert dt.datetime.fromisoformat(bookmark) >= latest
    assert batches.is_dir()
    assert not list(batches.iterdir()), "the target deletes the files it read"
    if lytics_delay:
        assert len(sandbox.lytics.requests) > 5
