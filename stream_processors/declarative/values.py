"""The JSON value type that definitions and the data flow work on, and its canonical text.

A state's input and output, a payload template and the context object are JSON values: dicts
with string keys, lists, strings, numbers, booleans and null. Nothing else may enter the data
flow, so a state's output always serialises as it was computed.
"""

from __future__ import annotations

import json
from typing import TypeAlias

JSON: TypeAlias = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None


def canonical(value: JSON) -> str:
    """Compact JSON text with sorted keys: equal values give equal text (``true`` is not ``1``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def compact(value: JSON) -> str:
    """Compact JSON text keeping key order, as ``States.JsonToString`` writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def is_number(value: object) -> bool:
    """An int or a float, not a bool (which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)
