"""TargetLytics: settings, the default Cordial stream mapping, the record fast path and --test."""

from __future__ import annotations

import copy
import dataclasses
import sys
import typing as t

import click
from singer_sdk import typing as th
from singer_sdk.contrib.msgspec import MsgSpecReader
from singer_sdk.exceptions import InvalidRecord
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.sinks import Sink
from singer_sdk.target_base import Target

from target_lytics.client import LyticsClient, LyticsError, RetryPolicy
from target_lytics.mapping import StreamMapping, ValueConversionError
from target_lytics.schema_publish import run_schema_command
from target_lytics.sinks import LyticsSink
from target_lytics.user_fields import (
    ACTIVITY_FIELDS,
    FIELD_ENTRY_SCHEMA,
    WORKFLOWS,
    FieldSettingError,
)

if t.TYPE_CHECKING:
    from singer_sdk.plugin_base import _ConfigInput

#: Lytics' documented cap per request body.
HARD_MAX_REQUEST_BYTES = 10_000_000
DEFAULT_MAX_REQUEST_BYTES = 5_000_000

#: The ``streams`` entries a user setting is merged over (by Singer stream name).
DEFAULT_STREAMS: dict[str, dict[str, t.Any]] = {
    "activity": {
        "lytics_stream": "cordial_activity",
        "fields": ACTIVITY_FIELDS,
        "timestamp_field": "cr_event_timestamp",
    },
}

#: singer-sdk's record metadata columns, removed from records when add_record_metadata is off.
_SDC_COLUMNS = frozenset(
    {
        "_sdc_extracted_at",
        "_sdc_received_at",
        "_sdc_batched_at",
        "_sdc_deleted_at",
        "_sdc_sequence",
        "_sdc_table_version",
        "_sdc_sync_started_at",
    }
)

_STREAM_ENTRY = th.ObjectType(
    th.Property(
        "lytics_stream",
        th.StringType,
        description="Lytics stream to upload into (default: the Singer stream's name).",
    ),
    th.Property(
        "fields",
        th.ObjectType(additional_properties=th.CustomType(FIELD_ENTRY_SCHEMA)),
        description=(
            "Source field -> Lytics field, as a name or as {field, type, mergeop, identifier, "
            "shortdesc} (the user field --schema-publish creates). Only these fields are sent "
            "unless include_unmapped_fields is true; without `fields` every field is sent as is."
        ),
    ),
    th.Property(
        "timestamp_field",
        th.StringType,
        description="Lytics field holding the event time (sent as ?timestamp_field=).",
    ),
    additional_properties=False,
)


#: Errors whose message says what is wrong and what to do (see :meth:`TargetLytics.invoke`).
USER_ERRORS: tuple[type[Exception], ...] = (
    LyticsError,
    InvalidRecord,
    ValueConversionError,
    FieldSettingError,
)


class TargetLytics(Target):
    """Singer target that uploads records into Lytics streams."""

    name = "target-lytics"
    default_sink_class = LyticsSink
    # msgspec parses Singer lines several times faster than the default simplejson reader.
    message_reader_class = MsgSpecReader

    config_jsonschema = th.PropertiesList(
        th.Property(
            "api_token",
            th.StringType,
            required=True,
            secret=True,
            description="Lytics API token, sent as the Authorization header.",
        ),
        th.Property(
            "api_url",
            th.StringType,
            default="https://api.lytics.io",
            description="Lytics API base URL.",
        ),
        th.Property(
            "streams",
            th.ObjectType(additional_properties=_STREAM_ENTRY),
            description=(
                "Per Singer stream: {lytics_stream, fields: {source: lytics_field or {field, "
                "type, mergeop, identifier, shortdesc}}, timestamp_field}. Merged over the "
                "defaults by Singer stream name; the default maps `activity` to "
                "`cordial_activity` with the Cordial fields as user fields (cID -> "
                "cr_contact_id, the identifier, ...). Streams not listed go to the Lytics stream "
                "of the same name with their fields as they are."
            ),
        ),
        th.Property(
            "include_unmapped_fields",
            th.BooleanType,
            default=False,
            description="For a mapped stream, also send the fields that have no mapping.",
        ),
        th.Property(
            "dry_run",
            th.BooleanType,
            default=False,
            description="Send dryrun=true: Lytics validates the events but stores nothing.",
        ),
        th.Property(
            "max_request_bytes",
            th.IntegerType(minimum=256, maximum=HARD_MAX_REQUEST_BYTES),
            default=DEFAULT_MAX_REQUEST_BYTES,
            description="Largest request body in bytes (at most 10,000,000).",
        ),
        th.Property(
            "request_timeout_seconds",
            th.NumberType(exclusive_minimum=0),
            default=60,
            description="Timeout of one upload request.",
        ),
        th.Property(
            "max_retries",
            th.IntegerType(minimum=0),
            default=8,
            description="Retries of a request after 429, 5xx, timeouts or connection errors.",
        ),
        th.Property(
            "retry_initial_delay_seconds",
            th.NumberType(minimum=0),
            default=1,
            description="Backoff before the first retry; doubles each retry (with jitter).",
        ),
        th.Property(
            "retry_max_delay_seconds",
            th.NumberType(minimum=0),
            default=60,
            description="Longest backoff between retries (Retry-After may ask for more).",
        ),
        th.Property(
            "schema_workflow",
            th.StringType(allowed_values=list(WORKFLOWS)),
            default="auto",
            description=(
                "How --schema-publish writes the user schema: `auto` reads the account setting "
                "enable_schema_patches (and fails if the token may not read it), `direct` writes "
                "fields and mappings then publishes, `patch` uses one schema patch and applies it."
            ),
        ),
    ).to_dict()

    #: Use the record fast path when a stream qualifies (see :meth:`_process_record_message`).
    fast_path_enabled: t.ClassVar[bool] = True

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        """Check the settings the schema cannot express, then set up the client."""
        super().__init__(*args, **kwargs)
        # Drain sinks one after another: each sink already uploads in its own background thread,
        # and singer-sdk's parallel drain starts new joblib threads on every drain, whose malloc
        # arenas made peak RSS grow with the run's length once STATE is checkpointed often.
        self.max_parallelism = 1
        max_bytes = int(self.config.get("max_request_bytes") or DEFAULT_MAX_REQUEST_BYTES)
        if max_bytes > HARD_MAX_REQUEST_BYTES:
            msg = (
                f"max_request_bytes is {max_bytes}; Lytics accepts at most "
                f"{HARD_MAX_REQUEST_BYTES} bytes per request."
            )
            raise ValueError(msg)
        self.max_request_bytes = max_bytes
        self.streams_config = self.merged_streams(self.config.get("streams"))
        # Created up front: upload threads of several sinks share it.
        self.client = self._new_client()
        # Sinks that take the fast path, by Singer stream name; rebuilt on each SCHEMA.
        self._fast_sinks: dict[str, LyticsSink] = {}

    @staticmethod
    def merged_streams(user: t.Mapping[str, t.Any] | None) -> dict[str, dict[str, t.Any]]:
        """The defaults with the user's entries laid over them, by Singer stream name."""
        merged = copy.deepcopy(DEFAULT_STREAMS)
        for name, entry in (user or {}).items():
            merged[name] = dict(entry or {})
        return merged

    def stream_mapping(self, stream_name: str) -> StreamMapping:
        """The resolved mapping of a Singer stream (pass-through when not configured)."""
        return StreamMapping.from_setting(stream_name, self.streams_config.get(stream_name))

    def _new_client(self) -> LyticsClient:
        """The one Lytics client (one keep-alive session) shared by every sink."""
        return LyticsClient(
            api_url=str(self.config.get("api_url") or "https://api.lytics.io"),
            api_token=str(self.config["api_token"]),
            timeout_seconds=float(self.config.get("request_timeout_seconds") or 60),
            retry=RetryPolicy(
                max_retries=int(self.config.get("max_retries", 8)),
                base_delay_seconds=float(self.config.get("retry_initial_delay_seconds", 1)),
                max_delay_seconds=float(self.config.get("retry_max_delay_seconds", 60)),
            ),
        )

    # Record fast path ---------------------------------------------------------------------------

    def _process_schema_message(self, message_dict: dict) -> None:
        """Register the schema, then decide whether its stream may take the fast path."""
        super()._process_schema_message(message_dict)
        stream_name = message_dict["stream"]
        self._fast_sinks.pop(stream_name, None)
        sink = self._fast_path_sink(stream_name)
        if sink is not None:
            self._fast_sinks[stream_name] = sink

    def _fast_path_sink(self, stream_name: str) -> LyticsSink | None:
        """The sink when nothing between the message and the sink would change the record."""
        if not self.fast_path_enabled:
            return None
        maps = self.mapper.stream_maps.get(stream_name) or []
        if len(maps) != 1:
            return None
        stream_map = maps[0]
        if (
            type(stream_map) is not SameRecordTransform
            or stream_map.stream_alias != stream_name
            or (stream_map.flattening_options and stream_map.flattening_enabled)
        ):
            return None
        sink = self._sinks_active.get(stream_name)
        if (
            not isinstance(sink, LyticsSink)
            or sink.include_sdc_metadata_properties
            or type(sink).preprocess_record is not Sink.preprocess_record
        ):
            return None
        return sink

    def _process_record_message(self, message_dict: dict) -> None:
        """Process a RECORD, through the fast path when its stream qualifies.

        Fast path, checked against singer-sdk 0.54.x (``Target._process_record_message``): for a
        stream with no stream maps, no flattening and no record metadata, the SDK's per-record
        work that changes nothing (record copy, identity transform, context, the
        date-time-to-object parsing our mapping does itself, ``preprocess_record``, debug hook)
        is skipped. Kept: line checks, removal of ``_sdc_*`` columns, validation, key-property
        check, tallies, the record counter, draining a full sink and the max-record-age drain.
        ``tests/test_target_fastpath.py`` checks both paths upload the same events. One difference:
        an unparseable date-time in a field that is not sent fails the SDK path only (the fast
        path parses date-times only when it sends them).
        """
        stream_name: str = message_dict.get("stream", "")
        sink = self._fast_sinks.get(stream_name)
        if sink is None or self._sinks_active.get(stream_name) is not sink:
            super()._process_record_message(message_dict)
            return
        if "record" not in message_dict:
            self._assert_line_requires(message_dict, requires={"stream", "record"})  # raises
        record = message_dict["record"]
        if not _SDC_COLUMNS.isdisjoint(record):
            sink._remove_sdc_metadata_from_record(record)
        validator = sink._validator
        if validator is not None:
            try:
                validator.validate(record)
            except InvalidRecord:
                sink.logger.exception("Record validation failed")
                if sink.fail_on_record_validation_exception:
                    raise
        for key in sink.key_properties:
            if key not in record:
                sink._singer_validate_message(record)  # raises the SDK's error
        sink.tally_record_read()
        sink.process_record(record, {})
        sink.record_counter_metric.increment()
        if sink.is_full:
            self.logger.info(
                "Target sink for '%s' is full. Current size is '%s'. Draining...",
                sink.stream_name,
                sink.current_size,
            )
            self.drain_one(sink)
        self._handle_max_record_age()

    #: A changed STATE is checkpointed (uploads finished, then STATE written) at most this often
    #: while records are pending, so a tap that writes STATE after every record does not turn
    #: each record into a request; with nothing pending it is written at once.
    STATE_CHECKPOINT_SECONDS = 1.0

    def _process_state_message(self, message_dict: dict) -> None:
        """Checkpoint the tap's STATE once the records before it are accepted by Lytics.

        singer-sdk writes STATE only when the input ends (or records are 5 minutes old), so a run
        killed midway would leave no checkpoint and the next run would resend all it delivered.
        Draining first keeps the rule that STATE never covers records Lytics has not accepted.
        """
        previous = self._latest_state
        super()._process_state_message(message_dict)
        if self._latest_state == previous:
            return
        pending = any(sink.current_size for sink in self._sinks_active.values())
        if not pending or self._max_record_age_in_minutes * 60 >= self.STATE_CHECKPOINT_SECONDS:
            self.drain_all()

    # Connection check ---------------------------------------------------------------------------

    def check_connection(self) -> list[str]:
        """POST a sample event with ``dryrun=true`` to each configured Lytics stream.

        Returns the Lytics streams checked; raises :class:`LyticsError` with what to fix.
        """
        streams = sorted({self.stream_mapping(name).lytics_stream for name in self.streams_config})
        sample = b'[{"target_lytics_connection_check":true}]'
        # A check should answer quickly: at most two retries, whatever max_retries says.
        policy = self.client.retry
        self.client.retry = dataclasses.replace(policy, max_retries=min(policy.max_retries, 2))
        for lytics_stream in streams:
            self.client.upload(lytics_stream, sample, dry_run=True, event_count=1)
        return streams

    @classmethod
    def invoke(  # type: ignore[override]
        cls,
        *,
        about: bool = False,
        about_format: str | None = None,
        config: _ConfigInput | None = None,
        file_input: t.IO[str] | None = None,
        test: bool = False,
    ) -> None:
        """Run the target, or with ``--test`` only check the connection and the token."""
        if not test:
            try:
                super().invoke(
                    about=about, about_format=about_format, config=config, file_input=file_input
                )
            except USER_ERRORS as exc:
                # The message names the HTTP status and what to do, or the stream and field:
                # printed alone instead of under a traceback.
                cls.logger.error("%s", exc)
                sys.exit(1)
            return
        if about:
            cls.print_about(about_format)
            sys.exit(0)
        from singer_sdk.plugin_base import _ConfigInput

        config = config or _ConfigInput()
        target = cls(config=config.config, validate_config=True, parse_env_config=config.parse_env)
        try:
            streams = target.check_connection()
        except LyticsError as exc:
            target.logger.error("Connection check failed: %s", exc)
            sys.exit(1)
        target.logger.info(
            "Connection check passed: Lytics accepted a dry-run upload to %s", ", ".join(streams)
        )

    @classmethod
    def cb_schema(cls, ctx: click.Context, param: click.Parameter, value: bool) -> None:
        """``--schema-plan`` / ``--schema-publish``: show or publish the user schema, then exit."""
        if not value:
            return
        config = ctx.params.get("config")  # singer-sdk's --config is eager: already parsed
        try:
            target = cls(
                config=config.config if config else {},
                parse_env_config=bool(config and config.parse_env),
                validate_config=True,
            )
            run_schema_command(target, DEFAULT_STREAMS, publish=param.name == "schema_publish")
        except USER_ERRORS as exc:
            cls.logger.error("%s", exc)
            sys.exit(1)
        ctx.exit()

    @classmethod
    def get_singer_command(cls) -> click.Command:
        """The SDK's target command plus ``--test`` (a dry-run upload, nothing stored)."""
        command = super().get_singer_command()
        command.params.append(
            click.Option(
                ["--test"],
                is_flag=True,
                default=False,
                help=(
                    "Check the connection and api_token: POST a sample event with dryrun=true "
                    "(Lytics stores nothing), then exit."
                ),
            )
        )
        command.params.append(
            click.Option(
                ["--schema-plan"],
                is_flag=True,
                default=False,
                expose_value=False,
                callback=cls.cb_schema,
                help=(
                    "Compare the Lytics user fields and mappings with the streams setting: print "
                    "what --schema-publish would create, what exists and what conflicts. Writes "
                    "nothing."
                ),
            )
        )
        command.params.append(
            click.Option(
                ["--schema-publish"],
                is_flag=True,
                default=False,
                expose_value=False,
                callback=cls.cb_schema,
                help=(
                    "Create the missing user fields and mappings in Lytics and publish them "
                    "(idempotent; a conflict writes nothing), then exit."
                ),
            )
        )
        return command


if __name__ == "__main__":
    TargetLytics.cli()
