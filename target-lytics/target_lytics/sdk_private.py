"""The one module that uses singer-sdk's private names; the rest of the package uses these wrappers.

- :class:`HookedTarget` replaces ``Target._process_schema_message``,
  ``_process_activate_version_message``, ``_process_batch_message``,
  ``_process_state_message`` and ``_write_state_message``
  (target_base.py) and
  ``PluginBase._validate_config`` (plugin_base.py) with public hooks of its own, and wraps
  ``_sinks_active``, ``_latest_state``, ``_handle_max_record_age``
  in public methods.
- :func:`record_validator`, :func:`remove_sdc_metadata` and :func:`check_key_properties` wrap the
  sink's ``_validator``, ``_remove_sdc_metadata_from_record`` and ``_singer_validate_message``
  (sinks/core.py), which the record fast path calls in place of the SDK's record loop.
- ``BaseJSONSchemaValidator`` and ``JSONSchemaValidator`` come from ``singer_sdk.sinks.core``,
  which does not export them; :func:`cli_config` reads ``plugin_base._ConfigInput``.
- ``BaseBatchFileEncoding`` (a BATCH message's encoding) comes from the private
  ``singer_sdk.helpers._batch``. BATCH files themselves are opened and deleted by
  :mod:`target_lytics.batch_files` (local files under ``batch_file_roots`` only).

Files that mirror singer-sdk behaviour (no private name, but a copy of what the SDK does; re-check
them with this module), each with the test that compares it with the SDK:

- ``fastpath.py`` and ``sinks.py`` (``LyticsSink.add_raws`` / ``_add_sdk_checked``) re-implement
  ``Target._process_record_message`` and the sink's per-record checks:
  tests/test_target_fastpath.py::test_fast_path_uploads_what_the_sdk_path_uploads and
  ::test_invalid_record_fails_on_both_paths_with_the_field_named.
- ``reader.py`` mirrors singer-sdk's msgspec reader (``singer_sdk.contrib.msgspec``):
  tests/test_target_reader.py::test_floats_outside_records_are_decimals_as_in_the_sdk_reader
  and ::test_messages_keep_their_order_whatever_the_chunk_size.
- ``batch_files.py`` (with ``LyticsSink._add_batch_checked``) replaces
  ``Sink.process_batch_files`` for JSON Lines:
  tests/test_target_batch_files.py::test_batch_files_upload_what_record_lines_upload.
- ``typed_records.py`` gives the SDK path's result without it:
  tests/test_target_typed_records.py::test_typed_events_equal_the_general_way.

Pinned: singer-sdk ~=0.54.9 (target-lytics/pyproject.toml). tests/test_target_private_names.py
fails when one of these names disappears or changes signature, or when another module of the
package uses a private singer-sdk name; tests/test_target_fastpath.py checks that the fast record
path uploads what the SDK's own path uploads. Re-check this module when upgrading singer-sdk.
"""

from __future__ import annotations

from typing import Any

import click
from singer_sdk.exceptions import ConfigValidationError
from singer_sdk.helpers._batch import BaseBatchFileEncoding
from singer_sdk.plugin_base import JSONSchemaValidator as ConfigValidator
from singer_sdk.plugin_base import _ConfigInput
from singer_sdk.sinks import Sink
from singer_sdk.sinks.core import BaseJSONSchemaValidator, JSONSchemaValidator
from singer_sdk.target_base import Target
from typing_extensions import override

__all__ = [
    "BaseBatchFileEncoding",
    "BaseJSONSchemaValidator",
    "HookedTarget",
    "JSONSchemaValidator",
    "check_key_properties",
    "cli_config",
    "record_validator",
    "remove_sdc_metadata",
]

#: singer-sdk private names used here, checked by the test named in the module docstring.
TARGET_PRIVATE_NAMES = (
    "_process_schema_message",
    "_process_activate_version_message",
    "_process_batch_message",
    "_process_state_message",
    "_write_state_message",
    "_validate_config",
    "_handle_max_record_age",
    "_latest_state",
    "_sinks_active",
)
SINK_PRIVATE_NAMES = ("_validator", "_remove_sdc_metadata_from_record", "_singer_validate_message")


class HookedTarget(Target):
    """A target with public hooks where singer-sdk offers only private message handlers."""

    # -- hooks for subclasses --------------------------------------------------------------------

    def clean_settings(self, config: dict[str, Any]) -> list[str]:
        """Tidy ``config`` in place before the schema check; what cannot be tidied (as the tap)."""
        return []

    def settings_problems(self, config: dict[str, Any]) -> list[str]:
        """Problems beyond the JSON types (relations, shapes), after the schema check."""
        return []

    def schema_problem(self, error: Any) -> str:
        """One JSON-schema validation error as a user-facing line."""
        return str(error.message)

    def check_message(self, message: dict) -> None:
        """Called before singer-sdk takes a SCHEMA, ACTIVATE_VERSION or BATCH message; may raise."""

    def stream_schema_registered(self, stream_name: str) -> None:
        """Called after a SCHEMA message registered (or replaced) the stream's sink."""

    def state_changed(self, state: dict) -> None:
        """Called after a STATE message that differs from the latest one was noted."""

    def state_drained(self, state: dict) -> None:
        """singer-sdk's drain asks to write ``state``; by default it is written at once."""
        self.write_state(state)

    # -- wrappers of private state ---------------------------------------------------------------

    def active_sink(self, stream_name: str) -> Sink | None:
        """The sink now receiving the stream's records, if any."""
        return self._sinks_active.get(stream_name)

    def active_sinks(self) -> list[Sink]:
        """Every sink now receiving records."""
        return list(self._sinks_active.values())

    def drain_if_records_too_old(self) -> None:
        """Drain every sink when records have waited longer than singer-sdk allows."""
        self._handle_max_record_age()

    def write_state(self, state: dict) -> None:
        """Write one STATE message to stdout, as singer-sdk does."""
        super()._write_state_message(state)

    # -- the private methods replaced -----------------------------------------------------------

    @override
    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        """Check every setting before any call; one message per problem."""
        schema = self.config_jsonschema
        self.append_builtin_config(schema)
        # One order in both plugins: tidy, then types and ranges (the schema), then relations.
        errors = self.clean_settings(self._config)
        # Validating self._config itself (not a copy) lets the SDK's validator fill in defaults.
        validator = ConfigValidator(schema)
        errors.extend(self.schema_problem(error) for error in validator.iter_errors(self._config))
        errors.extend(self.settings_problems(self._config))
        if errors and raise_errors:
            raise ConfigValidationError("Config validation failed", errors=errors, schema=schema)
        for error in errors:
            self.logger.warning("Config problem: %s", error)
        return errors

    @override
    def _process_schema_message(self, message_dict: dict) -> None:
        """:meth:`check_message`, register the schema, then :meth:`stream_schema_registered`."""
        self.check_message(message_dict)
        super()._process_schema_message(message_dict)
        self.stream_schema_registered(message_dict["stream"])

    @override
    def _process_state_message(self, message_dict: dict) -> None:
        """Note the STATE as singer-sdk does, then call :meth:`state_changed` if it changed."""
        previous = self._latest_state
        super()._process_state_message(message_dict)
        if self._latest_state != previous and self._latest_state is not None:
            self.state_changed(self._latest_state)

    @override
    def _process_activate_version_message(self, message_dict: dict) -> None:
        """:meth:`check_message`, then singer-sdk's handling."""
        self.check_message(message_dict)
        super()._process_activate_version_message(message_dict)

    @override
    def _process_batch_message(self, message_dict: dict) -> None:
        """:meth:`check_message`, then singer-sdk's handling."""
        self.check_message(message_dict)
        super()._process_batch_message(message_dict)

    @override
    def _write_state_message(self, state: dict) -> None:
        """Hand the STATE singer-sdk's drain would write to :meth:`state_drained`."""
        self.state_drained(state)


def record_validator(sink: Sink) -> BaseJSONSchemaValidator | None:
    """The validator the sink built with ``get_validator`` (None when validation is off)."""
    return sink._validator


def remove_sdc_metadata(sink: Sink, record: dict) -> None:
    """Remove singer-sdk's ``_sdc_*`` columns from ``record``, as the SDK's record loop does."""
    sink._remove_sdc_metadata_from_record(record)


def check_key_properties(sink: Sink, record: dict) -> None:
    """Raise singer-sdk's error when ``record`` lacks one of the stream's key properties."""
    sink._singer_validate_message(record)


def cli_config(ctx: click.Context) -> tuple[Any, bool]:
    """The ``--config`` files (or ``ENV``) given on the command line, and whether to read env."""
    config = ctx.params.get("config") or _ConfigInput()
    return config.config, config.parse_env
