"""The compiled Avro writer (stream_processors.codecs.writer) writes fastavro's bytes, byte for
byte, and leaves to fastavro every datum it is not sure of."""

from __future__ import annotations

from typing import Any

import pytest

import examples.order_fulfillment.saga  # noqa: F401  (binds the example's schemas)
from stream_processors.codecs.avro import AvroSchema, encode, parse
from stream_processors.codecs.records import CATALOG, record_classes
from stream_processors.codecs.writer import Unwritable, compile_writer
from tests.unit.avro_samples import UNCOVERED, fastavro_bytes, record_of, sample_datum


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
        datum = sample_datum(schema.definition, variant)
        assert schema.writer(b"", datum) == fastavro_bytes(schema, datum), datum


@pytest.mark.parametrize("cls", record_classes(), ids=lambda c: c.__qualname__)
def test_a_record_encodes_the_same_from_its_fields_as_from_to_avro(cls: Any) -> None:
    """``Record.encode`` writes from the attributes; the bytes are those of ``to_avro``."""
    assert cls.__object_writer__ is not None
    for variant in range(20):
        record = cls(**sample_datum(cls.__avro__.definition, variant))
        expected = cls.__avro__.header + fastavro_bytes(cls.__avro__, record.to_avro())
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
        expected: bytes | type[Exception] = _PROBE.header + fastavro_bytes(_PROBE, datum)
    except Exception as error:
        expected = type(error)
    if isinstance(expected, bytes):
        assert encode(_PROBE, datum) == expected
    else:
        with pytest.raises(expected):
            encode(_PROBE, datum)


@pytest.mark.parametrize("field_type", UNCOVERED)
def test_schemas_it_does_not_cover_are_left_to_fastavro(field_type: Any) -> None:
    assert compile_writer(record_of(field_type)) is None
