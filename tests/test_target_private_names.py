"""singer-sdk's private names that target_lytics.sdk_private uses are still there, unchanged.

Fails after a singer-sdk upgrade that renames, removes or re-shapes one of them, and when a module
of the package other than sdk_private uses a private singer-sdk name.
"""

from __future__ import annotations

import ast
import inspect
from importlib.metadata import version
from pathlib import Path

import pytest
import target_lytics
from singer_sdk.helpers import _batch as sdk_batch
from singer_sdk.plugin_base import PluginBase, _ConfigInput
from singer_sdk.singerlib.encoding import GenericSingerReader
from singer_sdk.sinks import Sink
from singer_sdk.sinks import core as sinks_core
from singer_sdk.target_base import Target
from target_lytics import sdk_private
from target_lytics.sinks import FastJSONSchemaValidator, LyticsSink
from target_lytics.target import TargetLytics

POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD
KEYWORD = inspect.Parameter.KEYWORD_ONLY
EMPTY = inspect.Parameter.empty


def _positional(*names: str) -> list[tuple[str, object, object]]:
    return [(name, POSITIONAL, EMPTY) for name in ("self", *names)]


#: Private methods: (defining class, [(parameter, kind, default), ...]) as sdk_private calls them.
METHODS = {
    "_process_schema_message": (Target, _positional("message_dict")),
    "_process_state_message": (Target, _positional("message_dict")),
    "_process_activate_version_message": (Target, _positional("message_dict")),
    "_process_batch_message": (Target, _positional("message_dict")),
    "_write_state_message": (Target, _positional("state")),
    "_validate_config": (Target, [*_positional(), ("raise_errors", KEYWORD, True)]),
    "_handle_max_record_age": (Target, _positional()),
    "_remove_sdc_metadata_from_record": (Sink, _positional("record")),
    "_singer_validate_message": (Sink, _positional("record")),
}
#: Private properties and instance attributes: (owner, what the value must be).
TARGET_ATTRIBUTES = {
    "_latest_state": type(None),
    "_sinks_active": dict,
}
SINK_ATTRIBUTES = {"_validator": FastJSONSchemaValidator}

SCHEMA = {"type": "object", "properties": {"id": {"type": "integer"}}}


def _shape(function: object) -> list[tuple[str, object, object]]:
    parameters = inspect.signature(function).parameters.values()  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in parameters]


def test_the_pinned_version_is_installed():
    assert version("singer-sdk") == "0.54.9", "re-check target_lytics/sdk_private.py, then re-pin"


def test_the_fence_lists_exactly_the_names_checked_here():
    checked = set(METHODS) | set(TARGET_ATTRIBUTES) | set(SINK_ATTRIBUTES)
    assert set(sdk_private.TARGET_PRIVATE_NAMES) | set(sdk_private.SINK_PRIVATE_NAMES) == checked


@pytest.mark.parametrize("name", sorted(METHODS))
def test_private_method_exists_with_the_same_signature(name):
    owner, expected = METHODS[name]
    function = inspect.getattr_static(owner, name, None)
    assert callable(function), f"{owner.__name__}.{name} is gone"
    assert _shape(function) == expected


def test_private_attributes_of_a_target_and_a_sink():
    target = TargetLytics(config={"api_token": "t"})
    for name, kind in TARGET_ATTRIBUTES.items():
        assert isinstance(getattr(target, name), kind), name
    sink = target.add_sink("s", SCHEMA, [])
    assert isinstance(sink, LyticsSink)
    assert target._sinks_active == {"s": sink}
    for name, kind in SINK_ATTRIBUTES.items():
        assert isinstance(getattr(sink, name), kind), name
    sink._remove_sdc_metadata_from_record(record := {"id": 1, "_sdc_sequence": 2})
    assert record == {"id": 1}
    sink.clean_up()


def test_private_imports():
    for name in ("BaseJSONSchemaValidator", "JSONSchemaValidator"):
        assert getattr(sinks_core, name) is getattr(sdk_private, name)
    assert _shape(sinks_core.BaseJSONSchemaValidator.__init__)[:2] == [
        ("self", POSITIONAL, EMPTY),
        ("schema", POSITIONAL, EMPTY),
    ]
    assert "validate_formats" in inspect.signature(sinks_core.JSONSchemaValidator).parameters
    config = _ConfigInput.from_cli_args("ENV")
    assert config.config == {}
    assert config.parse_env is True


def test_batch_file_encoding():
    # What target_lytics.sinks reads of a BATCH message's encoding.
    assert sdk_batch.BaseBatchFileEncoding is sdk_private.BaseBatchFileEncoding
    encoding = sdk_private.BaseBatchFileEncoding.from_dict({"format": "jsonl", "compression": None})
    assert (encoding.format, encoding.compression) == ("jsonl", None)


class PlainSink(Sink):
    """singer-sdk's Sink with nothing of the package's."""

    def process_record(self, record: dict, context: dict) -> None:
        """Keep nothing."""

    def process_batch(self, context: dict) -> None:
        """Send nothing."""


class PlainTarget(Target):
    """singer-sdk's Target with nothing of the package's."""

    name = "plain-target"
    default_sink_class = PlainSink
    config_jsonschema = {"type": "object", "properties": {}}


def _private_sdk_names() -> set[str]:
    """Every private (single underscore) name of singer-sdk's Target, Sink and their instances."""
    target = PlainTarget(config={})
    sink = target.add_sink("s", SCHEMA, [])
    names = set()
    for source in (Target, Sink, PluginBase, GenericSingerReader, target, sink):
        names |= {n for n in dir(source) if n.startswith("_") and not n.startswith("__")}
    assert {"_sinks_active", "_validator", "_latest_state"} <= names
    return names


def test_no_module_outside_the_fence_uses_private_sdk_names():
    private = _private_sdk_names()
    package = Path(target_lytics.__file__).parent
    problems = []
    for path in sorted(package.glob("*.py")):
        if path.name == "sdk_private.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("singer_sdk"):
                module = node.module or ""
                if module in {"singer_sdk.sinks.core", "singer_sdk.plugin_base"} or any(
                    part.startswith("_") for part in module.split(".")
                ):
                    problems.append(f"{path.name}:{node.lineno} imports from {module}")
                problems += [
                    f"{path.name}:{node.lineno} imports {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_")
                ]
            elif isinstance(node, ast.Attribute) and node.attr in private:
                problems.append(f"{path.name}:{node.lineno} uses .{node.attr}")
    assert problems == []
