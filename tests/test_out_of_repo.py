"""The packages as a user gets them: built, checked, and run by Meltano in a project of its own.

`python -m build` makes an sdist and a wheel of each plugin (the wheel from the sdist, so the sdist
is complete) and `twine check` accepts them. Then a fresh `meltano init` project outside this
repository adds both plugins from hub/ with `pip_url` pointed at the wheels, takes its settings
from environment variables, publishes the Lytics schema and runs the pipeline twice against the
sandbox. Nothing of this repository is used at run time: no editable install, no path into it.
"""

from __future__ import annotations

import email
import email.message
import os
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_hub_definitions import PLUGINS, hub_path
from test_meltano import (
    LYTICS_STREAM,
    PLUGIN_ENV_PREFIXES,
    Meltano,
    _assert_mapped,
    _bookmark,
    _exported,
    _new_events_after,
    _setting_env,
)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MELTANO = BIN / "meltano"
PACKAGES = [name for _, name in PLUGINS]
STATE_ID = "dev:tap-cordial-activity-to-target-lytics"


def _pyproject(name: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / name / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _dist_name(name: str) -> str:
    return name.replace("-", "_")


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel of both plugins, as `python -m build` makes them (~5 s)."""
    out = tmp_path_factory.mktemp("dist")
    for name in PACKAGES:
        # --no-isolation: the build backend comes from the locked dev environment, no download.
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "build",
                "--no-isolation",
                "--outdir",
                str(out),
                str(ROOT / name),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"build of {name} failed\n{result.stdout}{result.stderr}"
    return out


def _wheel(dist: Path, name: str) -> Path:
    [wheel] = dist.glob(f"{_dist_name(name)}-*.whl")
    return wheel


def _wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        [metadata] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(metadata))


def test_build_makes_an_sdist_and_a_wheel_that_twine_accepts(dist):
    for name in PACKAGES:
        version = _pyproject(name)["version"]
        assert (dist / f"{_dist_name(name)}-{version}.tar.gz").exists(), f"{name}: no sdist"
        assert _wheel(dist, name).name == f"{_dist_name(name)}-{version}-py3-none-any.whl"
    result = subprocess.run(
        [str(BIN / "twine"), "check", "--strict", *map(str, sorted(dist.iterdir()))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", PACKAGES)
def test_wheel_metadata_is_ready_for_the_package_index(dist, name):
    metadata = _wheel_metadata(_wheel(dist, name))
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["License-File"] == "LICENSE"
    classifiers = metadata.get_all("Classifier") or []
    assert "License :: OSI Approved :: Apache Software License" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Repository", "Issues", "Changelog"} <= set(urls)
    assert all(u.startswith("https://github.com/example-org/cordial-lytics") for u in urls.values())
    # The plugin's README is the page the index shows.
    assert metadata["Description-Content-Type"] == "text/markdown"
    readme = (ROOT / name / "README.md").read_text(encoding="utf-8")
    body = metadata.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert body.decode("utf-8").strip() == readme.strip()


@pytest.mark.parametrize("name", PACKAGES)
def test_version_comes_from_pyproject_through_version_and_about(name):
    version = _pyproject(name)["version"]
    shown = subprocess.run(
        [str(BIN / name), "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert f"{name} v{version}" in shown or f"{name} {version}" in shown, shown
    about = subprocess.run(
        [str(BIN / name), "--about", "--format=json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert yaml.safe_load(about)["version"] == version
    package = _dist_name(name)
    # The same fallback in both plugins when the source tree runs without being installed: the
    # base interpreter outside the venv, with only the package folder on sys.path.
    base_python = getattr(sys, "_base_executable", sys.executable)
    probe = (
        f"import sys; sys.path.insert(0, {str(ROOT / name)!r}); "
        f"import {package}; print({package}.__version__)"
    )
    uninstalled = subprocess.run(
        [base_python, "-I", "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert uninstalled.returncode == 0, uninstalled.stderr
    assert uninstalled.stdout.strip() == "0+unknown"


def _user_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without this repository: no venv of it on PATH, no PYTHONPATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(PLUGIN_ENV_PREFIXES) and k not in {"VIRTUAL_ENV", "PYTHONPATH"}
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and not Path(p).is_relative_to(ROOT)
    )
    env["MELTANO_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    env.update(extra)
    return env


def _assert_installed_from_the_wheel(project: Path, plugin_type: str, name: str) -> None:
    """The plugin's venv holds a copy of the package from the wheel, nothing pointing here."""
    [site] = (project / ".meltano" / plugin_type / name / "venv" / "lib").glob(
        "python3*/site-packages"
    )
    package = site / _dist_name(name)
    assert (package / "__init__.py").is_file(), f"{name}: package not in {site}"
    assert not (package / "__init__.py").resolve().is_relative_to(ROOT)
    [dist_info] = site.glob(f"{_dist_name(name)}-*.dist-info")
    direct_url = dist_info / "direct_url.json"
    if direct_url.exists():
        assert '"editable": true' not in direct_url.read_text(encoding="utf-8")
        assert str(ROOT) not in direct_url.read_text(encoding="utf-8")
    for pth in site.glob("*.pth"):
        assert str(ROOT) not in pth.read_text(encoding="utf-8"), f"{pth} points into the repository"


@pytest.mark.meltano
def test_a_meltano_project_elsewhere_runs_the_plugins_from_the_wheels(
    dist, sandbox, tmp_path_factory, capsys
):
    started = time.monotonic()
    home = tmp_path_factory.mktemp("user-project")
    assert not home.resolve().is_relative_to(ROOT)
    tap_config = sandbox.tap_config(
        settle_minutes=0, retry_initial_delay_seconds=0.2, job_timeout_seconds=120
    )
    env = _user_env(
        {
            "MELTANO_DATABASE_URI": f"sqlite:///{home / 'meltano.db'}",
            **_setting_env("TAP_CORDIAL_ACTIVITY", tap_config),
            **_setting_env("TARGET_LYTICS", sandbox.target_config(retry_initial_delay_seconds=0.2)),
        }
    )
    init = Meltano(project=home, env=env, secrets=sandbox.secrets())
    init("init", "--no_usage_stats", "project")
    meltano = Meltano(project=home / "project", env=env, secrets=sandbox.secrets())

    for plugin_type, name in PLUGINS:
        # The Hub definition as published, with pip_url swapped for the wheel (clarifications).
        definition = yaml.safe_load(hub_path(plugin_type, name).read_text(encoding="utf-8"))
        definition["pip_url"] = str(_wheel(dist, name))
        ref = home / f"{name}.yml"
        ref.write_text(yaml.safe_dump(definition, sort_keys=False), encoding="utf-8")
        meltano("add", "--no-install", f"--plugin-type={plugin_type}", name, "--from-ref", str(ref))
    # One install of both: Meltano installs them side by side.
    meltano("install")
    for plugin_type, name in PLUGINS:
        _assert_installed_from_the_wheel(meltano.project, plugin_type, name)
    assert str(ROOT) not in (meltano.project / "meltano.yml").read_text(encoding="utf-8")

    published = meltano("--environment=dev", "invoke", "target-lytics:schema-publish")
    assert "Created 8 fields and 8 mappings and published" in published.stdout
    assert sandbox.lytics.schema.version == 1

    expected = _exported(sandbox.cordial.events)
    assert expected
    meltano("--environment=dev", "run", "tap-cordial-activity", "target-lytics")
    first = list(sandbox.lytics.events[LYTICS_STREAM])
    assert sorted(e["cr_system_event_id"] for e in first) == sorted(expected)
    for event in first:
        _assert_mapped(event, expected[event["cr_system_event_id"]])

    stored = yaml.safe_load(meltano("state", "get", STATE_ID).stdout)["singer_state"]
    template = list(expected.values())[:20]
    added = _new_events_after(_bookmark(stored), template)
    sandbox.cordial.add_events(added)
    meltano("--environment=dev", "run", "tap-cordial-activity", "target-lytics")
    received = sandbox.lytics.events[LYTICS_STREAM]
    assert received[: len(first)] == first
    new = received[len(first) :]
    assert sorted(e["cr_system_event_id"] for e in new) == sorted(e["_id"] for e in added)
    with capsys.disabled():
        print(f"\nout-of-repository Meltano project: {time.monotonic() - started:.1f} s")
