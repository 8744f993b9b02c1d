"""Unit tests for ``RetryPolicy``: delays, caps, deterministic jitter, what is retried, validation.

Also runs the module's doctest, so the example in ``RetryPolicy``'s docstring stays true.
"""

from __future__ import annotations

import doctest
import math

import pytest

import stream_processors.core.policy
from stream_processors.core.model import DEFAULT_RETRY
from stream_processors.core.policy import ALL, NO_RETRY, TIMEOUT, TRANSIENT, RetryPolicy

SEEDS = [f"orders/o-{n}/payment/1" for n in range(400)]


def test_the_module_doctest_passes() -> None:
    result = doctest.testmod(stream_processors.core.policy, verbose=False)
    assert result.attempted >= 4
    assert result.failed == 0


# --- delays ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "backoff_rate", "expected"),
    [
        (1.0, 2.0, [1_000, 2_000, 4_000, 8_000, 16_000]),
        (0.5, 3.0, [500, 1_500, 4_500, 13_500, 40_500]),
        (2.0, 1.0, [2_000, 2_000, 2_000, 2_000, 2_000]),  # constant
        (0.25, 1.5, [250, 375, 562, 844, 1_266]),  # rounded to the millisecond
        (0.0, 2.0, [0, 0, 0, 0, 0]),  # retry at once
    ],
)
def test_delay_is_interval_times_backoff_to_the_failed_attempt_minus_one(
    interval: float, backoff_rate: float, expected: list[int]
) -> None:
    policy = RetryPolicy(max_attempts=6, interval=interval, backoff_rate=backoff_rate)
    delays = [policy.delay_ms(failed, seed="s") for failed in range(1, 6)]
    assert delays == expected
    assert delays == [
        round(interval * backoff_rate ** (failed - 1) * 1000) for failed in range(1, 6)
    ]
    assert all(isinstance(delay, int) for delay in delays)


def test_default_policy_retries_twice_one_then_two_seconds_apart() -> None:
    assert RetryPolicy() == DEFAULT_RETRY
    assert DEFAULT_RETRY.max_attempts == 3
    assert [DEFAULT_RETRY.delay_ms(n, "s") for n in (1, 2)] == [1_000, 2_000]
    assert DEFAULT_RETRY.retry_on == (TRANSIENT, TIMEOUT)
    assert DEFAULT_RETRY.jitter == 0


def test_max_interval_caps_every_delay() -> None:
    policy = RetryPolicy(max_attempts=10, interval=1.0, backoff_rate=2.0, max_interval=5.0)
    delays = [policy.delay_ms(n, "s") for n in range(1, 8)]
    assert delays == [1_000, 2_000, 4_000, 5_000, 5_000, 5_000, 5_000]


def test_max_interval_below_the_first_interval_caps_it_too() -> None:
    policy = RetryPolicy(interval=10.0, max_interval=3.0)
    assert policy.delay_ms(1, "s") == 3_000


def test_max_interval_zero_retries_at_once() -> None:
    policy = RetryPolicy(interval=10.0, max_interval=0.0)
    assert policy.delay_ms(2, "s") == 0


def test_a_long_capped_policy_never_overflows() -> None:
    # "Keep trying for a day, at most a minute apart": the uncapped delay overflows a float long
    # before the last attempt, and must still come out as the cap.
    policy = RetryPolicy(max_attempts=5_000, interval=1.0, backoff_rate=2.0, max_interval=60.0)
    delays = [policy.delay_ms(n, "s") for n in (1, 7, 1_100, 4_999)]
    assert delays == [1_000, 60_000, 60_000, 60_000]
    jittery = RetryPolicy(
        max_attempts=5_000, interval=1.0, backoff_rate=1.5, max_interval=60.0, jitter=0.5
    )
    assert 30_000 <= jittery.delay_ms(4_000, "s") <= 60_000
    instant = RetryPolicy(max_attempts=5_000, interval=0.0, backoff_rate=2.0, max_interval=60.0)
    assert instant.delay_ms(4_000, "s") == 0


# --- jitter ------------------------------------------------------------------------------------


@pytest.mark.parametrize("jitter", [0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("failed", [1, 2, 3])
def test_jitter_stays_within_its_fraction_of_the_delay(jitter: float, failed: int) -> None:
    policy = RetryPolicy(max_attempts=5, interval=2.0, backoff_rate=2.0, jitter=jitter)
    full = 2_000 * 2 ** (failed - 1)
    low = math.floor(full * (1 - jitter))
    delays = [policy.delay_ms(failed, seed) for seed in SEEDS]
    assert all(low <= delay <= full for delay in delays), (min(delays), max(delays))
    # Spread over the whole band, not bunched at one end: that is the point of jitter.
    band = full - low
    assert min(delays) < low + band * 0.1
    assert max(delays) > full - band * 0.1
    assert len(set(delays)) > min(band, len(SEEDS)) // 2


def test_jitter_applies_to_the_capped_delay() -> None:
    policy = RetryPolicy(
        max_attempts=20, interval=1.0, backoff_rate=2.0, max_interval=8.0, jitter=0.5
    )
    delays = [policy.delay_ms(10, seed) for seed in SEEDS]
    assert all(4_000 <= delay <= 8_000 for delay in delays)
    assert max(delays) > 7_500


def test_jitter_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    policy = RetryPolicy(interval=10.0, jitter=0.5)
    first = [policy.delay_ms(1, seed) for seed in SEEDS]
    again = [policy.delay_ms(1, seed) for seed in SEEDS]
    assert first == again
    # An equal policy built elsewhere (another process replaying the journal) agrees.
    assert first == [RetryPolicy(interval=10.0, jitter=0.5).delay_ms(1, s) for s in SEEDS]
    assert policy.delay_ms(1, "a/o-1/payment/1") != policy.delay_ms(1, "a/o-1/payment/2")
    assert len(set(first)) > len(SEEDS) * 0.9


def test_the_jitter_share_of_a_seed_is_the_same_for_every_attempt() -> None:
    policy = RetryPolicy(max_attempts=5, interval=1.0, backoff_rate=2.0, jitter=0.5)
    for seed in SEEDS[:20]:
        shares = [1 - policy.delay_ms(n, seed) / (1_000 * 2 ** (n - 1)) for n in (1, 2, 3, 4)]
        assert max(shares) - min(shares) < 0.002  # only rounding differs


def test_no_jitter_ignores_the_seed() -> None:
    policy = RetryPolicy(interval=1.5)
    assert {policy.delay_ms(1, seed) for seed in SEEDS} == {1_500}


# --- what is retried ---------------------------------------------------------------------------


def test_retries_stop_at_max_attempts_whatever_the_error() -> None:
    policy = RetryPolicy(max_attempts=3, retry_on=(ALL,))
    assert [policy.retries(["Anything"], failed) for failed in (1, 2, 3, 4)] == [
        True,
        True,
        False,
        False,
    ]


def test_a_single_attempt_policy_never_retries() -> None:
    assert NO_RETRY.max_attempts == 1
    assert not NO_RETRY.retries([TRANSIENT], 1)
    assert not NO_RETRY.retries([TIMEOUT], 1)
    assert not RetryPolicy(max_attempts=1, retry_on=(ALL,)).retries(["X"], 1)


def test_default_retries_transient_errors_and_timeouts_only() -> None:
    policy = RetryPolicy()
    assert policy.retries(["ConnectionError", TRANSIENT], 1)
    assert policy.retries([TIMEOUT], 2)
    assert not policy.retries(["ConnectionError"], 1)  # a name alone is not the family
    assert not policy.retries(["PaymentFailed"], 1)  # a business answer is final
    assert not policy.retries([], 1)


def test_retry_on_specific_names() -> None:
    policy = RetryPolicy(max_attempts=5, retry_on=("PaymentFailed", "ConnectionError"))
    assert policy.retries(["PaymentFailed"], 1)
    assert policy.retries(["ConnectionError", TRANSIENT], 4)
    assert not policy.retries(["ConnectionError", TRANSIENT], 5)
    assert not policy.retries(["TimeoutError", TRANSIENT], 1)  # not the family: only the names
    assert not policy.retries([TIMEOUT], 1)
    assert not policy.retries(["Payment"], 1)  # names match whole, not by prefix
    assert not policy.retries(["ShippingFailed"], 1)


def test_retry_on_all_matches_every_error() -> None:
    policy = RetryPolicy(max_attempts=2, retry_on=(ALL,))
    for errors in (["PaymentFailed"], [TIMEOUT], ["ConnectionError", TRANSIENT], ["?"]):
        assert policy.retries(errors, 1)
    assert not policy.retries(["PaymentFailed"], 2)


def test_retry_on_timeouts_only() -> None:
    policy = RetryPolicy(retry_on=(TIMEOUT,))
    assert policy.retries([TIMEOUT], 1)
    assert not policy.retries(["ConnectionError", TRANSIENT], 1)


def test_error_family_names_do_not_collide_with_class_names() -> None:
    assert len({TRANSIENT, TIMEOUT, ALL}) == 3
    assert TRANSIENT not in ("Transient", "TransientError", "TimeoutError")
    assert TIMEOUT not in ("Timeout", "TimeoutError")


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be at least 1, got 0"),
        ({"max_attempts": -3}, "max_attempts must be at least 1"),
        ({"interval": -0.5}, "interval must be >= 0"),
        ({"backoff_rate": 0.5}, "backoff_rate >= 1"),
        ({"backoff_rate": 0.0}, "backoff_rate >= 1"),
        ({"jitter": 1.5}, "jitter is a fraction from 0 to 1, got 1.5"),
        ({"jitter": -0.1}, "jitter is a fraction from 0 to 1"),
        ({"max_interval": -1.0}, "max_interval must be >= 0"),
    ],
)
def test_invalid_policies_raise(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 1},
        {"interval": 0.0},
        {"backoff_rate": 1.0},
        {"jitter": 0.0},
        {"jitter": 1.0},
        {"max_interval": 0.0},
    ],
)
def test_boundary_policies_are_valid(kwargs: dict[str, float]) -> None:
    RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policies_are_frozen_and_comparable() -> None:
    policy = RetryPolicy(max_attempts=4)
    with pytest.raises(AttributeError):
        policy.max_attempts = 5  # type: ignore[misc]
    assert policy == RetryPolicy(max_attempts=4)
    assert hash(policy) == hash(RetryPolicy(max_attempts=4))
