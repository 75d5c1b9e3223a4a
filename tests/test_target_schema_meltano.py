"""`meltano invoke target-lytics:schema-plan|schema-publish` through the real meltano CLI.

The commands pass `--config=ENV`: the settings reach the target as TARGET_LYTICS_* variables,
numbers as text, as in production.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.lytics import LyticsStandIn

pytestmark = pytest.mark.meltano

ROOT = Path(__file__).resolve().parent.parent
MELTANO = Path(sys.executable).parent / "meltano"
IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".*_cache")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project with target-lytics installed by Meltano (its own .meltano/)."""
    copy = tmp_path_factory.mktemp("meltano-schema")
    shutil.copy(ROOT / "meltano.yml", copy / "meltano.yml")
    shutil.copytree(ROOT / "target-lytics", copy / "target-lytics", ignore=IGNORE)
    result = meltano(copy, {}, "install", "loader", "target-lytics")
    assert result.returncode == 0, result.stderr[-3000:]
    return copy


def meltano(project: Path, extra_env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TARGET_LYTICS_", "MELTANO_"))}
    env.update(extra_env, MELTANO_SEND_ANONYMOUS_USAGE_STATS="false")
    env["PATH"] = f"{MELTANO.parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(MELTANO), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_meltano_invoke_schema_plan_then_publish(project: Path) -> None:
    with LyticsStandIn() as lytics:
        env = {"TARGET_LYTICS_API_TOKEN": lytics.token, "TARGET_LYTICS_API_URL": lytics.url}
        plan = meltano(project, env, "--environment=sandbox", "invoke", "target-lytics:schema-plan")
        assert plan.returncode == 0, plan.stderr[-3000:]
        assert "To create: 8 fields, 8 mappings" in plan.stdout
        assert lytics.schema.writes == []
        args = ("--environment=sandbox", "invoke", "target-lytics:schema-publish")
        published = meltano(project, env, *args)
        assert published.returncode == 0, published.stderr[-3000:]
        assert "Created 8 fields and 8 mappings and published" in published.stdout
        assert lytics.schema.version == 1
        again = meltano(project, env, *args)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "Nothing to write" in again.stdout
        assert lytics.schema.version == 1
        for result in (plan, published, again):
            assert lytics.token not in result.stdout + result.stderr
