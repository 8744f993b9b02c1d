"""A per-schema Avro binary writer, built once per schema, for the engine's hot path. Pure.

fastavro's ``schemaless_writer`` walks the parsed schema on every call, dispatching on type
names; for the small records the engine writes per input (journal entries, snapshots, commands)
that walk was most of the cost of encoding (about 10 µs for a journal entry, against 4 µs here).
``compile_writer`` turns a record schema into nested closures once, so a call only does the
work of the datum.

It covers what Sagalog's own records and typical saga records use: ``null``, ``boolean``,
``int``, ``long``, ``string`` and ``bytes``, unions of ``null`` with one of those, arrays, and
records defined inline. For any other schema (enums, maps, fixed, floats, logical types, named
references, wider unions) it returns None and fastavro writes it. The bytes are fastavro's, byte
for byte: where fastavro has a choice to make (a union's branch, a value of a type the field
does not declare, an integer out of range, a missing field and its default), the writer raises
``Unwritable`` instead and the caller hands the datum to fastavro, which then writes it or raises
its own error. tests/unit/test_avro_writer.py compares both on every known schema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

#: Writes one value of a schema at the end of the buffer (raises ``Unwritable`` to decline).
Write = Callable[[bytearray, Any], None]
#: A compiled record writer: (frame header, datum) -> the framed bytes.
RecordWriter = Callable[[bytes, Mapping[str, Any]], bytes]

_LONG = (-(1 << 63), 1 << 63)
_INT = (-(1 << 31), 1 << 31)


class Unwritable(Exception):
    """A datum this writer leaves to fastavro (its bytes or its error are fastavro's to give)."""


class _Unsupported(Exception):
    """A schema this writer does not compile."""


def _varint(buf: bytearray, zigzagged: int) -> None:
    """A zigzag-encoded integer as a varint. Callers append a one-byte varint (< 0x80, the
    common case: short strings, small numbers) themselves, sparing a call."""
    while zigzagged >= 0x80:
        buf.append((zigzagged & 0x7F) | 0x80)
        zigzagged >>= 7
    buf.append(zigzagged)


def _integer(low: int, high: int) -> Write:
    def write(buf: bytearray, value: Any) -> None:
        if type(value) is not int or not low <= value < high:  # bool, float, out of range
            raise Unwritable
        zigzagged = (value << 1) ^ (value >> 63)
        if zigzagged < 0x80:
            buf.append(zigzagged)
        else:
            _varint(buf, zigzagged)

    return write


def _sized(buf: bytearray, data: bytes) -> None:
    """``data`` after its length (how Avro writes bytes and strings)."""
    length = len(data) << 1
    if length < 0x80:
        buf.append(length)
    else:
        _varint(buf, length)
    buf += data


def _string(buf: bytearray, value: Any) -> None:
    if type(value) is not str:
        raise Unwritable
    _sized(buf, value.encode())


def _bytes(buf: bytearray, value: Any) -> None:
    if type(value) is not bytes:
        raise Unwritable
    _sized(buf, value)


def _boolean(buf: bytearray, value: Any) -> None:
    if type(value) is not bool:
        raise Unwritable
    buf.append(1 if value else 0)


def _null(buf: bytearray, value: Any) -> None:
    if value is not None:
        raise Unwritable


_PRIMITIVES: dict[str, Write] = {
    "null": _null,
    "boolean": _boolean,
    "int": _integer(*_INT),
    "long": _integer(*_LONG),
    "string": _string,
    "bytes": _bytes,
}


def _optional(null_index: int, inner: Write) -> Write:
    """A union of ``null`` and one other type; the branch index is a zigzag varint (0 -> 0,
    1 -> 2). A value of neither type raises in ``inner`` (fastavro names the mismatch)."""
    null_tag, value_tag = null_index << 1, (1 - null_index) << 1

    def write(buf: bytearray, value: Any) -> None:
        if value is None:
            buf.append(null_tag)
        else:
            buf.append(value_tag)
            inner(buf, value)

    return write


def _array(inner: Write) -> Write:
    """An array in one block (count, items, then the 0 that ends the blocks), as fastavro."""

    def write(buf: bytearray, value: Any) -> None:
        if type(value) is not list and type(value) is not tuple:
            raise Unwritable
        if value:
            _varint(buf, len(value) << 1)
            for item in value:
                inner(buf, item)
        buf.append(0)

    return write


def _record(schema: Mapping[str, Any]) -> Write:
    fields = tuple((field["name"], _compile(field["type"])) for field in schema["fields"])

    def write(buf: bytearray, value: Any) -> None:
        if type(value) is not dict:
            raise Unwritable
        try:
            for name, write_field in fields:
                write_field(buf, value[name])
        except KeyError:  # fastavro would write the field's default
            raise Unwritable from None

    return write


def _compile(schema: Any) -> Write:
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _PRIMITIVES[schema]
        raise _Unsupported(schema)  # a named reference, or float/double
    if isinstance(schema, list):
        if len(schema) == 2 and "null" in schema:
            other = schema[1 - schema.index("null")]
            if isinstance(other, str) and other != "null" and other in _PRIMITIVES:
                return _optional(schema.index("null"), _PRIMITIVES[other])
        raise _Unsupported(str(schema))
    if isinstance(schema, Mapping) and "logicalType" not in schema:
        kind = schema.get("type")
        if kind == "record":
            return _record(schema)
        if kind == "array":
            return _array(_compile(schema["items"]))
        if isinstance(kind, str) and kind in _PRIMITIVES:
            return _PRIMITIVES[kind]
    raise _Unsupported(str(schema))


def compile_writer(definition: Mapping[str, Any]) -> RecordWriter | None:
    """The writer of a record schema's datums, or None if this module does not cover it."""
    try:
        write = _record(definition)
    except (_Unsupported, KeyError, TypeError):
        return None

    def encode(header: bytes, datum: Mapping[str, Any]) -> bytes:
        buf = bytearray(header)
        write(buf, datum)
        return bytes(buf)

    return encode


__all__ = ["RecordWriter", "Unwritable", "compile_writer"]
