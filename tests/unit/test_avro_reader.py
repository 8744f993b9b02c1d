"""The compiled Avro reader (stream_processors.codecs.reader) returns fastavro's datum for every
body it reads, and leaves to fastavro every body it is not sure of."""

from __future__ import annotations

import io
import random
from typing import Any

import fastavro
import pytest

import examples.order_fulfillment.saga  # noqa: F401  (binds the example's schemas)
from stream_processors.codecs.avro import (
    AvroSchema,
    DecodeError,
    SchemaCatalog,
    decode,
    encode,
    parse,
)
from stream_processors.codecs.reader import Unreadable, compile_reader
from stream_processors.codecs.records import CATALOG
from tests.unit.avro_samples import UNCOVERED, fastavro_bytes, record_of, sample_datum


def _fastavro(schema: AvroSchema, body: bytes) -> tuple[Any, int]:
    """fastavro's datum of ``body`` and where it stopped, or the type of its error."""
    buffer = io.BytesIO(body)
    try:
        return fastavro.schemaless_reader(buffer, schema.hinted, None), buffer.tell()
    except Exception as error:
        return type(error), -1


def _compiled(body: bytes, schema: AvroSchema) -> tuple[Any, int] | None:
    assert schema.body_reader is not None
    try:
        return schema.body_reader(body, 0)
    except Unreadable:
        return None


def _schemas() -> list[AvroSchema]:
    return [s for s in CATALOG.schemas() if s.body_reader is not None]


def test_every_built_in_and_example_schema_has_a_reader() -> None:
    ours = {s.full_name for s in CATALOG.schemas() if s.full_name.startswith("sagalog.")}
    assert ours <= {s.full_name for s in _schemas()}
    assert "sagalog.examples.orders.OrderState" in {s.full_name for s in _schemas()}


@pytest.mark.parametrize("schema", _schemas(), ids=lambda s: s.full_name)
def test_the_compiled_reader_reads_fastavros_datum(schema: AvroSchema) -> None:
    for variant in range(40):
        datum = sample_datum(schema.definition, variant)
        body = fastavro_bytes(schema, datum)
        read = _compiled(body, schema)
        assert read == (datum, len(body)) == _fastavro(schema, body)
        assert list(read[0]) == list(datum)  # the fields in the schema's order, as fastavro's


@pytest.mark.parametrize("schema", _schemas(), ids=lambda s: s.full_name)
def test_on_damaged_bodies_it_agrees_with_fastavro_or_declines(schema: AvroSchema) -> None:
    """Truncated, cut and flipped bodies: whatever the compiled reader returns, fastavro
    returns too (the same datum, stopping at the same byte); the rest it declines."""
    rng = random.Random(schema.full_name)
    declined = 0
    for variant in range(30):
        body = fastavro_bytes(schema, sample_datum(schema.definition, variant))
        damaged = [body[:cut] for cut in range(len(body)) if cut % 7 == 0 or cut < 12]
        for _ in range(20 if body else 0):
            flipped = bytearray(body)
            flipped[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
            damaged.append(bytes(flipped))
        for candidate in damaged:
            read = _compiled(candidate, schema)
            if read is None:
                declined += 1
            else:
                assert read == _fastavro(schema, candidate), candidate
    if schema.definition["fields"]:
        assert declined > 0  # truncation alone makes some


_PROBE = parse(
    {
        "type": "record",
        "name": "Probe",
        "namespace": "test.reader",
        "fields": [
            {"name": "n", "type": "int"},
            {"name": "f", "type": "boolean"},
            {"name": "s", "type": ["null", "string"]},
            {"name": "a", "type": {"type": "array", "items": "long"}},
        ],
    }
)


@pytest.mark.parametrize(
    "body",
    [
        b"\x02\x02\x04\x00",  # a union index of 2 (the union has two branches)
        b"\x02\x04\x00\x00",  # a boolean byte of 2
        b"\x02\x01\x02\x03\xff\xfe\x00",  # a string that is not UTF-8
        b"\x02\x01\x02\x05abc\x00",  # a negative string length
        b"\xff\xff\xff\xff\x7f\x01\x00\x00",  # an int beyond 32 bits
        b"\xff" * 11 + b"\x01\x01\x00\x00",  # a varint of more than ten bytes
        b"\x02\x01\x00\x03\x02\x02\x00",  # an array block with its byte size (count -2)
        b"\x02\x01\x00\x7e\x02\x00",  # an array count beyond the bytes left
        b"\x02\x01\x02\x10ab",  # a string longer than the body
    ],
)
def test_what_the_reader_declines_fastavro_reads_or_refuses(body: bytes) -> None:
    assert _PROBE.body_reader is not None
    with pytest.raises(Unreadable):
        _PROBE.body_reader(body, 0)
    expected = _fastavro(_PROBE, body)
    framed = _PROBE.header + body
    catalog = SchemaCatalog()
    catalog.add(_PROBE)
    if isinstance(expected[0], type):
        with pytest.raises(DecodeError):
            decode(catalog, framed)
    elif expected[1] != len(body):
        with pytest.raises(DecodeError, match="trailing bytes"):
            decode(catalog, framed)
    else:
        assert decode(catalog, framed) == (_PROBE, expected[0])


def test_decode_uses_it_and_checks_the_end_as_before() -> None:
    catalog = SchemaCatalog()
    catalog.add(_PROBE)
    datum = {"n": -3, "f": True, "s": "é", "a": [1, -(2**40)]}
    framed = encode(_PROBE, datum)
    assert decode(catalog, framed) == (_PROBE, datum)
    with pytest.raises(DecodeError, match="trailing bytes"):
        decode(catalog, framed + b"\x00")


@pytest.mark.parametrize("field_type", UNCOVERED)
def test_schemas_it_does_not_cover_are_left_to_fastavro(field_type: Any) -> None:
    assert compile_reader(record_of(field_type)) is None
