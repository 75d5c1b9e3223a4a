"""The one module that uses singer-sdk's private names.

- :class:`WindowedStream` replaces ``Stream._sync_records`` (streams/core.py), so that the
  bookmark moves once per finished export window and RECORD lines can bypass the SDK when nothing
  transforms them; it wraps ``_write_record_message``, ``_write_state_message``, ``_abort_sync``,
  ``_tap`` and ``state_manager.is_flushed`` in public methods of its own. It turns off the SDK's own
  batch sync (which would bypass the windows) and parses ``batch_config`` into the SDK's
  ``BatchConfig`` (``singer_sdk.helpers._batch``) for :mod:`tap_cordial_activity.batch_files`.
- :class:`SideStream` (``activity_rejects``, written by ``ActivityStream``) replaces
  ``_sync_records`` (empty) and ``_write_schema_message`` (only through ``write_schema_now``) and
  wraps ``_write_record_message``.
- :class:`SettingsCheckingTap` replaces ``PluginBase._validate_config`` (plugin_base.py) so that
  every settings problem is listed at once with no secret echoed, validating ``_config`` itself
  (the SDK's validator fills in defaults there); :func:`cli_config` reads ``_ConfigInput``.

Files that mirror singer-sdk behaviour without naming its private parts, each with the test that
compares it with the SDK:

- ``streams.py`` (``ActivityStream.sync_all`` / ``windows``): the windowed sync that replaces
  ``Stream._sync_records`` (record and batch counters, sync timer, dry-run limit, STATE after
  records) -- tests/test_tap_standard.py (singer-sdk's own tap test suite) and
  tests/test_tap_fast_path.py.
- ``writers.py``: ``FastWriter`` builds RECORD JSON by hand as ``RecordMessage.to_dict()``
  through the msgspec writer does -- tests/test_tap_fast_path.py (both paths give the same
  messages); ``BatchWriter`` writes BATCH messages and JSONL files in the SDK's batch format --
  tests/test_tap_batch_files.py checks the files and messages (not yet against the SDK's own
  batch writer, which the windowed sync turns off).

Pinned: singer-sdk ~=0.54.9 (see the tap's pyproject). tests/test_tap_private_names.py fails when
one of these names or signatures changes; tests/test_tap_fast_path.py checks that both record
paths give the same messages. Re-check this module when upgrading singer-sdk.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import click
from singer_sdk import Stream, Tap
from singer_sdk.exceptions import ConfigValidationError, MaxRecordsLimitException
from singer_sdk.helpers._batch import BatchConfig
from singer_sdk.plugin_base import JSONSchemaValidator, _ConfigInput
from typing_extensions import override

if TYPE_CHECKING:
    from singer_sdk.helpers.types import Context

#: singer-sdk private names used here, checked by the test named in the module docstring.
STREAM_PRIVATE_NAMES = (
    "_sync_records", "_write_record_message", "_write_state_message", "_abort_sync",
    "_write_schema_message",
)
PLUGIN_PRIVATE_NAMES = ("_validate_config",)

__all__ = [
    "BatchConfig", "SettingsCheckingTap", "SideStream", "WindowedStream", "cli_config",
]


class WindowedStream(Stream):
    """A stream that writes its own records and STATE: subclasses implement :meth:`sync_all`."""

    @abstractmethod
    def sync_all(self, *, write_messages: bool) -> Iterator[dict[str, Any]]:
        """Write (when ``write_messages``) and yield every record, with STATE as it goes."""

    @override
    def _sync_records(
        self,
        context: Context | None = None,
        *,
        write_messages: bool = True,
    ) -> Generator[dict, Any, Any]:
        """Hand the sync to :meth:`sync_all` (the stream has no partitions)."""
        yield from self.sync_all(write_messages=write_messages)

    @override
    def get_batch_config(self, config: Mapping) -> None:
        """None: singer-sdk's batch sync is off; :meth:`sync_all` writes BATCH files itself."""
        return None

    def windowed_batch_config(self) -> BatchConfig | None:
        """The ``batch_config`` setting as singer-sdk parses it; None when it is not set."""
        return super().get_batch_config(self.config)

    @property
    def owning_tap(self) -> Tap:
        """The tap this stream belongs to."""
        return self._tap

    def write_record(self, record: dict[str, Any]) -> None:
        """Write one record through the SDK (stream maps, type conformance, message writer)."""
        self._write_record_message(record)

    def mark_state_pending(self) -> None:
        """Note that records went out, so a STATE message is due again."""
        self.state_manager.is_flushed = False

    def write_state_now(self) -> None:
        """Write a STATE message with the current state."""
        self.state_manager.is_flushed = False
        self._write_state_message()

    def abort_at_limit(self, limit: int) -> None:
        """Stop a dry run at its record limit, as singer-sdk's own loop does."""
        self._abort_sync(
            abort_reason=MaxRecordsLimitException(
                f"Stream prematurely aborted due to the stream's max dry run record limit ({limit})"
                " being reached."
            )
        )


class SideStream(Stream):
    """A stream whose records another stream writes (``activity_rejects``).

    Its own sync (after the writing stream's: streams sync in name order) writes nothing (no
    SCHEMA, no STATE); the writing stream puts out its SCHEMA (:meth:`write_schema_now`) before
    its first record.
    """

    @property
    @override
    def emit_activate_version_messages(self) -> bool:
        """Never: an ACTIVATE_VERSION at its own sync would let a target drop the records."""
        return False

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        """None of its own."""
        return ()

    @override
    def _sync_records(
        self,
        context: Context | None = None,
        *,
        write_messages: bool = True,
    ) -> Generator[dict, Any, Any]:
        """Nothing: the records went out during the other stream's sync, before its STATE."""
        yield from ()

    @override
    def finalize_state_progress_markers(self, state: dict | None = None) -> None:
        """Nothing: the stream has no state, so its sync's end writes no STATE message."""

    @override
    def _write_schema_message(self) -> None:
        """Nothing at its own sync: only :meth:`write_schema_now` writes the SCHEMA."""

    def write_schema_now(self) -> None:
        """Write the stream's SCHEMA message (stream maps applied)."""
        Stream._write_schema_message(self)

    def write_record(self, record: dict[str, Any]) -> None:
        """Write one record through the SDK (stream maps, type conformance, message writer)."""
        self._write_record_message(record)


class SettingsCheckingTap(Tap):
    """A tap whose settings check lists every problem: subclasses implement the two hooks."""

    @abstractmethod
    def schema_problem(self, error: Any) -> str:
        """One JSON-schema validation error as a user-facing line (no secret echoed)."""

    @abstractmethod
    def settings_problems(self, config: dict[str, Any]) -> list[str]:
        """Every problem beyond the JSON types, as user-facing sentences."""

    def clean_settings(self, config: dict[str, Any]) -> None:
        """Tidy ``config`` in place before it is checked (e.g. strip pasted whitespace)."""

    @override
    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        """Check every setting before any call; one message per problem."""
        self.clean_settings(self._config)
        schema = self.config_jsonschema
        self.append_builtin_config(schema)
        # Validating self._config itself (not a copy) lets the SDK's validator fill in defaults.
        validator = JSONSchemaValidator(schema)
        errors = [self.schema_problem(error) for error in validator.iter_errors(self._config)]
        errors.extend(self.settings_problems(self._config))
        if errors and raise_errors:
            raise ConfigValidationError("Config validation failed", errors=errors, schema=schema)
        for error in errors:
            self.logger.warning("Config problem: %s", error)
        return errors


def cli_config(ctx: click.Context) -> tuple[Any, bool]:
    """The ``--config`` files (or ``ENV``) given on the command line, and whether to read env."""
    config = ctx.params.get("config") or _ConfigInput()
    return config.config, config.parse_env
