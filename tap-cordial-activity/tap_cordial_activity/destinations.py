"""The export destinations: ``export_destination`` name -> its reader and its request body.

Adding a destination (GCS, Azure Blob) is one entry here plus a reader satisfying
:class:`~tap_cordial_activity.export_store.ExportStore`; its settings go in ``settings.py``.
The bodies follow ``DestinationObject`` of Cordial's published definitions
(``POST /v2/contactactivityexport``, ``destination``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tap_cordial_activity.export_store import ExportStore
from tap_cordial_activity.s3 import S3Store
from tap_cordial_activity.settings import integer, setting
from tap_cordial_activity.sftp_store import SftpStore


def sftp_destination(config: Mapping[str, Any]) -> dict[str, Any]:
    """``type`` sftp, ``server``, ``port``, ``username``, ``path``, and the password or savedKey."""
    destination: dict[str, Any] = {
        "type": "sftp",
        "server": config["sftp_host"],
        "port": integer(config, "sftp_port"),
        "username": config["sftp_username"],
        "path": config["sftp_path"],
    }
    # Clarification: a saved key wins over the password when both are set.
    if config.get("cordial_saved_key"):
        destination["savedKey"] = config["cordial_saved_key"]
    else:
        destination["password"] = config["sftp_password"]
    return destination


def s3_destination(config: Mapping[str, Any]) -> dict[str, Any]:
    """``type`` s3, ``aws_bucket``, ``aws_region``, ``path``; Cordial's keys only when set.

    ``DestinationObject``: the keys are "Required if destination is S3 and IAM role is not
    configured", so without ``cordial_s3_*`` Cordial writes with the role set up on its side.
    """
    destination: dict[str, Any] = {
        "type": "s3",
        "aws_bucket": config["s3_bucket"],
        "aws_region": config["s3_region"],
        "path": config["s3_prefix"],
    }
    if config.get("cordial_s3_access_key_id"):
        destination["aws_access_key_id"] = config["cordial_s3_access_key_id"]
        destination["aws_secret_access_key"] = config["cordial_s3_secret_access_key"]
    return destination


@dataclass(frozen=True)
class Destination:
    """How the tap reads one kind of destination, and how it asks Cordial to write there."""

    store: Callable[[Mapping[str, Any], logging.Logger], ExportStore]
    body: Callable[[Mapping[str, Any]], dict[str, Any]]


#: ``export_destination`` values (the setting's allowed values are these keys).
DESTINATIONS: dict[str, Destination] = {
    "sftp": Destination(SftpStore.from_config, sftp_destination),
    "s3": Destination(S3Store.from_config, s3_destination),
}


def destination_of(config: Mapping[str, Any]) -> Destination:
    """The destination ``export_destination`` names."""
    return DESTINATIONS[str(setting(config, "export_destination"))]


def export_store(config: Mapping[str, Any], logger: logging.Logger) -> ExportStore:
    """The export folder's reader the settings describe (it connects on first use)."""
    return destination_of(config).store(config, logger)
