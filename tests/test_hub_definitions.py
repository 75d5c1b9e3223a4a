"""hub/: the plugins' definitions in Meltano Hub's format, the source of the plugin definitions.

`meltano add --plugin-type=extractor tap-cordial-activity --from-ref <file>` copies a definition
into a user's project, so it must declare every setting the plugin reads, as `--about` describes it.
meltano.yml defines the same plugins for this repository and must agree with hub/ on every key it
sets. Each failure names the file, the setting and what to write there.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_meltano_project import KINDS_FOR_TYPE, _about, _json_type, meltano_yml_plugin

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = [
    ("extractors", "tap-cordial-activity"),
    ("loaders", "target-lytics"),
]
# Keys every setting of a Hub definition carries (Hub: `label`/`description` are shown on the
# plugin's page, `sensitive` decides where `meltano config set` stores the value).
SETTING_KEYS = {"name", "label", "kind", "sensitive", "description"}
# Top-level keys of a Hub definition that `meltano add --from-ref` needs for a complete plugin.
PLUGIN_KEYS = {
    "name",
    "namespace",
    "variant",
    "label",
    "description",
    "pip_url",
    "executable",
    "capabilities",
    "settings",
    "settings_group_validation",
}
# Keys meltano.yml may set for this repository alone: its editable install and pinned catalog.
PROJECT_ONLY_KEYS = {"pip_url", "catalog"}


def hub_path(plugin_type: str, name: str) -> Path:
    return ROOT / "hub" / plugin_type / f"{name}.yml"


def hub_definition(plugin_type: str, name: str) -> dict[str, Any]:
    return yaml.safe_load(hub_path(plugin_type, name).read_text(encoding="utf-8"))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _text(value: Any) -> Any:
    """Descriptions compare without their line breaks (YAML folding differs between the files)."""
    return " ".join(value.split()) if isinstance(value, str) else value


def _suggested_setting(name: str, schema: dict[str, Any]) -> str:
    """The Hub entry to add for a setting that --about lists, as one YAML flow mapping."""
    secret = bool(schema.get("secret") or schema.get("writeOnly"))
    json_type = _json_type(schema)
    kind = "password" if secret else ("options" if "enum" in schema else json_type)
    if json_type == "number":
        kind = "string"  # see KINDS_FOR_TYPE
    entry = [f"name: {name}", "label: ...", f"kind: {kind}"]
    if schema.get("default") is not None:
        entry.append(f"value: {json.dumps(schema['default'])}")  # JSON is YAML flow style
    entry.append(f"sensitive: {'true' if secret else 'false'}")
    entry.append(f"description: {' '.join(str(schema.get('description', '...')).split())!r}")
    return "{" + ", ".join(entry) + "}"


def setting_problems(plugin_type: str, name: str, about: dict[str, Any]) -> list[str]:
    """What the Hub definition gets wrong about the settings --about lists; empty when in step."""
    path = _rel(hub_path(plugin_type, name))
    properties: dict[str, dict[str, Any]] = about["settings"]["properties"]
    declared = {s["name"]: s for s in hub_definition(plugin_type, name)["settings"]}
    problems = [
        f"{path}: setting `{setting}` is missing ({name} --about lists it); add to `settings:` "
        f"{_suggested_setting(setting, schema)}"
        for setting, schema in properties.items()
        if setting not in declared
    ]
    problems += [
        f"{path}: setting `{setting}` is declared but {name} --about does not list it; remove it"
        for setting in declared
        if setting not in properties
    ]
    for setting, schema in properties.items():
        if setting not in declared:
            continue
        entry = declared[setting]
        where = f"{path}: setting `{setting}`"
        absent = SETTING_KEYS - set(entry)
        if absent:
            problems.append(f"{where} lacks {', '.join(sorted(absent))}")
        secret = bool(schema.get("secret") or schema.get("writeOnly"))
        if entry.get("sensitive") is not secret:
            problems.append(f"{where}: sensitive must be {str(secret).lower()} (--about secret)")
        if secret and entry.get("kind") != "password":
            problems.append(f"{where}: a secret needs kind: password")
        json_type = _json_type(schema)
        if entry.get("kind") not in KINDS_FOR_TYPE[json_type]:
            problems.append(
                f"{where}: kind {entry.get('kind')} does not fit JSON type {json_type}; "
                f"use one of {sorted(KINDS_FOR_TYPE[json_type])}"
            )
        if "enum" in schema:
            want = set(schema["enum"]) - {None}
            have = {o.get("value") for o in entry.get("options") or []}
            if entry.get("kind") != "options" or have != want:
                problems.append(
                    f"{where}: kind options with values {sorted(want)} (has {sorted(have)})"
                )
        default = schema.get("default")
        if default is not None and entry.get("value") != default:
            problems.append(
                f"{where}: value must be the default {default!r}, not {entry.get('value')!r}"
            )
        if default is None and "value" in entry:
            problems.append(f"{where}: value {entry['value']!r} but --about has no default")
    return problems


@pytest.mark.parametrize(("plugin_type", "name"), PLUGINS)
def test_hub_declares_every_setting_as_the_plugin_describes_it(plugin_type, name):
    problems = setting_problems(plugin_type, name, _about(name))
    assert not problems, "\n".join(problems)


def test_a_setting_the_plugin_adds_is_reported_with_its_file_and_entry():
    """The failure message names the file and the entry to add, e.g. after a merge."""
    about = _about("target-lytics")
    about["settings"]["properties"]["upload_tag"] = {
        "type": ["integer", "string", "null"],
        "default": 3,
        "description": "A new setting.",
    }
    [problem] = setting_problems("loaders", "target-lytics", about)
    assert problem == (
        "hub/loaders/target-lytics.yml: setting `upload_tag` is missing (target-lytics --about "
        "lists it); add to `settings:` {name: upload_tag, label: ..., kind: integer, value: 3, "
        "sensitive: false, description: 'A new setting.'}"
    )


@pytest.mark.parametrize(("plugin_type", "name"), PLUGINS)
def test_hub_definition_is_complete_for_meltano_add_from_ref(plugin_type, name):
    definition = hub_definition(plugin_type, name)
    path = _rel(hub_path(plugin_type, name))
    assert not PLUGIN_KEYS - set(definition), f"{path} lacks {PLUGIN_KEYS - set(definition)}"
    assert definition["name"] == name
    project = tomllib.loads((ROOT / name / "pyproject.toml").read_text(encoding="utf-8"))
    # pip_url is the package's name on the index (the out-of-repository test swaps in a wheel).
    assert definition["pip_url"] == project["project"]["name"], f"{path}: pip_url"
    assert definition["executable"] in project["project"]["scripts"], f"{path}: executable"
    assert (ROOT / name / definition["namespace"] / "__init__.py").exists(), f"{path}: namespace"
    advertised = set(_about(name)["capabilities"])
    # `test` is Meltano's own capability (it runs `--test`), not one singer-sdk advertises.
    assert set(definition["capabilities"]) <= advertised | {"test"}, (
        f"{path}: capabilities {set(definition['capabilities']) - advertised} not in --about"
    )
    declared = {s["name"] for s in definition["settings"]}
    for group in definition["settings_group_validation"]:
        assert set(group) <= declared, f"{path}: settings_group_validation {set(group) - declared}"
    if plugin_type == "loaders":
        commands = definition.get("commands") or {}
        assert {"schema-plan", "schema-publish"} <= set(commands), f"{path}: commands"
        assert "--schema-publish" in commands["schema-publish"]["args"]


@pytest.mark.parametrize(("plugin_type", "name"), PLUGINS)
def test_meltano_yml_agrees_with_the_hub_definition(plugin_type, name):
    hub = hub_definition(plugin_type, name)
    path = _rel(hub_path(plugin_type, name))
    project = meltano_yml_plugin(plugin_type, name)
    problems = []
    for key, value in project.items():
        if key in PROJECT_ONLY_KEYS or key == "settings":
            continue
        if _text(value) != _text(hub.get(key)):
            problems.append(f"meltano.yml {name}: `{key}` differs from {path}: copy it from there")
    hub_settings = {s["name"]: s for s in hub["settings"]}
    project_settings = {s["name"]: s for s in project["settings"]}
    problems += [
        f"meltano.yml {name}: setting `{s}` is missing; copy its entry from {path}"
        for s in hub_settings
        if s not in project_settings
    ]
    problems += [
        f"{path}: setting `{s}` is missing; meltano.yml {name} declares it (copy it over)"
        for s in project_settings
        if s not in hub_settings
    ]
    for setting, entry in project_settings.items():
        if setting not in hub_settings:
            continue
        # Absent `sensitive` is false in both files.
        merged = {"sensitive": False, **entry}
        for key, value in merged.items():
            if _text(value) != _text(
                hub_settings[setting].get(key, False if key == "sensitive" else None)
            ):
                problems.append(
                    f"meltano.yml {name}: setting `{setting}` `{key}` is {value!r}, {path} says "
                    f"{hub_settings[setting].get(key)!r}"
                )
    assert not problems, "\n".join(problems)
