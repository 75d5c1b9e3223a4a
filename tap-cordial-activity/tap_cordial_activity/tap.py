"""TapCordialActivity: the plugin class, discovery, the connection test and the run wrapper."""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import click
from singer_sdk import Stream
from singer_sdk.contrib.msgspec import MsgSpecWriter
from singer_sdk.tap_base import CliTestOptionValue
from typing_extensions import override

from tap_cordial_activity import connections
from tap_cordial_activity.destinations import export_store
from tap_cordial_activity.errors import CordialError, user_errors_end_the_run
from tap_cordial_activity.export_store import CHECK_RETRIES, CHECK_TIMEOUT_SECONDS
from tap_cordial_activity.sdk_private import SettingsCheckingTap, cli_config
from tap_cordial_activity.settings import (
    CONFIG_SCHEMA,
    config_problems,
    schema_error,
    strip_secrets,
)
from tap_cordial_activity.streams import ActivityStream, RejectsStream
from tap_cordial_activity.windows import check_state_text

__all__ = ["TapCordialActivity", "config_problems"]


class TapCordialActivity(SettingsCheckingTap):
    """Cordial contact activity through the Contact Activity Export API and SFTP or S3."""

    name = "tap-cordial-activity"
    # msgspec serializes SCHEMA/STATE (and RECORD on the SDK path) several times faster than the
    # default simplejson writer; the output is the same standard Singer JSON.
    message_writer_class = MsgSpecWriter
    config_jsonschema = CONFIG_SCHEMA

    @override
    def schema_problem(self, error: Any) -> str:
        """A JSON-schema error as one line, without echoing a secret value."""
        return schema_error(error)

    @override
    def clean_settings(self, config: dict[str, Any]) -> None:
        """Strip surrounding whitespace from the secrets (a pasted newline is no part of them)."""
        strip_secrets(config)

    @override
    def settings_problems(self, config: dict[str, Any]) -> list[str]:
        """Every problem with the settings beyond their JSON types."""
        return config_problems(config)

    @override
    def discover_streams(self) -> list[Stream]:
        """``activity``, and ``activity_rejects`` (bad records set aside, ``max_bad_records``)."""
        return [ActivityStream(tap=self), RejectsStream(tap=self)]

    @override
    @classmethod
    def cb_test(cls, ctx: click.Context, param: click.Option, value: str) -> None:
        """``--test``: :meth:`check_connection` instead of singer-sdk's one-record sync.

        singer-sdk's ``--test`` runs a sync capped at one record, which here would create an
        export job; ``--test=schema`` keeps the SDK's behaviour.
        """
        if value != CliTestOptionValue.All.value:
            super().cb_test(ctx, param, value)
            return
        config, parse_env = cli_config(ctx)
        with user_errors_end_the_run(cls.logger):
            tap = cls(config=config, parse_env_config=parse_env, validate_config=True)
            tap.check_connection()
        ctx.exit()

    @override
    @classmethod
    def invoke(cls, **options: Any) -> None:
        """singer-sdk's sync, with :func:`user_errors_end_the_run`; refuses a bad --state file."""
        with user_errors_end_the_run(cls.logger):
            state = options.get("state")
            if state is not None:
                text = state.read()
                check_state_text(text, getattr(state, "name", "--state"))
                options["state"] = io.StringIO(text)
            super().invoke(**options)

    def check_connection(self) -> bool:
        """Cordial access (:meth:`CordialClient.check_access`), then the export folder's listing.

        SFTP: the login and host key are verified and ``sftp_path`` listed; S3: ``s3_prefix`` is
        listed in ``s3_bucket`` (:meth:`ExportStore.check`).

        Never creates an export job. Short timeouts and at most :data:`CHECK_RETRIES` retry per
        host; the first failure raises, naming the host that failed.
        """
        client = connections.cordial_client(self.config, self.logger)
        client.retry = replace(
            client.retry, max_retries=min(client.retry.max_retries, CHECK_RETRIES),
            max_delay_seconds=min(client.retry.max_delay_seconds, 0.5),
        )
        client.timeout_seconds = min(client.timeout_seconds, CHECK_TIMEOUT_SECONDS)
        api_host = urlsplit(client.api_url).netloc
        try:
            checked = client.check_access()
        except CordialError as exc:
            raise CordialError(
                f"Connection check failed at the Cordial API host {api_host}: {exc}",
                status=exc.status,
            ) from exc
        finally:
            client.close()
        self.logger.info("Cordial API %s: %s OK", client.api_url, checked)
        # SFTP: login, host key and the folder's listing; S3: the listing under the prefix.
        self.logger.info("%s", export_store(self.config, self.logger).check())
        return True


# The tap reports every SFTP failure itself, in one line; paramiko's transport thread would log
# a traceback of the same failure first.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)

if __name__ == "__main__":
    TapCordialActivity.cli()
