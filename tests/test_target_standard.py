"""singer-sdk's standard target tests, run against the sandbox's Lytics stand-in."""

from __future__ import annotations

import pytest
from singer_sdk.testing import get_target_test_class
from singer_sdk.testing.runners import TargetTestRunner
from target_lytics.target import TargetLytics

from sandbox.lytics import LyticsStandIn

# The factory needs a config up front; the real one (the stand-in's URL) comes from the `runner`
# fixture below, built per test with a fresh stand-in.
_StandardTests = get_target_test_class(TargetLytics, config={"api_token": "unused"})


class TestTargetLyticsStandard(_StandardTests):  # type: ignore[misc,valid-type]
    """Every test of singer-sdk's target suite, uploading to a fresh Lytics stand-in."""

    @pytest.fixture
    def runner(self, lytics: LyticsStandIn) -> TargetTestRunner:
        """A runner whose target uploads to the stand-in."""
        return TargetTestRunner(
            target_class=TargetLytics,
            config={"api_token": lytics.token, "api_url": lytics.url, "max_retries": 0},
        )
