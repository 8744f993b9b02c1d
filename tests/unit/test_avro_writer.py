"""The compiled Avro writer (stream_processors.codecs.writer) writes fastavro's bytes, byte for
byte, and leaves to fastavro every datum it is not sure of."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest

import examples.order_fulfillment.saga  # noqa: F401  (binds the example's schemas)
from stream_processors.codecs.avro import AvroSchema, encode, parse
from stream_processors.codecs.records import CATALOG, record_classes
from stream_processors.codecs.writer import Unwritable, compile_writer

#: Values per type: small and large, empty and multi-byte, at the varint boundaries.
_SAMPLES: dict[str, list[Any]] = {
    "null": [None],
    "boolean": [True, False],
    "int": [0, 1, -1, 63, -64, 64, -65, 8191, 8192, 2**31 - 1, -(2**31)],
    "long": [0, -1, 64, 1_767_225_600_000, -(2**40), 2**63 - 1, -(2**63)],
    "string": ["", "a", "é" * 70, "order-engine-0000001", "x" * 300],
    "bytes": [b"", b"\x00\xff", b"v" * 64, b"w" * 9000],
}


def _fastavro(schema: AvroSchema, datum: Any) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema.hinted, datum)
    return buffer.getvalue()


def _values(field_type: Any, variant: int) -> Any:
    """The ``variant``-th sample datum of a field type (cycling through its samples)."""
    if isinstance(field_type, str):
        samples = _SAMPLES[field_type]
        return samples[variant % len(samples)]
    if isinstance(field_type, list):  # a union with null: null on every third variant
        other = next(t for t in field_type if t != "null")
        return None if variant % 3 == 0 else _values(other, variant // 3)
    if field_type["type"] == "record":
        return _datum(field_type, variant)
    if field_type["type"] == "array":
        return [_values(field_type["items"], variant + i) for i in range(variant % 4)]
    if field_type["type"] == "map":
        keys = _SAMPLES["string"]
        return {
            keys[(variant + i) % len(keys)] + str(i): _values(field_type["values"], variant + i)
            for i in range(variant % 4)
        }
    return _values(field_type["type"], variant)


def _datum(definition: Any, variant: int) -> dict[str, Any]:
    return {f["name"]: _values(f["type"], variant + i) for i, f in enumerate(definition["fields"])}


def _compiled() -> list[AvroSchema]:
    return [s for s in CATALOG.schemas() if s.writer is not None]


def test_every_built_in_and_example_schema_is_compiled() -> None:
    names = {s.full_name for s in _compiled()}
    assert {"sagalog.JournalEntry", "sagalog.Snapshot", "sagalog.OperatorAction"} <= names
    assert "sagalog.examples.orders.OrderState" in names


@pytest.mark.parametrize("schema", _compiled(), ids=lambda s: s.full_name)
def test_the_compiled_writer_writes_fastavros_bytes(schema: AvroSchema) -> None:
    assert schema.writer is not None
    for variant in range(40):
        datum = _datum(schema.definition, variant)
        assert schema.writer(b"", datum) == _fastavro(schema, datum), datum


@pytest.mark.parametrize("cls", record_classes(), ids=lambda c: c.__qualname__)
def test_a_record_encodes_the_same_from_its_fields_as_from_to_avro(cls: Any) -> None:
    """``Record.encode`` writes from the attributes; the bytes are those of ``to_avro``."""
    assert cls.__object_writer__ is not None
    for variant in range(20):
        record = cls(**_datum(cls.__avro__.definition, variant))
        expected = cls.__avro__.header + _fastavro(cls.__avro__, record.to_avro())
        assert record.encode() == expected


_PROBE = parse(
    {
        "type": "record",
        "name": "Probe",
        "namespace": "test.writer",
        "fields": [
            {"name": "n", "type": "int"},
            {"name": "s", "type": ["null", "string"], "default": None},
            {"name": "f", "type": "boolean", "default": False},
        ],
    }
)


@pytest.mark.parametrize(
    "datum",
    [
        {"n": 2**31, "s": None, "f": True},  # out of int range: fastavro decides
        {"n": True, "s": None, "f": True},  # a bool for an int
        {"n": 1, "s": 5, "f": True},  # a value of neither branch of the union
        {"n": 1, "s": "x", "f": 1},  # an int for a boolean
        {"n": 1, "s": "x"},  # a missing field: fastavro writes its default
        {"n": 1.5, "s": None, "f": False},  # a float for an int
        {"n": 1, "s": "\ud800", "f": False},  # a lone surrogate: not UTF-8
    ],
)
def test_what_the_writer_declines_fastavro_writes_or_refuses(datum: dict[str, Any]) -> None:
    assert _PROBE.writer is not None
    with pytest.raises(Unwritable):
        try:
            _PROBE.writer(b"", datum)
        except UnicodeError as error:  # declined as well (see avro._encode)
            raise Unwritable from error
    try:
        expected: bytes | type[Exception] = _PROBE.header + _fastavro(_PROBE, datum)
    except Exception as error:
        expected = type(error)
    if isinstance(expected, bytes):
        assert encode(_PROBE, datum) == expected
    else:
        with pytest.raises(expected):
            encode(_PROBE, datum)


@pytest.mark.parametrize(
    "field_type",
    [
        "double",
        {"type": "map", "values": "double"},
        {"type": "enum", "name": "E", "symbols": ["A"]},
        ["null", "string", "long"],
        {"type": "long", "logicalType": "timestamp-millis"},
        "test.writer.Other",
    ],
)
def test_schemas_it_does_not_cover_are_left_to_fastavro(field_type: Any) -> None:
    definition = {"type": "record", "name": "R", "fields": [{"name": "x", "type": field_type}]}
    assert compile_writer(definition) is None
