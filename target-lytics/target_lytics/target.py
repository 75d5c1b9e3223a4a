"""TargetLytics: the Singer target, its STATE checkpoints and the ``--test`` connection check."""

from __future__ import annotations

import copy
import dataclasses
import typing as t

import click
from singer_sdk.contrib.msgspec import MsgSpecReader
from typing_extensions import override

from target_lytics.client import LyticsClient, RetryPolicy
from target_lytics.errors import LyticsError, user_errors_end_the_run
from target_lytics.fastpath import FastRecordPath
from target_lytics.mapping import StreamMapping
from target_lytics.schema_publish import run_schema_command
from target_lytics.sdk_private import HookedTarget, cli_config
from target_lytics.settings import (
    CONFIG_SCHEMA,
    DEFAULT_STREAMS,
    merged_streams,
    parse_number_settings,
    schema_problem,
    setting,
)
from target_lytics.sinks import LyticsSink


class TargetLytics(HookedTarget):
    """Singer target that uploads records into Lytics streams."""

    name = "target-lytics"
    default_sink_class = LyticsSink
    # msgspec parses Singer lines several times faster than the default simplejson reader.
    message_reader_class = MsgSpecReader
    # A copy: singer-sdk adds its built-in settings to this dict.
    config_jsonschema = copy.deepcopy(CONFIG_SCHEMA)

    #: Use the record fast path (see :mod:`target_lytics.fastpath`) when a stream qualifies.
    fast_path_enabled: t.ClassVar[bool] = True

    #: A changed STATE is checkpointed (uploads finished, then STATE written) at most this often
    #: while records are pending, so a tap that writes STATE after every record does not turn
    #: each record into a request; with nothing pending it is written at once.
    STATE_CHECKPOINT_SECONDS = 1.0

    #: ``--test`` answers in seconds: at most this many retries and this request timeout.
    CHECK_MAX_RETRIES = 2
    CHECK_TIMEOUT_SECONDS = 5.0

    @override
    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        """Check the settings (singer-sdk), then set up the mapping and the client."""
        super().__init__(*args, **kwargs)
        # Drain sinks one after another: each sink already uploads in its own background thread,
        # and singer-sdk's parallel drain starts new joblib threads on every drain, whose malloc
        # arenas made peak RSS grow with the run's length once STATE is checkpointed often.
        self.max_parallelism = 1
        self.max_request_bytes = int(setting(self.config, "max_request_bytes"))
        self.streams_config = merged_streams(setting(self.config, "streams"))
        # Created up front: upload threads of several sinks share it.
        self.client = self._new_client()
        self.fast_path = FastRecordPath(self)

    def stream_mapping(self, stream_name: str) -> StreamMapping:
        """The resolved mapping of a Singer stream (pass-through when not configured)."""
        return StreamMapping.from_setting(stream_name, self.streams_config.get(stream_name))

    def _new_client(self) -> LyticsClient:
        """The one Lytics client (one keep-alive session) shared by every sink."""
        config = self.config
        return LyticsClient(
            api_url=str(setting(config, "api_url")),
            api_token=str(config["api_token"]),
            timeout_seconds=float(setting(config, "request_timeout_seconds")),
            retry=RetryPolicy(
                max_retries=int(setting(config, "max_retries")),
                base_delay_seconds=float(setting(config, "retry_initial_delay_seconds")),
                max_delay_seconds=float(setting(config, "retry_max_delay_seconds")),
            ),
        )

    # Settings -----------------------------------------------------------------------------------

    @override
    def settings_problems(self, config: dict[str, t.Any]) -> list[str]:
        """Numbers given as text become numbers; text that is not a number is a problem."""
        return parse_number_settings(config, self.config_jsonschema)

    @override
    def schema_problem(self, error: t.Any) -> str:
        """A JSON-schema error as one line naming the setting, without echoing a secret."""
        return schema_problem(error)

    # Records and STATE --------------------------------------------------------------------------

    @override
    def stream_schema_registered(self, stream_name: str) -> None:
        """Decide whether the stream may take the record fast path."""
        if self.fast_path_enabled:
            self.fast_path.stream_registered(stream_name)

    @override
    def process_record_fast(self, message_dict: dict) -> bool:
        """Send the record through the fast path when its stream qualifies."""
        return self.fast_path.process(message_dict)

    @override
    def state_changed(self) -> None:
        """Checkpoint the tap's STATE once the records before it are accepted by Lytics.

        singer-sdk writes STATE only when the input ends (or records are 5 minutes old), so a run
        killed midway would leave no checkpoint and the next run would resend all it delivered.
        Draining first keeps the rule that STATE never covers records Lytics has not accepted.
        """
        pending = any(sink.current_size for sink in self.active_sinks())
        if not pending or self.seconds_since_full_drain >= self.STATE_CHECKPOINT_SECONDS:
            self.drain_all()

    # Command line -------------------------------------------------------------------------------

    def check_connection(self) -> list[str]:
        """POST a sample event with ``dryrun=true`` to each configured Lytics stream.

        Returns:
            The Lytics streams checked.

        Raises:
            LyticsError: Lytics refused the sample or could not be reached; says what to fix.
        """
        streams = sorted({self.stream_mapping(name).lytics_stream for name in self.streams_config})
        sample = b'[{"target_lytics_connection_check":true}]'
        client = self.client
        client.retry = dataclasses.replace(
            client.retry, max_retries=min(client.retry.max_retries, self.CHECK_MAX_RETRIES)
        )
        client.timeout_seconds = min(client.timeout_seconds, self.CHECK_TIMEOUT_SECONDS)
        for lytics_stream in streams:
            try:
                client.upload(lytics_stream, sample, dry_run=True, event_count=1)
            except LyticsError as exc:
                raise LyticsError(f"Connection check of {client.api_url} failed: {exc}") from exc
        return streams

    @classmethod
    def cb_test(cls, ctx: click.Context, param: click.Parameter, value: bool) -> None:
        """``--test``: check the connection and api_token with a dry-run upload, then exit.

        Answers within seconds: at most :attr:`CHECK_MAX_RETRIES` retries, each request at most
        :attr:`CHECK_TIMEOUT_SECONDS`.
        """
        if not value:
            return
        config, parse_env = cli_config(ctx)
        with user_errors_end_the_run(cls.logger):
            target = cls(config=config, parse_env_config=parse_env, validate_config=True)
            streams = target.check_connection()
        target.logger.info(
            "Connection check passed: Lytics accepted a dry-run upload to %s", ", ".join(streams)
        )
        ctx.exit()

    @classmethod
    def cb_schema(cls, ctx: click.Context, param: click.Parameter, value: bool) -> None:
        """``--schema-plan`` / ``--schema-publish``: show or publish the user schema, then exit."""
        if not value:
            return
        config, parse_env = cli_config(ctx)
        with user_errors_end_the_run(cls.logger):
            target = cls(config=config, parse_env_config=parse_env, validate_config=True)
            run_schema_command(target, DEFAULT_STREAMS, publish=param.name == "schema_publish")
        ctx.exit()

    @override
    @classmethod
    def invoke(cls, **options: t.Any) -> None:
        """singer-sdk's run, with :func:`~target_lytics.errors.user_errors_end_the_run`."""
        with user_errors_end_the_run(cls.logger):
            super().invoke(**options)

    @override
    @classmethod
    def get_singer_command(cls) -> click.Command:
        """The SDK's target command plus ``--test`` (a dry-run upload, nothing stored)."""
        command = super().get_singer_command()
        command.params.append(
            click.Option(
                ["--test"],
                is_flag=True,
                default=False,
                expose_value=False,
                callback=cls.cb_test,
                help=(
                    "Check the connection and api_token: POST a sample event with dryrun=true "
                    "(Lytics stores nothing), then exit."
                ),
            )
        )
        command.params.extend(
            click.Option(
                [flag],
                is_flag=True,
                default=False,
                expose_value=False,
                callback=cls.cb_schema,
                help=text,
            )
            for flag, text in (
                (
                    "--schema-plan",
                    "Compare the Lytics user fields and mappings with the streams setting: print "
                    "what --schema-publish would create, what exists and what conflicts. Writes "
                    "nothing.",
                ),
                (
                    "--schema-publish",
                    "Create the missing user fields and mappings in Lytics and publish them "
                    "(idempotent; a conflict writes nothing), then exit.",
                ),
            )
        )
        return command


if __name__ == "__main__":
    TargetLytics.cli()
