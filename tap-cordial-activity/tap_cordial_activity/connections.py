"""The tap's connections, built from the settings: the Cordial client and the SFTP reader.

The stream builds its own connections here (as tap-github's streams build their authenticator),
so neither it nor ``--test`` reaches back into the Tap for them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tap_cordial_activity.client import CordialClient
from tap_cordial_activity.retries import RetryPolicy
from tap_cordial_activity.settings import integer, number, secret_values, setting
from tap_cordial_activity.sftp import SftpReader, SftpSettings

__all__ = ["cordial_client", "sftp_reader"]


def cordial_client(config: Mapping[str, Any], logger: logging.Logger) -> CordialClient:
    """A Cordial client built from the settings (nothing is sent yet)."""
    return CordialClient(
        setting(config, "api_url"),
        config["api_key"],
        retry=RetryPolicy.from_config(config),
        timeout_seconds=number(config, "request_timeout_seconds"),
        logger=logger,
        secrets=secret_values(config),
    )


def sftp_reader(config: Mapping[str, Any], logger: logging.Logger) -> SftpReader:
    """An SFTP reader built from the settings (it connects on first use)."""
    known_hosts = config.get("sftp_known_hosts_path")
    return SftpReader(
        SftpSettings(
            host=config["sftp_host"],
            port=integer(config, "sftp_port"),
            username=config["sftp_username"],
            password=config.get("sftp_password") or None,
            private_key=config.get("sftp_private_key") or None,
            private_key_passphrase=config.get("sftp_private_key_passphrase") or None,
            host_key=config.get("sftp_host_key") or None,
            known_hosts_path=Path(known_hosts).expanduser() if known_hosts else None,
            timeout_seconds=number(config, "request_timeout_seconds"),
            max_concurrent_prefetch_requests=integer(config, "max_concurrent_prefetch_requests"),
        ),
        logger=logger,
    )
