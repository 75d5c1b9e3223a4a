"""TapCordialActivity: the plugin class, its clients, discovery and the connection test."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
from singer_sdk.contrib.msgspec import MsgSpecWriter
from singer_sdk.tap_base import CliTestOptionValue
from typing_extensions import override

from tap_cordial_activity.client import CordialClient, RetryPolicy
from tap_cordial_activity.errors import user_errors_end_the_run
from tap_cordial_activity.sdk_private import SettingsCheckingTap, cli_config
from tap_cordial_activity.settings import CONFIG_SCHEMA, config_problems, schema_error, setting
from tap_cordial_activity.sftp import SftpReader, SftpSettings
from tap_cordial_activity.streams import ActivityStream

__all__ = ["TapCordialActivity", "config_problems"]


class TapCordialActivity(SettingsCheckingTap):
    """Cordial contact activity through the Contact Activity Export API and SFTP."""

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
    def settings_problems(self, config: dict[str, Any]) -> list[str]:
        """Every problem with the settings beyond their JSON types."""
        return config_problems(config)

    @override
    def discover_streams(self) -> list[ActivityStream]:
        """The one stream, ``activity``."""
        return [ActivityStream(tap=self)]

    def cordial_client(self) -> CordialClient:
        """A Cordial client built from the settings."""
        config = self.config
        return CordialClient(
            setting(config, "api_url"),
            config["api_key"],
            retry=RetryPolicy(
                max_retries=int(setting(config, "max_retries")),
                initial_delay_seconds=float(setting(config, "retry_initial_delay_seconds")),
                max_delay_seconds=float(setting(config, "retry_max_delay_seconds")),
            ),
            timeout_seconds=float(setting(config, "request_timeout_seconds")),
            logger=self.logger,
        )

    def sftp_reader(self) -> SftpReader:
        """An SFTP reader built from the settings (it connects on first use)."""
        config = self.config
        known_hosts = config.get("sftp_known_hosts_path")
        return SftpReader(
            SftpSettings(
                host=config["sftp_host"],
                port=int(setting(config, "sftp_port")),
                username=config["sftp_username"],
                password=config.get("sftp_password") or None,
                private_key=config.get("sftp_private_key") or None,
                private_key_passphrase=config.get("sftp_private_key_passphrase") or None,
                host_key=config.get("sftp_host_key") or None,
                known_hosts_path=Path(known_hosts).expanduser() if known_hosts else None,
                timeout_seconds=float(setting(config, "request_timeout_seconds")),
                max_concurrent_prefetch_requests=int(
                    setting(config, "max_concurrent_prefetch_requests")
                ),
            ),
            logger=self.logger,
        )

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
        tap = cls(config=config, parse_env_config=parse_env, validate_config=True)
        with user_errors_end_the_run(cls.logger):
            tap.check_connection()
        ctx.exit()

    @override
    @classmethod
    def invoke(cls, **options: Any) -> None:
        """singer-sdk's sync, with :func:`user_errors_end_the_run`."""
        with user_errors_end_the_run(cls.logger):
            super().invoke(**options)

    def check_connection(self) -> bool:
        """Cordial ``/health``, then SFTP login (host key verified) and a listing of ``sftp_path``.

        Never creates an export job. Raises with a clear message on the first failure.
        """
        client = self.cordial_client()
        try:
            client.health()
        finally:
            client.close()
        self.logger.info("Cordial API %s: /health OK", client.api_url)
        with self.sftp_reader() as sftp:
            files = sftp.list_files(self.config["sftp_path"])
        self.logger.info(
            "SFTP %s@%s: login OK, host key verified, %d file(s) in %s",
            self.config["sftp_username"], sftp.address, len(files), self.config["sftp_path"],
        )
        return True


logging.getLogger("paramiko").setLevel(logging.WARNING)

if __name__ == "__main__":
    TapCordialActivity.cli()
