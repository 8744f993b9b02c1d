"""A per-schema Avro binary reader, generated once per schema, for the hot paths that read. Pure.

fastavro's ``schemaless_reader`` walks the parsed schema on every call; for the small records
read once per input or per journal entry (an event or a reply in the processor, a command in a
worker, each journal entry in a replay or a history) that walk is most of the cost: about 11 µs
for a journal entry on this project's machine. ``compile_reader`` generates, once per record
schema, one Python function that reads that record's fields in order, the counterpart of
``stream_processors.codecs.writer``; it covers the same schemas (``codegen.kind_of``).

It reads only what it is sure of and returns fastavro's datum exactly (same dictionaries, same
values). Bytes it has any doubt about raise ``Unreadable``, and the caller hands them to
fastavro, which returns its datum or raises its own error: a truncated or corrupt body, a union
index out of range, a boolean byte other than 0 or 1, a varint longer than ten bytes or out of
its type's range, a negative length, an array or map block written with its byte size
(a negative count, which fastavro reads), invalid UTF-8. Schema resolution (a record written
with an older version) is fastavro's too. tests/unit/test_avro_reader.py compares both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stream_processors.codecs.codegen import RANGES, Source, generated, kind_of

#: A compiled reader: (the framed bytes, where the body starts) -> (the datum, where it ended).
RecordReader = Callable[[bytes, int], tuple[dict[str, Any], int]]


class Unreadable(Exception):
    """Bytes this reader leaves to fastavro (its datum or its error are fastavro's to give)."""


def _varint(data: bytes, i: int, first: int, low: int, high: int) -> tuple[int, int]:
    """The rest of a zigzag varint whose first byte ``first`` (at ``i - 1``) had its high bit
    set: (the value, the offset after it). At most ten bytes, within [low, high)."""
    n = first & 0x7F
    shift = 7
    while True:
        byte = data[i]
        i += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift > 63:
            raise Unreadable
    value = (n >> 1) ^ -(n & 1)
    if not low <= value < high:
        raise Unreadable
    return value, i


def _integer(source: Source, kind: str, value: str, depth: int) -> None:
    """Read an int or a long (zigzag varint) into ``value``; one byte inline, more in
    ``_varint``."""
    low, high = RANGES[kind]
    source.add(depth, "b = data[i]", "i += 1")
    source.add(depth, "if b < 0x80:")
    source.add(depth + 1, f"{value} = (b >> 1) ^ -(b & 1)")
    source.add(depth, "else:")
    source.add(depth + 1, f"{value}, i = varint(data, i, b, {low}, {high})")


def _length(source: Source, value: str, depth: int) -> None:
    """Read a length (a long, not negative, within the data) into ``value``."""
    _integer(source, "long", value, depth)
    source.add(depth, f"if {value} < 0 or i + {value} > size: raise Unreadable")


def _primitive(source: Source, kind: str, value: str, depth: int) -> None:
    if kind == "null":
        source.add(depth, f"{value} = None")
    elif kind == "boolean":
        source.add(depth, "b = data[i]", "i += 1")
        source.add(depth, "if b > 1: raise Unreadable")
        source.add(depth, f"{value} = b == 1")
    elif kind in RANGES:
        _integer(source, kind, value, depth)
    else:  # string, bytes
        _length(source, "n", depth)
        read = "data[i:i + n]" + (".decode()" if kind == "string" else "")
        source.add(depth, f"{value} = {read}", "i += n")


def _emit(source: Source, schema: Any, value: str, depth: int) -> None:
    """Append the code that reads a value of ``schema`` into the variable ``value``."""
    kind = kind_of(schema)
    if kind == "optional":
        null_index = schema.index("null")
        source.add(depth, "b = data[i]", "i += 1")
        source.add(depth, f"if b == {null_index << 1}:")
        source.add(depth + 1, f"{value} = None")
        source.add(depth, f"elif b == {(1 - null_index) << 1}:")
        _emit(source, schema[1 - null_index], value, depth + 1)
        source.add(depth, "else: raise Unreadable")
    elif kind == "record":
        names = []
        for field in schema["fields"]:
            names.append((field["name"], source.name()))
            _emit(source, field["type"], names[-1][1], depth)
        source.add(depth, f"{value} = {{{', '.join(f'{n!r}: {v}' for n, v in names)}}}")
    elif kind in ("array", "map"):
        _blocks(source, schema, kind, value, depth)
    else:
        _primitive(source, kind, value, depth)


def _blocks(source: Source, schema: Any, kind: str, value: str, depth: int) -> None:
    """An array or a map: blocks of items, each block its count first, until a count of 0. A
    count above the bytes left is corrupt (each item takes a byte at least, but null's)."""
    count, item, key = source.name(), source.name(), source.name()
    source.add(depth, f"{value} = {'[]' if kind == 'array' else '{}'}")
    source.add(depth, "while True:")
    _integer(source, "long", count, depth + 1)
    source.add(depth + 1, f"if {count} == 0: break")
    source.add(depth + 1, f"if {count} < 0 or {count} > size - i: raise Unreadable")
    source.add(depth + 1, f"for _ in range({count}):")
    if kind == "array":
        _emit(source, schema["items"], item, depth + 2)
        source.add(depth + 2, f"{value}.append({item})")
    else:
        _emit(source, "string", key, depth + 2)
        _emit(source, schema["values"], item, depth + 2)
        source.add(depth + 2, f"{value}[{key}] = {item}")


def compile_reader(definition: Any) -> RecordReader | None:
    """The reader of a record schema's bodies, or None if this module does not cover it."""
    if not isinstance(definition, Mapping) or definition.get("type") != "record":
        return None
    head = ["def decode(data, i):", "    size = len(data)", "    try:"]
    tail = [
        "    except (IndexError, UnicodeDecodeError):  # truncated, or not UTF-8",
        "        raise Unreadable from None",
        "    return datum, i",
    ]
    label = f"<avro reader of {definition.get('name')}>"
    namespace = {"Unreadable": Unreadable, "varint": _varint}
    reader: RecordReader | None = generated(
        lambda source: _emit(source, definition, "datum", 2), head, tail, label, namespace
    )
    return reader


__all__ = ["RecordReader", "Unreadable", "compile_reader"]
