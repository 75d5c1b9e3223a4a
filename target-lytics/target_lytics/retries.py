"""One retry mechanism for the target's HTTP calls (uploads and the Schema API): ``backoff``.

:class:`RetryPolicy` comes from the settings ``max_retries``, ``retry_initial_delay_seconds`` and
``retry_max_delay_seconds`` (the tap's names and meaning): exponential waits
(``backoff.expo``) with full jitter (``backoff.full_jitter``), at least what ``Retry-After`` asks
(capped). An attempt that should be retried raises :class:`Transient`; anything else passes.
``backoff`` sleeps with ``time.sleep``, which a cancelled run could not interrupt, so the wait
is done by the wait generator with the caller's ``sleep`` (e.g. ``threading.Event.wait``) and
``backoff`` is told to wait 0.
"""

from __future__ import annotations

import email.utils
import itertools
import time
import typing as t
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass

import backoff

T = t.TypeVar("T")


class Transient(Exception):  # noqa: N818 - an outcome to retry, not an error of its own
    """An attempt failed in a way worth retrying: what happened, and what Retry-After asked."""

    def __init__(
        self, problem: str, *, retry_after: float | None = None, cause: Exception | None = None
    ) -> None:
        """``cause``: the transport error, kept as the final error's cause."""
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after
        self.cause = cause


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff from the retry settings: exponential with full jitter, honouring Retry-After."""

    max_retries: int
    initial_delay_seconds: float
    max_delay_seconds: float
    #: Retry-After values above this are capped, so a bad header cannot stall the run for hours.
    max_retry_after_seconds: float = 300.0

    @classmethod
    def from_settings(
        cls, config: Mapping[str, t.Any], setting: Callable[..., t.Any]
    ) -> RetryPolicy:
        """From ``max_retries``, ``retry_initial_delay_seconds``, ``retry_max_delay_seconds``."""
        return cls(
            max_retries=int(setting(config, "max_retries")),
            initial_delay_seconds=float(setting(config, "retry_initial_delay_seconds")),
            max_delay_seconds=float(setting(config, "retry_max_delay_seconds")),
        )

    def backoff(self, attempt: int, rng: Callable[[], float] | None = None) -> float:
        """Full-jitter exponential delay before retry number ``attempt`` (1-based)."""
        waits = backoff.expo(factor=self.initial_delay_seconds, max_value=self.max_delay_seconds)
        next(waits)  # the generator protocol: the first value comes after a priming next()
        ceiling = float(next(itertools.islice(waits, attempt - 1, None)))
        return ceiling * rng() if rng is not None else backoff.full_jitter(ceiling)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """The wait before retry ``attempt``: the backoff, or longer when Retry-After asks."""
        delay = self.backoff(attempt)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after_seconds))
        return delay

    def call(
        self,
        attempt: Callable[[int], T],
        *,
        on_retry: Callable[[Transient, int, float], None],
        give_up: Callable[[Transient, int], Exception],
        sleep: Callable[[float], object] = time.sleep,
    ) -> T:
        """``attempt(number)`` until it returns, raises something else, or retries run out.

        ``on_retry(error, retry, delay)`` before each wait; ``give_up(error, attempts)`` is the
        error raised (from the last transport error) once ``max_retries`` retries failed.
        """
        tries = 0

        def once() -> T:
            nonlocal tries
            tries += 1
            return attempt(tries)

        def waits() -> Generator[float, t.Any, None]:
            error = yield 0.0  # backoff primes the generator with send(None)
            for retry in itertools.count(1):
                delay = self.delay(retry, error.retry_after)
                on_retry(error, retry, delay)
                sleep(delay)
                error = yield 0.0

        retrying = backoff.on_exception(
            waits, Transient, max_tries=self.max_retries + 1, jitter=None, logger=None
        )(once)
        try:
            return retrying()
        except Transient as exc:
            raise give_up(exc, tries) from exc.cause


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
