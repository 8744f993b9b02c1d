"""Conformance of ``stream_processors.declarative.errors``: ErrorEquals matching, Retrier and
Catcher parsing, and the retry policy, as the States Language and the Step Functions guide
describe them (the seed's object-form ``Retry`` included).
"""

from __future__ import annotations

import pytest

from stream_processors.declarative.errors import (
    ALL,
    PREDEFINED,
    Catcher,
    Retrier,
    catcher_for,
    matches,
    next_retry,
    parse_catchers,
    parse_retriers,
)
from stream_processors.declarative.problems import DefinitionError


def test_the_predefined_names() -> None:
    for name in (
        "States.ALL",
        "States.HeartbeatTimeout",
        "States.Timeout",
        "States.TaskFailed",
        "States.Permissions",
        "States.ResultPathMatchFailure",
        "States.ParameterPathFailure",
        "States.BranchFailed",
        "States.NoChoiceMatched",
        "States.IntrinsicFailure",
        "States.ExceedToleratedFailureThreshold",
        "States.ItemReaderFailed",
        "States.ResultWriterFailed",
        "States.Runtime",
        "States.DataLimitExceeded",
    ):
        assert name in PREDEFINED


@pytest.mark.parametrize(
    ("error_equals", "error", "expected"),
    [
        (["AuthServiceError"], "AuthServiceError", True),
        (["AuthServiceError"], "ProvisioningError", False),
        (["ErrorA", "ErrorB"], "ErrorB", True),
        (["States.ALL"], "ProvisioningError", True),
        (["States.ALL"], "States.Timeout", True),
        (["States.ALL"], "States.TaskFailed", True),
        (["States.ALL"], "States.Runtime", False),
        (["States.ALL"], "States.DataLimitExceeded", False),
        (["States.Runtime"], "States.Runtime", False),
        (["States.TaskFailed"], "AnyWorkerError", True),
        (["States.TaskFailed"], "States.HeartbeatTimeout", True),
        (["States.TaskFailed"], "States.Timeout", False),
        (["States.Timeout"], "States.Timeout", True),
        (["States.Timeout"], "States.HeartbeatTimeout", False),
        (["autherror"], "AuthError", False),  # names are case-sensitive
    ],
)
def test_matches(error_equals: list[str], error: str, expected: bool) -> None:
    assert matches(error_equals, error) is expected


def test_the_seeds_object_form_retry_takes_the_defaults_and_covers_every_error() -> None:
    (retrier,) = parse_retriers(
        "ProvisionResources", {"IntervalSeconds": 5, "MaxAttempts": 3, "BackoffRate": 2.0}
    )
    assert retrier == Retrier((ALL,), 5, 3, 2.0, None, "NONE")
    assert parse_retriers("S", [{"ErrorEquals": ["E"]}]) == (Retrier(("E",), 1, 3, 2.0),)


def test_the_seeds_retry_waits_5_10_20_seconds_then_goes_to_catch() -> None:
    retriers = parse_retriers("P", {"IntervalSeconds": 5, "MaxAttempts": 3, "BackoffRate": 2.0})
    counts = [0]
    delays = []
    while (decision := next_retry(retriers, counts, "ProvisioningError", "cmd")) is not None:
        index, delay_ms = decision
        delays.append(delay_ms)
        counts[index] += 1
    assert delays == [5000, 10000, 20000]


def test_max_attempts_zero_never_retries() -> None:
    retriers = parse_retriers("S", [{"ErrorEquals": ["E"], "MaxAttempts": 0}])
    assert next_retry(retriers, [0], "E", "seed") is None


def test_the_first_matching_retrier_decides_and_counts_its_own_retries() -> None:
    # The guide's example: ErrorA and ErrorB share one Retrier's two retries; ErrorC has its own.
    retriers = parse_retriers(
        "S",
        [
            {
                "ErrorEquals": ["ErrorA", "ErrorB"],
                "IntervalSeconds": 1,
                "BackoffRate": 2.0,
                "MaxAttempts": 2,
            },
            {"ErrorEquals": ["ErrorC"], "IntervalSeconds": 5},
            {"ErrorEquals": ["States.ALL"], "MaxAttempts": 5},
        ],
    )
    assert next_retry(retriers, [0, 0, 0], "ErrorA", "s") == (0, 1000)
    assert next_retry(retriers, [1, 0, 0], "ErrorB", "s") == (0, 2000)
    assert next_retry(retriers, [2, 0, 0], "ErrorA", "s") is None  # not handed on to States.ALL
    assert next_retry(retriers, [2, 0, 0], "ErrorC", "s") == (1, 5000)
    assert next_retry(retriers, [2, 3, 0], "ErrorC", "s") is None
    assert next_retry(retriers, [2, 3, 0], "Other", "s") == (2, 1000)
    assert next_retry(retriers, [2, 3, 0], "States.Runtime", "s") is None


def test_max_delay_caps_the_backoff() -> None:
    retriers = parse_retriers(
        "S",
        [
            {
                "ErrorEquals": ["E"],
                "IntervalSeconds": 3,
                "BackoffRate": 3.0,
                "MaxAttempts": 5,
                "MaxDelaySeconds": 20,
            }
        ],
    )
    assert [next_retry(retriers, [n], "E", "s") for n in range(6)] == [
        (0, 3000),
        (0, 9000),
        (0, 20000),
        (0, 20000),
        (0, 20000),
        None,
    ]


def test_full_jitter_is_within_the_delay_spread_and_repeats_for_a_seed() -> None:
    retriers = parse_retriers(
        "S",
        [{"ErrorEquals": ["E"], "IntervalSeconds": 10, "MaxAttempts": 3, "JitterStrategy": "FULL"}],
    )
    delays = []
    for n in range(300):
        decision = next_retry(retriers, [1], "E", f"cmd-{n}")
        assert decision is not None
        delays.append(decision[1])
    assert all(0 <= d <= 20000 for d in delays)
    assert 7000 < sum(delays) / len(delays) < 13000  # uniform over [0, 20 s]: mean near 10 s
    assert next_retry(retriers, [1], "E", "cmd-3") == (0, delays[3])


@pytest.mark.parametrize(
    ("retry", "field"),
    [
        ([{"ErrorEquals": ["States.ALL"]}, {"ErrorEquals": ["E"]}], "Retry[0].ErrorEquals"),
        ([{"ErrorEquals": ["States.ALL", "E"]}], "Retry[0].ErrorEquals"),
        ([{"ErrorEquals": []}], "Retry[0].ErrorEquals"),
        ([{"IntervalSeconds": 1}], "Retry[0].ErrorEquals"),
        ([{"ErrorEquals": ["States.Nope"]}], "Retry[0].ErrorEquals"),
        ([{"ErrorEquals": ["E"], "MaxAttempts": -1}], "Retry[0].MaxAttempts"),
        ([{"ErrorEquals": ["E"], "IntervalSeconds": 0}], "Retry[0].IntervalSeconds"),
        ([{"ErrorEquals": ["E"], "IntervalSeconds": 1.5}], "Retry[0].IntervalSeconds"),
        ([{"ErrorEquals": ["E"], "BackoffRate": 0.5}], "Retry[0].BackoffRate"),
        ([{"ErrorEquals": ["E"], "MaxDelaySeconds": 0}], "Retry[0].MaxDelaySeconds"),
        ([{"ErrorEquals": ["E"], "JitterStrategy": "HALF"}], "Retry[0].JitterStrategy"),
        ([{"ErrorEquals": ["E"], "Interval": 1}], "Retry[0].Interval"),
        ({"MaxAttempts": True}, "Retry.MaxAttempts"),
        ("often", "Retry"),
    ],
)
def test_bad_retriers_are_refused_naming_the_field(retry: object, field: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_retriers("Charge", retry)
    assert caught.value.state == "Charge"
    assert caught.value.field == field
    assert str(caught.value).startswith(f"state 'Charge', field '{field}': ")


def test_catchers_are_tried_in_order() -> None:
    catchers = parse_catchers(
        "CreateUser",
        [
            {"ErrorEquals": ["AuthServiceError"], "Next": "SendErrorNotification"},
            {"ErrorEquals": ["States.TaskFailed"], "Next": "Other", "ResultPath": "$.error"},
            {"ErrorEquals": ["States.ALL"], "Next": "Last", "ResultPath": None},
        ],
    )
    assert catchers[0] == Catcher(("AuthServiceError",), "SendErrorNotification", "$")
    assert catcher_for(catchers, "AuthServiceError") == catchers[0]
    assert catcher_for(catchers, "Boom") == catchers[1]
    assert catcher_for(catchers, "States.Timeout") == catchers[2]
    assert catchers[2].result_path is None
    assert catcher_for(catchers, "States.Runtime") is None


@pytest.mark.parametrize(
    ("catch", "field"),
    [
        ([{"ErrorEquals": ["E"]}], "Catch[0].Next"),
        (
            [{"ErrorEquals": ["States.ALL"], "Next": "A"}, {"ErrorEquals": ["E"], "Next": "B"}],
            "Catch[0].ErrorEquals",
        ),
        ([{"ErrorEquals": ["E"], "Next": "A", "ResultPath": 3}], "Catch[0].ResultPath"),
        ([{"ErrorEquals": ["E"], "Next": "A", "Output": {}}], "Catch[0].Output"),
        ({"ErrorEquals": ["E"], "Next": "A"}, "Catch"),
    ],
)
def test_bad_catchers_are_refused_naming_the_field(catch: object, field: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_catchers("CreateUser", catch)
    assert caught.value.field == field
