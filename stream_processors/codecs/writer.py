"""A per-schema Avro binary writer, generated once per schema, for the engine's hot path. Pure.

fastavro's ``schemaless_writer`` walks the parsed schema on every call, dispatching on type
names; for the small records the engine writes per input (journal entries, snapshots, commands)
that walk was most of the cost of encoding. ``compile_writer`` generates, once per record schema,
the source of one Python function that writes that record's fields in order (as ``dataclasses``
generates ``__init__``), so a call does only the work of the datum: about 3x faster than
fastavro for a journal entry.

It covers what Sagalog's own records and typical saga records use: ``null``, ``boolean``,
``int``, ``long``, ``string`` and ``bytes``, unions of ``null`` with one of those, arrays, maps
and records defined inline. For any other schema (enums, fixed, floats, logical types, named
references, wider unions) it returns None and fastavro writes it. The bytes are fastavro's, byte
for byte: where fastavro has a choice to make (a union's branch, a value of a type the field
does not declare, an integer out of range, a missing field and its default), the writer raises
``Unwritable`` instead and the caller hands the datum to fastavro, which then writes it or raises
its own error. tests/unit/test_avro_writer.py compares both on every known schema.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from stream_processors.codecs.codegen import RANGES, Source, Unsupported, generated, kind_of

#: A compiled record writer: (frame header, datum) -> the framed bytes.
RecordWriter = Callable[[bytes, Mapping[str, Any]], bytes]
#: The same, of an object whose attributes are the fields (``compile_writer(attributes=True)``).
ObjectWriter = Callable[[bytes, Any], bytes]


class Unwritable(Exception):
    """A datum this writer leaves to fastavro (its bytes or its error are fastavro's to give)."""


def _length(depth: int, expression: str) -> Iterator[tuple[int, str]]:
    """Code that writes ``expression`` (a non-negative int, already zigzagged) as a varint."""
    yield depth, f"n = {expression}"
    yield depth, "while n >= 0x80:"
    yield depth + 1, "append((n & 0x7F) | 0x80)"
    yield depth + 1, "n >>= 7"
    yield depth, "append(n)"


def _primitive(kind: str, value: str, depth: int) -> Iterator[tuple[int, str]]:
    """Code that writes ``value`` of a primitive type, or raises ``Unwritable``."""
    if kind == "null":
        yield depth, f"if {value} is not None: raise Unwritable"
    elif kind == "boolean":
        yield depth, f"if type({value}) is not bool: raise Unwritable"
        yield depth, f"append(1 if {value} else 0)"
    elif kind in RANGES:
        low, high = RANGES[kind]
        yield depth, f"if type({value}) is not int or not {low} <= {value} < {high}:"
        yield depth + 1, "raise Unwritable"
        yield from _length(depth, f"({value} << 1) ^ ({value} >> 63)")
    elif kind == "string":
        yield depth, f"if type({value}) is not str: raise Unwritable"
        yield depth, f"{value} = {value}.encode()"
        yield from _length(depth, f"len({value}) << 1")
        yield depth, f"buf += {value}"
    elif kind == "bytes":
        yield depth, f"if type({value}) is not bytes: raise Unwritable"
        yield from _length(depth, f"len({value}) << 1")
        yield depth, f"buf += {value}"
    else:
        raise Unsupported(kind)  # float, double: left to fastavro


def _emit(source: Source, schema: Any, value: str, depth: int) -> None:
    """Append the code that writes ``value`` (a variable) of ``schema`` to ``source``."""
    kind = kind_of(schema)
    if kind == "optional":
        _optional(source, schema, value, depth)
    elif kind == "record":
        source.add(depth, f"if type({value}) is not dict: raise Unwritable")
        for field in schema["fields"]:
            name = source.name()
            source.add(depth, f"{name} = {value}[{field['name']!r}]")
            _emit(source, field["type"], name, depth)
    elif kind == "array":
        item = source.name()
        source.add(depth, f"if type({value}) is not list and type({value}) is not tuple:")
        source.add(depth + 1, "raise Unwritable")
        source.add(depth, f"if {value}:")
        for line_depth, line in _length(depth + 1, f"len({value}) << 1"):
            source.add(line_depth, line)
        source.add(depth + 1, f"for {item} in {value}:")
        _emit(source, schema["items"], item, depth + 2)
        source.add(depth, "append(0)")  # the block that ends the array
    elif kind == "map":
        key, item = source.name(), source.name()
        source.add(depth, f"if type({value}) is not dict: raise Unwritable")
        source.add(depth, f"if {value}:")
        for line_depth, line in _length(depth + 1, f"len({value}) << 1"):
            source.add(line_depth, line)
        source.add(depth + 1, f"for {key}, {item} in {value}.items():")
        _emit(source, "string", key, depth + 2)
        _emit(source, schema["values"], item, depth + 2)
        source.add(depth, "append(0)")  # the block that ends the map
    else:
        for line_depth, line in _primitive(kind, value, depth):
            source.add(line_depth, line)


def _optional(source: Source, union: list[Any], value: str, depth: int) -> None:
    """A union of ``null`` and one primitive; the branch index is a zigzag varint (0 -> 0,
    1 -> 2). A value of neither type raises in the other branch's check."""
    null_index = union.index("null")
    source.add(depth, f"if {value} is None:")
    source.add(depth + 1, f"append({null_index << 1})")
    source.add(depth, "else:")
    source.add(depth + 1, f"append({(1 - null_index) << 1})")
    _emit(source, union[1 - null_index], value, depth + 1)


def compile_writer(definition: Mapping[str, Any]) -> RecordWriter | None:
    """The writer of a record schema's datums, or None if this module does not cover it."""
    writer: RecordWriter | None = _compile(definition, attributes=False)
    return writer


def compile_object_writer(definition: Mapping[str, Any]) -> ObjectWriter | None:
    """The same, taking an object whose attributes are the record's fields (a ``Record``), which
    spares building ``to_avro``'s dictionary; nested records are dictionaries either way."""
    writer: ObjectWriter | None = _compile(definition, attributes=True)
    return writer


def _compile(definition: Mapping[str, Any], *, attributes: bool) -> Any:
    """The generated writer (a missing field, key or attribute, is ``Unwritable``), or None."""
    if definition.get("type") != "record":
        return None
    head = [
        "def encode(header, datum):",
        "    buf = bytearray(header)",
        "    append = buf.append",
        "    try:",
    ]
    tail = [
        "    except (KeyError, AttributeError):  # a missing field: fastavro uses its default",
        "        raise Unwritable from None",
        "    return bytes(buf)",
    ]

    def emit(source: Source) -> None:
        if attributes:
            _emit_attributes(source, definition)
        else:
            _emit(source, definition, "datum", 2)

    label = f"<avro writer of {definition.get('name')}>"
    return generated(emit, head, tail, label, {"Unwritable": Unwritable})


def _emit_attributes(source: Source, definition: Mapping[str, Any]) -> None:
    """A record's fields read as attributes of ``datum`` (names that are Python identifiers)."""
    for field in definition["fields"]:
        attribute = field["name"]
        if not attribute.isidentifier() or keyword.iskeyword(attribute):
            raise Unsupported(attribute)
        name = source.name()
        source.add(2, f"{name} = datum.{attribute}")
        _emit(source, field["type"], name, 2)


__all__ = [
    "ObjectWriter",
    "RecordWriter",
    "Unwritable",
    "compile_object_writer",
    "compile_writer",
]
