"""RetryPolicy: one retry mechanism (``backoff``) for every call the tap repeats.

Exponential backoff with full jitter, configured from ``max_retries``,
``retry_initial_delay_seconds`` and ``retry_max_delay_seconds`` (the target's names and
meaning): a server's ``Retry-After`` (RFC 9110 section 10.2.3: seconds or an HTTP date) makes the
wait at least that long, capped at ``max_retry_after_seconds``.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import backoff

from tap_cordial_activity.settings import integer, number

__all__ = ["RetryPolicy", "Transient", "parse_retry_after", "spaced_out"]

T = TypeVar("T")


class Transient(Exception):  # noqa: N818 (a signal to the policy, not an error shown to users)
    """A failed attempt worth repeating; ``retry_after`` is the server's wait in seconds."""

    def __init__(self, problem: str, *, retry_after: float | None = None) -> None:
        """Keep what failed and how long the server asked to wait."""
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after
        #: How many attempts were made in all, set when the policy gives up.
        self.attempts = 0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to repeat a failed call."""

    max_retries: int
    initial_delay_seconds: float
    max_delay_seconds: float
    #: Retry-After values above this are capped, so a bad header cannot stall the run for hours.
    max_retry_after_seconds: float = 300.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RetryPolicy:
        """The policy the three retry settings describe (defaults from the settings schema)."""
        return cls(
            max_retries=integer(config, "max_retries"),
            initial_delay_seconds=number(config, "retry_initial_delay_seconds"),
            max_delay_seconds=number(config, "retry_max_delay_seconds"),
        )

    def waits(self) -> Generator[float, Any, None]:
        """``backoff`` wait generator: full-jitter delays, longer when ``Retry-After`` asks.

        ``backoff`` sends each failure in; a :class:`Transient` with ``retry_after`` is waited
        for at least as long as the server asked (capped, so a bad header cannot stall the run).
        """
        ceilings = backoff.expo(base=2, factor=self.initial_delay_seconds,
                                max_value=self.max_delay_seconds)
        next(ceilings)  # expo's priming step, as backoff does with every wait generator
        failure = yield 0.0
        while True:
            delay = backoff.full_jitter(min(next(ceilings), self.max_delay_seconds))
            if isinstance(failure, Transient) and failure.retry_after is not None:
                delay = max(delay, min(failure.retry_after, self.max_retry_after_seconds))
            failure = yield delay

    def call(
        self,
        attempt: Callable[[], T],
        *,
        on_retry: Callable[[Transient, int, float], None] | None = None,
    ) -> T:
        """Call ``attempt`` until it returns or raises anything but :class:`Transient`.

        After ``max_retries`` repeats the last :class:`Transient` is raised with ``attempts``
        set. ``on_retry(failure, retry_number, delay)`` runs before each wait.
        """

        def backing_off(details: Any) -> None:
            if on_retry is not None:
                failure = details["exception"]
                on_retry(failure, details["tries"], details["wait"])

        def giving_up(details: Any) -> None:
            details["exception"].attempts = details["tries"]

        retrying = backoff.on_exception(
            self.waits, Transient, max_tries=self.max_retries + 1, jitter=None,
            on_backoff=backing_off, on_giveup=giving_up, raise_on_giveup=True, logger=None,
        )(attempt)
        return retrying()


def spaced_out(
    call: Callable[[], T],
    *,
    tries: int,
    first_delay_seconds: float,
    retry_on: type[Exception],
    give_up: Callable[[BaseException], bool],
) -> T:
    """Call ``call`` up to ``tries`` times while it raises ``retry_on`` (unless ``give_up``).

    The waits double from ``first_delay_seconds``, without jitter: a single client waiting for
    its own connection to come back (SFTP reconnects), not many clients competing for a server.
    """
    repeating = backoff.on_exception(
        backoff.expo, retry_on, max_tries=tries, jitter=None, giveup=give_up,
        raise_on_giveup=True, logger=None, factor=first_delay_seconds,
    )(call)
    return repeating()
