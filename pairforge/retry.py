"""Retrying one operation: a bounded number of tries, a total deadline, backoff with jitter.

One loop for every caller (the storage layer, the PyPI weight download) so the policy reads
the same everywhere: at most ``attempts`` tries; no new try once the next wait would end past
``deadline_s``; between tries an exponential wait, capped, jittered to 50-100 % so that many
workers throttled at once do not come back at once.  What counts as worth retrying and what
the caller raises when it gives up are the caller's: a missing file or a programming error is
raised at once, since retrying it only hides the bug.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

#: ``give_up(last_error, tries, elapsed_s)`` -> the exception to raise when the tries run out
GiveUp = Callable[[Exception, int, float], BaseException]
#: ``on_retry(error, try_number, wait_s)``, called before each wait (to log it)
OnRetry = Callable[[Exception, int, float], None]


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Seconds to wait after failed try number ``attempt`` (1-based): ``base_s`` doubled per
    try, capped at ``max_s``, jittered to 50-100 %."""
    ceiling = min(max_s, base_s * (2 ** (attempt - 1)))
    return ceiling * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and for how long one operation is tried."""

    attempts: int
    deadline_s: float
    backoff_base_s: float
    backoff_max_s: float

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry policy: attempts must be >= 1, not {self.attempts!r}")

    def delay(self, attempt: int) -> float:
        """The wait after failed try number ``attempt`` (see :func:`backoff_delay`)."""
        return backoff_delay(attempt, self.backoff_base_s, self.backoff_max_s)


def retry_call(fn: Callable[[], T], policy: RetryPolicy, *, retryable: Callable[[Exception], bool],
               give_up: GiveUp, on_retry: OnRetry | None = None,
               sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic) -> T:
    """``fn()``, tried again after each error that ``retryable`` accepts, under ``policy``.

    An error ``retryable`` refuses propagates unchanged at once.  When the tries run out, or
    the next wait would end past the deadline, raises ``give_up(last_error, tries, elapsed)``
    chained to the last error.  ``sleep`` and ``clock`` are injectable for tests.
    """
    start = clock()
    for i in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified by the caller's `retryable`
            if not retryable(exc):
                raise
            elapsed = clock() - start
            delay = policy.delay(i)
            if i == policy.attempts or elapsed + delay >= policy.deadline_s:
                raise give_up(exc, i, elapsed) from exc
            if on_retry is not None:
                on_retry(exc, i, delay)
            sleep(delay)
    raise AssertionError("unreachable")


__all__ = ["RetryPolicy", "backoff_delay", "retry_call"]
