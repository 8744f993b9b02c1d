"""The times a state asks for: a Wait state's deadline, and a Task's timeouts read from paths.

A Wait state waits for ``Seconds`` (a non-negative integer), until ``Timestamp`` (RFC 3339), or
for the value ``SecondsPath`` or ``TimestampPath`` selects in its effective input; a value of
the wrong kind there is a ``States.Runtime`` error. A timestamp already past ends the wait at
once. ``TimeoutSecondsPath`` and ``HeartbeatSecondsPath`` must select a positive integer. Times
are epoch milliseconds, the engine's clock: ``now_ms`` is the time the decision is given, so
the deadline is a pure function of it.
"""

from __future__ import annotations

from collections.abc import Mapping

from stream_processors.declarative.choice import timestamp
from stream_processors.declarative.dataflow import select
from stream_processors.declarative.errors import RUNTIME, StatesError
from stream_processors.declarative.values import JSON, compact


def _seconds(value: JSON, field: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise StatesError(
            RUNTIME, f"{field} must select an integer >= {least}, not {compact(value)}"
        )
    return value


def _instant_ms(value: JSON, field: str) -> int:
    instant = timestamp(value)
    if instant is None:
        raise StatesError(
            RUNTIME, f"{field} must select an RFC 3339 timestamp, not {compact(value)}"
        )
    return round(instant.timestamp() * 1000)


def wait_until_ms(state: Mapping[str, JSON], effective: JSON, now_ms: int) -> int:
    """When a Wait state with these fields, given ``effective`` at ``now_ms``, ends (epoch ms)."""
    if "Seconds" in state:
        return now_ms + 1000 * _seconds(state["Seconds"], "Seconds", 0)
    if "Timestamp" in state:
        return max(now_ms, _instant_ms(state["Timestamp"], "Timestamp"))
    if isinstance(path := state.get("SecondsPath"), str):
        return now_ms + 1000 * _seconds(select(effective, path), "SecondsPath", 0)
    if isinstance(path := state.get("TimestampPath"), str):
        return max(now_ms, _instant_ms(select(effective, path), "TimestampPath"))
    raise StatesError(
        RUNTIME, "a Wait state needs Seconds, Timestamp, SecondsPath or TimestampPath"
    )


def seconds_at(effective: JSON, path: str, field: str) -> int:
    """The positive number of seconds ``path`` selects (``TimeoutSecondsPath`` and the like)."""
    return _seconds(select(effective, path), field, 1)
