"""`meltano run` end to end with `export_destination: s3`: Cordial stand-in -> moto's S3 ->
tap -> target-lytics -> Lytics stand-in, twice (the second run delivers only new events and
deletes the first run's objects)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_meltano import (
    LYTICS_STREAM,
    Meltano,
    _assert_mapped,
    _base_env,
    _bookmark,
    _exported,
    _new_events_after,
    _setting_env,
    meltano_project,  # noqa: F401 - the installed project copy (a fixture)
)

from sandbox.pytest_plugin import Sandbox

pytestmark = pytest.mark.meltano


@pytest.fixture
def meltano_s3(
    meltano_project: Path, s3_sandbox: Sandbox, tmp_path: Path  # noqa: F811
) -> Meltano:
    """Meltano wired to this test's sandbox, exports through its S3 bucket."""
    assert s3_sandbox.s3 is not None
    env = _base_env()
    env["MELTANO_DATABASE_URI"] = f"sqlite:///{tmp_path / 'meltano.db'}"
    env.update(_setting_env("TAP_CORDIAL_ACTIVITY", s3_sandbox.s3_tap_config()))
    env.update(_setting_env("TARGET_LYTICS", s3_sandbox.target_config()))
    return Meltano(
        project=meltano_project, env=env,
        secrets=[*s3_sandbox.secrets(), s3_sandbox.s3.secret_access_key],
    )


def test_meltano_run_over_s3_delivers_every_event_once_then_only_new(
    meltano_s3: Meltano, s3_sandbox: Sandbox
):
    sandbox = s3_sandbox
    meltano_s3.env["TAP_CORDIAL_ACTIVITY_DELETE_EXPORTED_FILES"] = "true"
    expected = _exported(sandbox.cordial.events)
    meltano_s3("--environment=sandbox", "run", "tap-cordial-activity", "target-lytics")
    received = list(sandbox.lytics.events[LYTICS_STREAM])
    ids = [e["cr_system_event_id"] for e in received]
    assert len(ids) == len(set(ids)), "an event arrived twice"
    assert set(ids) == set(expected)
    for event in received:
        _assert_mapped(event, expected[event["cr_system_event_id"]])
    assert all(b["destination"]["type"] == "s3" for b in sandbox.cordial.exports)
    first_objects = set(sandbox.s3_objects())
    assert first_objects
    state: dict[str, Any] = meltano_s3.state()
    assert state["bookmarks"]["activity"]["read_files"]

    added = _new_events_after(_bookmark(state), list(expected.values())[:25])
    sandbox.cordial.add_events(added)
    meltano_s3("--environment=sandbox", "run", "tap-cordial-activity", "target-lytics")
    new = sandbox.lytics.events[LYTICS_STREAM][len(received):]
    assert sorted(e["cr_system_event_id"] for e in new) == sorted(e["_id"] for e in added)
    # The first run's objects went once Meltano had stored its STATE.
    assert not first_objects & set(sandbox.s3_objects())
