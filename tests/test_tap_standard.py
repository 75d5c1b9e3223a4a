"""singer-sdk's standard tap tests (`get_tap_test_class`) against the sandbox."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from singer_sdk.testing import get_tap_test_class
from tap_cordial_activity.tap import TapCordialActivity

from sandbox.cordial import CordialStandIn
from sandbox.lytics import LyticsStandIn
from sandbox.pytest_plugin import Sandbox, empty_folder

#: Filled with the sandbox's addresses before the suite's runner syncs; the placeholders only
#: let the suite build the tap (to list its streams) when this module is imported.
CONFIG: dict = {
    "api_key": "placeholder",
    "sftp_host": "127.0.0.1",
    "sftp_username": "placeholder",
    "sftp_path": "/",
    "sftp_password": "placeholder",
}


@pytest.fixture(scope="module", autouse=True)
def _sandbox_config(sftp_server) -> Iterator[None]:
    empty_folder(sftp_server.root)
    with CordialStandIn(
        sftp_root=sftp_server.root, sftp_path=sftp_server.sftp_path, sftp=sftp_server
    ) as cordial, LyticsStandIn() as lytics:
        # One bad line per export, set aside: the suite's tests of `activity_rejects` get a record.
        cordial.options.corrupt_line = 7
        CONFIG.update(
            Sandbox(sftp=sftp_server, cordial=cordial, lytics=lytics).tap_config(max_bad_records=1)
        )
        yield
    empty_folder(sftp_server.root)


TestTapCordialActivity = get_tap_test_class(TapCordialActivity, config=CONFIG)
