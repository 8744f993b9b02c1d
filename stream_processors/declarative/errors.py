"""Errors in the States Language: the predefined names, ``ErrorEquals`` matching, and retrying.

A state that fails reports an *error name* (a case-sensitive string) and a *cause*. The names
beginning with ``States.`` are reserved; ``StatesError`` carries one of them when the data flow
or a Choice state fails. ``matches`` decides whether a Retrier's or a Catcher's ``ErrorEquals``
covers an error:

- a name listed explicitly matches itself;
- ``States.ALL`` matches every error except the terminal ones;
- ``States.TaskFailed`` matches every error except ``States.Timeout`` and the terminal ones;
- the terminal errors, ``States.Runtime`` and ``States.DataLimitExceeded``, match nothing: as in
  Step Functions, they are neither retried nor caught, and fail the execution.

``parse_retriers`` and ``parse_catchers`` read a state's ``Retry`` and ``Catch`` fields.
``Retry`` may be a list of Retriers or, as the seed definition writes it, one object; a
Retrier without ``ErrorEquals`` (only the seed's object form omits it) covers ``States.ALL``.
``States.ALL`` must be alone in its ``ErrorEquals`` and in the last Retrier or Catcher.

``next_retry`` is the retry policy: each Retrier counts its own retries; the first Retrier whose
``ErrorEquals`` matches decides, and when its ``MaxAttempts`` is used up the error is not
retried (it goes on to the Catchers). ``MaxAttempts`` counts retries after the first attempt
(0: never retry). The n-th retry (n from 0) waits ``IntervalSeconds * BackoffRate**n`` seconds,
capped at ``MaxDelaySeconds``; with ``JitterStrategy: FULL`` the wait is drawn uniformly from
[0, that delay], from a hash of the caller's seed, so the same seed always gives the same delay.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from stream_processors.declarative.problems import DefinitionError

ALL = "States.ALL"
HEARTBEAT_TIMEOUT = "States.HeartbeatTimeout"
TIMEOUT = "States.Timeout"
TASK_FAILED = "States.TaskFailed"
PERMISSIONS = "States.Permissions"
RESULT_PATH_MATCH_FAILURE = "States.ResultPathMatchFailure"
PARAMETER_PATH_FAILURE = "States.ParameterPathFailure"
BRANCH_FAILED = "States.BranchFailed"
NO_CHOICE_MATCHED = "States.NoChoiceMatched"
INTRINSIC_FAILURE = "States.IntrinsicFailure"
EXCEED_TOLERATED_FAILURE_THRESHOLD = "States.ExceedToleratedFailureThreshold"
ITEM_READER_FAILED = "States.ItemReaderFailed"
RESULT_WRITER_FAILED = "States.ResultWriterFailed"
RUNTIME = "States.Runtime"
DATA_LIMIT_EXCEEDED = "States.DataLimitExceeded"

#: Every reserved name a definition may list in ``ErrorEquals``. The last two are Step
#: Functions' own (an HTTP task's socket error, a JSONata query error): definitions written for
#: it may name them, and they simply never occur here.
PREDEFINED = frozenset(
    {
        ALL,
        HEARTBEAT_TIMEOUT,
        TIMEOUT,
        TASK_FAILED,
        PERMISSIONS,
        RESULT_PATH_MATCH_FAILURE,
        PARAMETER_PATH_FAILURE,
        BRANCH_FAILED,
        NO_CHOICE_MATCHED,
        INTRINSIC_FAILURE,
        EXCEED_TOLERATED_FAILURE_THRESHOLD,
        ITEM_READER_FAILED,
        RESULT_WRITER_FAILED,
        RUNTIME,
        DATA_LIMIT_EXCEEDED,
        "States.Http.Socket",
        "States.QueryEvaluationError",
    }
)
#: Errors no Retrier or Catcher handles, even by name: they fail the execution.
TERMINAL = frozenset({RUNTIME, DATA_LIMIT_EXCEEDED})


class StatesError(Exception):
    """An error a state reports: a ``States.*`` name and a cause naming what failed."""

    def __init__(self, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


def matches(error_equals: Sequence[str], error: str) -> bool:
    """Whether a Retrier's or Catcher's ``ErrorEquals`` covers ``error`` (see the module doc)."""
    if error in TERMINAL:
        return False
    if error in error_equals or ALL in error_equals:
        return True
    return TASK_FAILED in error_equals and error != TIMEOUT


@dataclass(frozen=True)
class Retrier:
    """One Retrier of a state's ``Retry`` field, with the States Language's defaults."""

    error_equals: tuple[str, ...]
    interval_seconds: int = 1
    max_attempts: int = 3
    backoff_rate: float = 2.0
    max_delay_seconds: int | None = None
    jitter_strategy: Literal["FULL", "NONE"] = "NONE"


@dataclass(frozen=True)
class Catcher:
    """One Catcher of a state's ``Catch`` field; ``result_path`` None discards the error output."""

    error_equals: tuple[str, ...]
    next: str
    result_path: str | None = "$"


_RETRIER_FIELDS = frozenset(
    {
        "ErrorEquals",
        "IntervalSeconds",
        "MaxAttempts",
        "BackoffRate",
        "MaxDelaySeconds",
        "JitterStrategy",
        "Comment",
    }
)
_CATCHER_FIELDS = frozenset({"ErrorEquals", "Next", "ResultPath", "Comment"})


class _Reader:
    """Reads one Retrier or Catcher, raising ``DefinitionError`` that names state and field."""

    def __init__(self, state: str, field: str, value: object, known: frozenset[str]) -> None:
        self.state = state
        self.field = field
        if not isinstance(value, Mapping):
            raise self.error("", "must be an object")
        self.value: Mapping[str, object] = value
        for key in value:
            if key not in known:
                raise self.error(str(key), "is not a field of a Retrier or Catcher")

    def error(self, key: str, message: str) -> DefinitionError:
        return DefinitionError(message, state=self.state, field=f"{self.field}{key and '.' + key}")

    def integer(self, key: str, default: int | None, least: int) -> int | None:
        value = self.value.get(key, default)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise self.error(key, f"must be an integer >= {least}, not {value!r}")
        return value

    def error_equals(self, default: tuple[str, ...] | None) -> tuple[str, ...]:
        names = self.value.get("ErrorEquals", default)
        if not isinstance(names, list | tuple) or not names:
            raise self.error("ErrorEquals", "must be a non-empty list of error names")
        for name in names:
            if not isinstance(name, str) or not name:
                raise self.error("ErrorEquals", f"{name!r} is not an error name")
            if name.startswith("States.") and name not in PREDEFINED:
                raise self.error("ErrorEquals", f"{name!r} is not a predefined error name")
        if ALL in names and len(names) > 1:
            raise self.error("ErrorEquals", f"{ALL} must appear alone in ErrorEquals")
        return tuple(names)


def _retrier(state: str, field: str, value: object, object_form: bool) -> Retrier:
    reader = _Reader(state, field, value, _RETRIER_FIELDS)
    rate = reader.value.get("BackoffRate", 2.0)
    if not isinstance(rate, int | float) or isinstance(rate, bool) or rate < 1.0:
        raise reader.error("BackoffRate", f"must be a number >= 1.0, not {rate!r}")
    jitter = reader.value.get("JitterStrategy", "NONE")
    if jitter not in ("FULL", "NONE"):
        raise reader.error("JitterStrategy", f"must be FULL or NONE, not {jitter!r}")
    return Retrier(
        error_equals=reader.error_equals((ALL,) if object_form else None),
        interval_seconds=reader.integer("IntervalSeconds", 1, 1) or 1,
        max_attempts=reader.integer("MaxAttempts", 3, 0) or 0,
        backoff_rate=float(rate),
        max_delay_seconds=reader.integer("MaxDelaySeconds", None, 1),
        jitter_strategy="FULL" if jitter == "FULL" else "NONE",
    )


def _catcher(state: str, field: str, value: object) -> Catcher:
    reader = _Reader(state, field, value, _CATCHER_FIELDS)
    target = reader.value.get("Next")
    if not isinstance(target, str) or not target:
        raise reader.error("Next", "must name the state to go to")
    result_path = reader.value.get("ResultPath", "$")
    if result_path is not None and not isinstance(result_path, str):
        raise reader.error("ResultPath", "must be a path or null")
    return Catcher(reader.error_equals(None), target, result_path)


def _all_last(state: str, field: str, rules: Sequence[Retrier | Catcher]) -> None:
    for index, rule in enumerate(rules[:-1]):
        if ALL in rule.error_equals:
            raise DefinitionError(
                f"{ALL} must be in the last {'Retrier' if field == 'Retry' else 'Catcher'}",
                state=state,
                field=f"{field}[{index}].ErrorEquals",
            )


def parse_retriers(state: str, value: object) -> tuple[Retrier, ...]:
    """A state's ``Retry`` field: a list of Retriers, or one object (the seed's form)."""
    if isinstance(value, Mapping):
        return (_retrier(state, "Retry", value, object_form=True),)
    if not isinstance(value, list):
        raise DefinitionError(
            "must be a list of Retriers or one Retrier", state=state, field="Retry"
        )
    retriers = tuple(
        _retrier(state, f"Retry[{index}]", item, object_form=False)
        for index, item in enumerate(value)
    )
    _all_last(state, "Retry", retriers)
    return retriers


def parse_catchers(state: str, value: object) -> tuple[Catcher, ...]:
    """A state's ``Catch`` field: a list of Catchers, tried in order."""
    if not isinstance(value, list):
        raise DefinitionError("must be a list of Catchers", state=state, field="Catch")
    catchers = tuple(_catcher(state, f"Catch[{i}]", item) for i, item in enumerate(value))
    _all_last(state, "Catch", catchers)
    return catchers


def catcher_for(catchers: Sequence[Catcher], error: str) -> Catcher | None:
    """The first Catcher whose ``ErrorEquals`` covers ``error``, or None."""
    return next((c for c in catchers if matches(c.error_equals, error)), None)


def unit_fraction(seed: str) -> float:
    """A number in [0, 1) drawn from ``seed`` alone (SHA-256), so a replay draws the same."""
    digest = hashlib.sha256(seed.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def retry_delay_ms(retrier: Retrier, retries_so_far: int, seed: str) -> int:
    """The wait before retry number ``retries_so_far`` (0 for the first retry), in ms."""
    delay = retrier.interval_seconds * retrier.backoff_rate**retries_so_far
    if retrier.max_delay_seconds is not None:
        delay = min(delay, retrier.max_delay_seconds)
    if retrier.jitter_strategy == "FULL":
        delay *= unit_fraction(seed)
    return round(delay * 1000)


def next_retry(
    retriers: Sequence[Retrier], counts: Sequence[int], error: str, seed: str
) -> tuple[int, int] | None:
    """Which Retrier retries ``error`` and after how many ms, or None to go to the Catchers.

    ``counts[i]`` is how many retries Retrier ``i`` has made so far in this state; the caller
    adds one to the returned index's count when it schedules the retry. ``seed`` (the command id,
    say) feeds the FULL jitter; the Retrier's index and count are mixed in, so every retry of an
    execution draws its own delay.
    """
    for index, retrier in enumerate(retriers):
        if not matches(retrier.error_equals, error):
            continue
        done = counts[index] if index < len(counts) else 0
        if done >= retrier.max_attempts:
            return None
        return index, retry_delay_ms(retrier, done, f"{seed}:{index}:{done}")
    return None
