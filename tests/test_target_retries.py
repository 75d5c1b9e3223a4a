"""The target's one retry mechanism (target_lytics.retries): backoff, Retry-After, give up."""

from __future__ import annotations

import pytest
from target_lytics.retries import RetryPolicy, Transient
from target_lytics.settings import setting


def test_policy_from_the_tap_named_settings():
    config = {"max_retries": 4, "retry_initial_delay_seconds": 0.5, "retry_max_delay_seconds": 2}
    assert RetryPolicy.from_settings(config, setting) == RetryPolicy(4, 0.5, 2.0)
    defaults = RetryPolicy.from_settings({"max_retries": None}, setting)
    assert defaults.max_retries == setting({}, "max_retries")


def test_retry_after_is_honoured_and_capped_then_the_run_gives_up():
    policy = RetryPolicy(max_retries=2, initial_delay_seconds=0.0, max_delay_seconds=0.0)
    slept: list[float] = []
    retries: list[int] = []
    attempts: list[int] = []

    def attempt(number: int) -> str:
        attempts.append(number)
        raise Transient("HTTP 429", retry_after=7.0 if number == 1 else 10_000.0)

    with pytest.raises(RuntimeError, match="gave up after 3") as info:
        policy.call(
            attempt,
            on_retry=lambda error, retry, delay: retries.append(retry),
            give_up=lambda error, tries: RuntimeError(f"gave up after {tries}: {error.problem}"),
            sleep=slept.append,
        )
    assert attempts == [1, 2, 3]
    assert retries == [1, 2]
    assert slept == [7.0, policy.max_retry_after_seconds]
    assert info.value.__cause__ is None


def test_a_success_after_a_transient_failure_and_other_errors_pass():
    policy = RetryPolicy(max_retries=3, initial_delay_seconds=0.0, max_delay_seconds=0.0)
    cause = OSError("reset")

    def flaky(number: int) -> int:
        if number == 1:
            raise Transient("connection error", cause=cause)
        return number

    kept = {
        "on_retry": lambda *_: None,
        "give_up": lambda *_: RuntimeError(),
        "sleep": lambda _: None,
    }
    assert policy.call(flaky, **kept) == 2

    def fatal(number: int) -> int:
        raise ValueError("HTTP 401")

    with pytest.raises(ValueError, match="401"):
        policy.call(fatal, **kept)
