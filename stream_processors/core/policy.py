"""Retry policies: when a failed attempt is tried again, and after how long. Pure.

The semantics follow the ``Retry`` block of Amazon States Language: ``interval`` before the
second attempt, multiplied by ``backoff_rate`` for each one after, at most ``max_attempts`` in
all; plus ``max_interval`` (a cap on any one delay) and ``jitter`` (the fraction of a delay that
is randomised, so that many instances failing together do not retry together).

Jitter must not make ``decide`` impure: its "random" share comes from a hash of the attempt's
command id, so the same decision always schedules the same delay.

Errors have names. A failure reply is named by its class (``"PaymentFailed"``); a worker's
transient exception by its class (``"ConnectionError"``) and by the family ``TRANSIENT``; a step
that got no reply in time by ``TIMEOUT``. ``retry_on`` lists the names a policy retries; ``ALL``
matches every error.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

TRANSIENT = "sagalog.Transient"
TIMEOUT = "sagalog.Timeout"
#: A task with a heartbeat interval whose worker sent no heartbeat in time.
HEARTBEAT_TIMEOUT = "sagalog.HeartbeatTimeout"
ALL = "*"


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how patiently, to try an attempt again.

    >>> policy = RetryPolicy(max_attempts=4, interval=1.0, backoff_rate=2.0)
    >>> [policy.delay_ms(failed, seed="x") for failed in (1, 2, 3)]
    [1000, 2000, 4000]
    >>> policy.retries(["ConnectionError", TRANSIENT], failed_attempt=3)
    True
    >>> policy.retries(["ConnectionError", TRANSIENT], failed_attempt=4)
    False
    >>> policy.retries(["PaymentFailed"], failed_attempt=1)  # a business answer is final
    False
    """

    max_attempts: int = 3
    interval: float = 1.0
    backoff_rate: float = 2.0
    max_interval: float | None = None
    jitter: float = 0.0
    retry_on: tuple[str, ...] = (TRANSIENT, TIMEOUT)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.interval < 0 or self.backoff_rate < 1:
            raise ValueError("interval must be >= 0 and backoff_rate >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter is a fraction from 0 to 1, got {self.jitter}")
        if self.max_interval is not None and self.max_interval < 0:
            raise ValueError("max_interval must be >= 0")

    def retries(self, error_names: Iterable[str], failed_attempt: int) -> bool:
        """Whether an attempt that failed with ``error_names`` gets another try."""
        if failed_attempt >= self.max_attempts:
            return False
        return ALL in self.retry_on or any(name in self.retry_on for name in error_names)

    def delay_ms(self, failed_attempt: int, seed: str) -> int:
        """The wait after attempt number ``failed_attempt`` (from 1) before the next one."""
        try:
            delay = self.interval * self.backoff_rate ** (failed_attempt - 1)
        except OverflowError:  # a long policy capped by max_interval: far beyond the cap
            delay = math.inf if self.interval else 0.0
        if self.max_interval is not None:
            delay = min(delay, self.max_interval)
        if self.jitter:
            digest = hashlib.blake2b(seed.encode(), digest_size=8).digest()
            share = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1), repeatable
            delay *= 1 - self.jitter * share
        return round(delay * 1000)


NO_RETRY = RetryPolicy(max_attempts=1)
