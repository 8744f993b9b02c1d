"""Sample datums of any schema the generated Avro codecs cover, and fastavro's bytes for them:
what the tests of the writer and of the reader compare against."""

from __future__ import annotations

import io
from typing import Any

import fastavro

from stream_processors.codecs.avro import AvroSchema

#: Values per type: small and large, empty and multi-byte, at the varint boundaries.
SAMPLES: dict[str, list[Any]] = {
    "null": [None],
    "boolean": [True, False],
    "int": [0, 1, -1, 63, -64, 64, -65, 8191, 8192, 2**31 - 1, -(2**31)],
    "long": [0, -1, 64, 1_767_225_600_000, -(2**40), 2**63 - 1, -(2**63)],
    "string": ["", "a", "é" * 70, "order-engine-0000001", "x" * 300],
    "bytes": [b"", b"\x00\xff", b"v" * 64, b"w" * 9000],
}


def fastavro_bytes(schema: AvroSchema, datum: Any) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema.hinted, datum)
    return buffer.getvalue()


def sample_value(field_type: Any, variant: int) -> Any:
    """The ``variant``-th sample datum of a field type (cycling through its samples)."""
    if isinstance(field_type, str):
        samples = SAMPLES[field_type]
        return samples[variant % len(samples)]
    if isinstance(field_type, list):  # a union with null: null on every third variant
        other = next(t for t in field_type if t != "null")
        return None if variant % 3 == 0 else sample_value(other, variant // 3)
    if field_type["type"] == "record":
        return sample_datum(field_type, variant)
    if field_type["type"] == "array":
        return [sample_value(field_type["items"], variant + i) for i in range(variant % 4)]
    if field_type["type"] == "map":
        keys = SAMPLES["string"]
        return {
            keys[(variant + i) % len(keys)] + str(i): sample_value(
                field_type["values"], variant + i
            )
            for i in range(variant % 4)
        }
    return sample_value(field_type["type"], variant)


def sample_datum(definition: Any, variant: int) -> dict[str, Any]:
    return {
        f["name"]: sample_value(f["type"], variant + i) for i, f in enumerate(definition["fields"])
    }


#: Field types the generated writer and reader leave to fastavro: floats, enums, wider unions,
#: logical types and named references.
UNCOVERED: list[Any] = [
    "double",
    {"type": "map", "values": "double"},
    {"type": "map", "values": "float"},
    {"type": "enum", "name": "E", "symbols": ["A"]},
    ["null", "string", "long"],
    {"type": "long", "logicalType": "timestamp-millis"},
    "test.codecs.Other",
]


def record_of(field_type: Any) -> dict[str, Any]:
    """A record schema with one field, ``x``, of ``field_type``."""
    return {"type": "record", "name": "R", "fields": [{"name": "x", "type": field_type}]}
