"""The tap's one retry mechanism: RetryPolicy (backoff, full jitter, Retry-After) and spaced_out."""

from __future__ import annotations

import pytest
from tap_cordial_activity.retries import RetryPolicy, Transient, parse_retry_after, spaced_out


def test_policy_from_config_uses_the_three_settings_and_their_defaults():
    assert RetryPolicy.from_config(
        {"max_retries": 2, "retry_initial_delay_seconds": 0.5, "retry_max_delay_seconds": 4}
    ) == RetryPolicy(max_retries=2, initial_delay_seconds=0.5, max_delay_seconds=4.0)
    default = RetryPolicy.from_config({})
    assert default.max_retries == 8  # the settings schema's default


def test_waits_are_full_jitter_under_a_doubling_cap_and_at_least_the_retry_after():
    policy = RetryPolicy(max_retries=9, initial_delay_seconds=1.0, max_delay_seconds=5.0)
    waits = policy.waits()
    waits.send(None)
    delays = [waits.send(Transient("HTTP 503")) for _ in range(200)]
    ceilings = [min(5.0, 2.0 ** n) for n in range(200)]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays[4:]) > 2.5  # past the doubling the cap (5 s) is reached, jittered below it
    assert waits.send(Transient("HTTP 429", retry_after=7.0)) == 7.0
    assert waits.send(Transient("HTTP 429", retry_after=86400.0)) == policy.max_retry_after_seconds


def test_retry_after_in_seconds_or_as_an_http_date():
    assert parse_retry_after(" 12 ") == 12.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_call_retries_retriable_failures_then_gives_up_with_the_attempt_count():
    policy = RetryPolicy(max_retries=2, initial_delay_seconds=0.0, max_delay_seconds=0.0)
    seen: list[tuple[int, float]] = []
    calls = []

    def failing() -> None:
        calls.append(1)
        raise Transient("HTTP 500")

    with pytest.raises(Transient) as caught:
        policy.call(failing, on_retry=lambda failure, retry, delay: seen.append((retry, delay)))
    assert len(calls) == 3
    assert caught.value.attempts == 3
    assert [retry for retry, _ in seen] == [1, 2]

    answers = iter([Transient("reset"), "ok"])

    def flaky() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert policy.call(flaky) == "ok"
    with pytest.raises(ValueError, match="not retried"):
        policy.call(lambda: (_ for _ in ()).throw(ValueError("not retried")))


def test_spaced_out_stops_at_once_when_told_to_give_up():
    calls = []

    def connect() -> None:
        calls.append(1)
        raise KeyError("host key") if len(calls) == 2 else LookupError("dropped")

    with pytest.raises(KeyError):
        spaced_out(connect, tries=5, first_delay_seconds=0.0, retry_on=LookupError,
                   give_up=lambda exc: isinstance(exc, KeyError))
    assert len(calls) == 2
