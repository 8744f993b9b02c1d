"""A map's items as journaled: JSON, with records kept as their framed Avro. Pure.

A map takes its list from the state once, when it starts, and journals it (``BlockStarted``):
the items an iteration sees must not shift when the state changes while the map runs, and a
replay must see the same list. Items are JSON values (strings, numbers, booleans, null, lists,
objects) or records (``Event``, ``State``...), which travel as ``{"$avro": <base64 framed Avro>}``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from stream_processors.codecs.records import Record, decode_record

_AVRO = "$avro"


def encode_items(items: Sequence[Any]) -> bytes:
    """The JSON of ``items``; ``TypeError`` names an item that is neither JSON nor a record."""
    return json.dumps([_encoded(item) for item in items], separators=(",", ":")).encode()


def decode_items(data: bytes) -> list[Any]:
    return [_decoded(item) for item in json.loads(data)]


def _encoded(item: Any) -> Any:
    if isinstance(item, Record):
        return {_AVRO: base64.b64encode(item.encode()).decode()}
    return item


def _decoded(item: Any) -> Any:
    if isinstance(item, dict) and len(item) == 1 and _AVRO in item:
        return decode_record(base64.b64decode(item[_AVRO]))
    return item
