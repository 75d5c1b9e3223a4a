"""meltano.yml describes the plugins as they describe themselves (`--about --format=json`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Meltano setting kinds that may carry each JSON Schema type. A number is `kind: string`: Meltano
# 4.4 crashes on a `kind: decimal` value from an environment variable, and the plugins accept a
# number given as text. Dates are plain strings too (`date_iso8601` rewrites a wrong date).
KINDS_FOR_TYPE = {
    "string": {"string", "password", "options", "file", "email"},
    "integer": {"integer"},
    "number": {"string"},
    "boolean": {"boolean"},
    "array": {"array"},
    "object": {"object"},
}


def _project() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "meltano.yml").read_text(encoding="utf-8"))


def meltano_yml_plugin(kind: str, name: str) -> dict[str, Any]:
    return next(p for p in _project()["plugins"][kind] if p["name"] == name)


def _about(executable: str) -> dict[str, Any]:
    exe = BIN / executable
    assert exe.exists(), f"{executable} is not installed in {BIN}: run scripts/bootstrap.sh"
    out = subprocess.run(
        [str(exe), "--about", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return json.loads(out)


def _json_type(schema: dict[str, Any]) -> str:
    """The setting's JSON type; `["number", "string"]` (a number or its text) is a number."""
    types = schema.get("type")
    if types is None and "anyOf" in schema:
        types = [t for s in schema["anyOf"] for t in _as_list(s.get("type"))]
    concrete = set(_as_list(types)) - {"null"}
    if len(concrete) > 1:
        # A number setting also accepts a string holding a number ("0.1", "30").
        concrete -= {"string"}
    assert len(concrete) == 1, f"ambiguous type {schema}"
    return concrete.pop()


def _as_list(types: str | list[str] | None) -> list[str]:
    return [types] if isinstance(types, str) else list(types or [])


@pytest.mark.parametrize(
    ("plugin_type", "name"),
    [("extractors", "tap-cordial-activity"), ("loaders", "target-lytics")],
)
def test_meltano_settings_match_the_plugin(plugin_type, name):
    plugin = meltano_yml_plugin(plugin_type, name)
    about = _about(plugin["executable"])
    properties: dict[str, dict[str, Any]] = about["settings"]["properties"]
    settings = {s["name"]: s for s in plugin["settings"]}

    assert set(settings) == set(properties), (
        f"meltano.yml lacks {set(properties) - set(settings)}, "
        f"has unknown {set(settings) - set(properties)}"
    )
    for setting_name, schema in properties.items():
        setting = settings[setting_name]
        secret = bool(schema.get("secret") or schema.get("writeOnly"))
        assert bool(setting.get("sensitive")) == secret, f"{setting_name}: sensitive"
        if secret:
            assert setting["kind"] == "password", f"{setting_name}: secret needs kind password"
        json_type = _json_type(schema)
        assert setting.get("kind") in KINDS_FOR_TYPE[json_type], (
            f"{setting_name}: kind {setting.get('kind')} does not fit JSON type {json_type}"
        )
        if "enum" in schema:
            assert {o["value"] for o in setting["options"]} == set(schema["enum"]) - {None}
        if "default" in schema and schema["default"] is not None:
            assert setting.get("value") == schema["default"], f"{setting_name}: default"


@pytest.mark.parametrize(
    ("plugin_type", "name"),
    [("extractors", "tap-cordial-activity"), ("loaders", "target-lytics")],
)
def test_meltano_capabilities_are_advertised_by_the_plugin(plugin_type, name):
    plugin = meltano_yml_plugin(plugin_type, name)
    advertised = set(_about(plugin["executable"])["capabilities"])
    assert set(plugin["capabilities"]) <= advertised | {"test"}, (
        f"meltano.yml claims {set(plugin['capabilities']) - advertised} that {name} lacks"
    )
    if plugin_type == "extractors":
        # Meltano passes state and a catalog only to taps that advertise these.
        assert {"catalog", "discover", "state"} <= set(plugin["capabilities"])


def test_project_has_the_job_schedule_and_environments():
    project = _project()
    # A command that forgets --environment must not get the sandbox's tuning.
    assert project["default_environment"] == "production"
    assert {e["name"] for e in project["environments"]} == {"sandbox", "production"}
    job = next(j for j in project["jobs"] if j["name"] == "cordial-activity-to-lytics")
    assert job["tasks"] == ["tap-cordial-activity target-lytics"]
    schedule = next(s for s in project["schedules"] if s["job"] == "cordial-activity-to-lytics")
    assert schedule["interval"] == "0 */6 * * *"
    # Meltano Hub is unreachable here: every plugin must be fully defined to install.
    for plugins in project["plugins"].values():
        for plugin in plugins:
            assert {"namespace", "pip_url", "executable"} <= set(plugin), plugin["name"]
            assert "variant" not in plugin, plugin["name"]


def test_no_secret_value_is_written_in_meltano_yml():
    project = _project()
    secret_names = {
        s["name"]
        for plugins in project["plugins"].values()
        for p in plugins
        for s in p.get("settings", [])
        if s.get("sensitive")
    }
    for environment in project["environments"]:
        for plugins in environment.get("config", {}).get("plugins", {}).values():
            for plugin in plugins:
                leaked = secret_names & set(plugin.get("config", {}))
                assert not leaked, f"{environment['name']}/{plugin['name']} sets {leaked}"


def test_the_catalog_meltano_uses_is_what_the_tap_discovers():
    plugin = meltano_yml_plugin("extractors", "tap-cordial-activity")
    exe = BIN / plugin["executable"]
    discovered = subprocess.run(
        [str(exe), "--discover"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    pinned = json.loads((ROOT / plugin["catalog"]).read_text(encoding="utf-8"))
    assert pinned == json.loads(discovered), (
        "the tap's schema changed: run `tap-cordial-activity --discover > "
        f"{plugin['catalog']}`"
    )
