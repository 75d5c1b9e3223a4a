"""TargetLytics: the Singer target, its STATE checkpoints and the ``--test`` connection check."""

from __future__ import annotations

import copy
import dataclasses
import time
import typing as t

import click
from typing_extensions import override

from target_lytics.batch_files import root_folders
from target_lytics.checkpoints import StateCheckpoints
from target_lytics.client import LyticsClient
from target_lytics.errors import InputError, LyticsError, user_errors_end_the_run
from target_lytics.fastpath import FastRecordPath
from target_lytics.mapping import StreamMapping
from target_lytics.progress import UploadProgress
from target_lytics.reader import SingerLineReader
from target_lytics.rejects import RejectBudget
from target_lytics.retries import RetryPolicy
from target_lytics.schema_publish import run_schema_command
from target_lytics.sdk_private import HookedTarget, cli_config
from target_lytics.settings import (
    CONFIG_SCHEMA,
    DEFAULT_STREAMS,
    connection_problems,
    input_settings_problems,
    merged_streams,
    parse_number_settings,
    schema_problem,
    setting,
)
from target_lytics.sinks import LyticsSink, SinkContext


class TargetLytics(HookedTarget):
    """Singer target that uploads records into Lytics streams."""

    name = "target-lytics"
    default_sink_class = LyticsSink
    # Bytes in large chunks, records of qualifying streams in runs (see target_lytics.reader).
    message_reader_class = SingerLineReader
    # A copy: singer-sdk adds its built-in settings to this dict.
    config_jsonschema = copy.deepcopy(CONFIG_SCHEMA)

    #: Use the record fast path (see :mod:`target_lytics.fastpath`) when a stream qualifies.
    fast_path_enabled: t.ClassVar[bool] = True

    #: A changed STATE sends a stream's partial body when that stream has no upload in flight,
    #: or when its last partial body went out at least this long ago: a tap that writes STATE
    #: after every record does not turn each record into a request.
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
        self.max_concurrent_uploads = int(setting(self.config, "max_concurrent_uploads"))
        self.streams_config = merged_streams(setting(self.config, "streams"))
        #: Real paths of the folders BATCH files may be read from (see target_lytics.batch_files).
        self.batch_file_roots = root_folders(setting(self.config, "batch_file_roots") or [])
        # Created up front: upload threads of several sinks share it.
        self.client = self._new_client()
        self.fast_path = FastRecordPath(self)
        if self.fast_path_enabled and isinstance(self.message_reader, SingerLineReader):
            self.message_reader.record_runs = self.fast_path
        self.checkpoints = StateCheckpoints(
            self.write_state, float(setting(self.config, "min_state_interval_seconds"))
        )
        #: The tap sent a SCHEMA or a STATE (a quiet day), not just nothing.
        self.tap_spoke = False
        self.progress = UploadProgress(
            self.logger, float(setting(self.config, "progress_interval_seconds"))
        )
        #: What each sink gets from the target (the sink module never names this class).
        self.sink_context = SinkContext(
            client=self.client,
            checkpoints=self.checkpoints,
            progress=self.progress,
            max_request_bytes=self.max_request_bytes,
            max_concurrent_uploads=self.max_concurrent_uploads,
            batch_file_roots=self.batch_file_roots,
            stream_mapping=self.stream_mapping,
            upload_failed=self.upload_failed,
            reject_budget=RejectBudget(int(setting(self.config, "max_rejected_records"))),
        )

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
            pool_size=max(32, 4 * int(setting(config, "max_concurrent_uploads"))),
            retry=RetryPolicy.from_settings(config, setting),
        )

    # Settings -----------------------------------------------------------------------------------

    @override
    def clean_settings(self, config: dict[str, t.Any]) -> list[str]:
        """Numbers given as text become numbers (else a problem), before the schema check."""
        return parse_number_settings(config, self.config_jsonschema)

    @override
    def settings_problems(self, config: dict[str, t.Any]) -> list[str]:
        """What the schema cannot see, after it.

        The token is stripped; a token or URL that could leak is refused
        (:func:`~target_lytics.settings.connection_problems`), then
        :func:`~target_lytics.settings.input_settings_problems`.
        """
        return connection_problems(config) + input_settings_problems(config)

    @override
    def schema_problem(self, error: t.Any) -> str:
        """A JSON-schema error as one line naming the setting, without echoing a secret."""
        return schema_problem(error)

    # Records and STATE --------------------------------------------------------------------------

    @override
    def check_message(self, message: dict) -> None:
        """Refuse a SCHEMA, ACTIVATE_VERSION or BATCH message singer-sdk would take badly.

        What the Singer specification asks of each (and singer-sdk reads): a stream name; for
        SCHEMA a schema object and key_properties as a list of field names; for ACTIVATE_VERSION
        an integer version of a stream whose SCHEMA came first; for BATCH an encoding object
        with a format and a manifest list of URLs, for such a stream.

        Raises:
            InputError: What is wrong and what is expected (the reader adds the line number).
        """
        kind = message.get("type")
        stream = message.get("stream")
        if not isinstance(stream, str):
            raise InputError(f"a {kind} message needs `stream`, a stream name")
        if kind == "SCHEMA":
            if not isinstance(message.get("schema"), dict):
                raise InputError("`schema` must be a JSON Schema object")
            keys = message.get("key_properties")
            if keys is not None and (
                not isinstance(keys, list) or not all(isinstance(key, str) for key in keys)
            ):
                raise InputError(
                    f"`key_properties` must be a list of field names, not {json_text(keys)}"
                )
            return
        if stream not in self.mapper.stream_maps:
            raise InputError(f"stream {stream!r} has no SCHEMA message before this line")
        if kind == "ACTIVATE_VERSION":
            version = message.get("version")
            if not isinstance(version, int) or isinstance(version, bool):
                raise InputError(f"`version` must be an integer, not {json_text(version)}")
            return
        encoding = message.get("encoding")
        if not isinstance(encoding, dict) or not isinstance(encoding.get("format"), str):
            raise InputError(
                "`encoding` must be an object with `format` (jsonl) and `compression` "
                f"(gzip or none), not {json_text(encoding)}"
            )
        manifest = message.get("manifest")
        if not isinstance(manifest, list) or not all(isinstance(url, str) for url in manifest):
            raise InputError(f"`manifest` must be a list of file URLs, not {json_text(manifest)}")

    @override
    def stream_schema_registered(self, stream_name: str) -> None:
        """Decide whether the stream may take the record fast path."""
        self.tap_spoke = True
        if self.fast_path_enabled:
            self.fast_path.stream_registered(stream_name)

    @override
    def state_changed(self, state: dict) -> None:
        """Checkpoint the tap's STATE once every record before it is accepted by Lytics.

        singer-sdk writes STATE only when the input ends (or records are 5 minutes old), so a run
        killed midway would leave no checkpoint and the next run would resend all it delivered.
        Nothing waits here: the STATE is written by whichever upload completes its records
        (:mod:`~target_lytics.checkpoints`), while later bodies keep flowing.
        """
        self.tap_spoke = True
        now = time.monotonic()
        for sink in self.lytics_sinks():
            if not sink.uploads_in_flight or now - sink.flushed_at >= self.STATE_CHECKPOINT_SECONDS:
                sink.send_body()  # raises an earlier upload's failure
            else:
                sink.uploads.raise_error()
        self.checkpoints.add(copy.deepcopy(state))

    @override
    def state_drained(self, state: dict) -> None:
        """singer-sdk's drain sent every partial body: write ``state`` once Lytics accepted them."""
        self.checkpoints.add(state)

    def lytics_sinks(self) -> list[LyticsSink]:
        """The sinks now receiving records."""
        return [sink for sink in self.active_sinks() if isinstance(sink, LyticsSink)]

    def upload_failed(self) -> None:
        """An upload failed for good and the run ends: stop retries, log the counts reached."""
        self.client.cancel()
        self.progress.summary(failed=True, dry_run=bool(setting(self.config, "dry_run")))

    @override
    def process_endofpipe(self) -> None:
        """Wait for every upload; with nothing uploaded, check the endpoint; then the last STATE.

        The endpoint check needs a SCHEMA or STATE from the tap: a tap that failed before saying
        anything (a wrong setting) ends the run anyway, and Lytics need not be asked then.

        Then the summary and the reconciliation counts (after a failed upload they are logged
        when the failure surfaces, see :meth:`upload_failed`).
        """
        for sink in self.lytics_sinks():
            sink.wait_for_uploads()
        if self.tap_spoke and self.progress.total().requests == 0:
            self.check_endpoint()
        super().process_endofpipe()
        self.checkpoints.flush()
        self.progress.summary(failed=False, dry_run=bool(setting(self.config, "dry_run")))

    def check_endpoint(self) -> None:
        """A run that uploaded nothing still checks api_url and api_token (empty dry run).

        Raises:
            LyticsError: Lytics refused the request or could not be reached.
        """
        sinks = self.lytics_sinks()
        if sinks:
            stream = sinks[0].stream_mapping.lytics_stream
        else:
            stream = self.stream_mapping(sorted(self.streams_config)[0]).lytics_stream
        try:
            self.client.upload(stream, b"[]", dry_run=True, event_count=0)
        except LyticsError as exc:
            raise LyticsError(
                f"Nothing to upload, and the check of the Lytics endpoint failed: {exc}"
            ) from exc
        self.logger.info(
            "Nothing to upload; Lytics accepted an empty dry-run request to stream '%s' at %s "
            "(api_url and api_token work)",
            stream,
            self.client.host,
        )

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


def json_text(value: t.Any) -> str:
    """A message value for an error line, short (a bad message may be large)."""
    text = "absent" if value is None else repr(value)
    return text if len(text) <= 80 else text[:80] + " ..."


if __name__ == "__main__":
    TargetLytics.cli()
