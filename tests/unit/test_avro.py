"""Unit tests for ``stream_processors.codecs.avro``: single-object framing, the catalog, decode
errors.

Covers: encode/decode round trips; the frame layout (``C3 01`` + the 8-byte little-endian
CRC-64-AVRO fingerprint of the parsing canonical form, checked against fastavro, an independent
implementation of the spec's algorithm and Avro's published test vector); each stable
``DecodeError`` reason (no-value, not-avro, unknown-schema, corrupt-avro, incompatible-schema);
schema evolution through ``add_writer``; the ``SchemaError`` cases of the catalog; and the
bounds on asking the fallback (the schema history) about unknown fingerprints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from stream_processors.codecs.avro import (
    FALLBACK_INTERVAL,
    HEADER_SIZE,
    MAGIC,
    UNKNOWN_CACHE_SIZE,
    UNKNOWN_TTL,
    AvroSchema,
    DecodeError,
    SchemaCatalog,
    SchemaError,
    decode,
    encode,
    parse,
)

NS = "tests.unit.avro"

V1: dict[str, Any] = {
    "type": "record",
    "name": "Parcel",
    "namespace": NS,
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "weight_g", "type": "long"},
        {"name": "label", "type": ["null", "string"], "default": None},
    ],
}

#: V1 plus a field with a default: records written with V1 read as V2 with the default filled in.
V2: dict[str, Any] = {
    **V1,
    "fields": [*V1["fields"], {"name": "fragile", "type": "boolean", "default": False}],
}

#: V1 with ``id`` changed from string to int and no default: V1 records cannot be read as this.
V_INCOMPATIBLE: dict[str, Any] = {
    **V1,
    "fields": [{"name": "id", "type": "int"}, *V1["fields"][1:]],
}

PARCEL = {"id": "p-1", "weight_g": 1250, "label": "books"}


def _crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO (Rabin) exactly as the Avro specification writes it, independent of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    result = empty
    for byte in data:
        result = (result >> 8) ^ table[(result ^ byte) & 0xFF]
    return result


@pytest.fixture
def catalog() -> SchemaCatalog:
    catalog = SchemaCatalog()
    catalog.add(parse(V1, "v1"))
    return catalog


def test_round_trip_returns_the_same_fields_and_the_schema(catalog: SchemaCatalog) -> None:
    schema = catalog.current(f"{NS}.Parcel")
    reader, datum = decode(catalog, encode(schema, PARCEL))
    assert reader is schema
    assert datum == PARCEL


def test_round_trip_of_a_null_union_and_unicode(catalog: SchemaCatalog) -> None:
    schema = catalog.current(f"{NS}.Parcel")
    value = {"id": "pâquet-ü-😀", "weight_g": -(2**62), "label": None}
    assert decode(catalog, encode(schema, value))[1] == value


def test_spec_crc64_implementation_matches_avros_published_vector() -> None:
    # share/test/data/schema-tests.txt in apache/avro: "null" has fingerprint 7195948357588979594.
    assert _crc64_avro(b'"null"') == 7195948357588979594


def test_frame_is_marker_then_little_endian_crc64_fingerprint_then_body() -> None:
    schema = parse(V1)
    framed = encode(schema, PARCEL)

    assert framed[:2] == b"\xc3\x01" == MAGIC
    canonical = to_parsing_canonical_form(parse_schema(V1))
    expected_value = _crc64_avro(canonical.encode())
    # The spec: the 8 bytes are the 64-bit fingerprint in little-endian order.
    assert framed[2:10] == expected_value.to_bytes(8, "little")
    # fastavro's hex lists the fingerprint bytes in that same (little-endian) order.
    assert framed[2:10] == bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    assert schema.fingerprint == framed[2:10]
    assert schema.header == framed[:HEADER_SIZE]
    # The body is plain Avro binary: "p-1" is a zigzag length 6 (0x06) then the UTF-8 bytes.
    assert framed[HEADER_SIZE : HEADER_SIZE + 4] == b"\x06p-1"


def test_fingerprint_ignores_docs_and_field_order_of_json_but_not_types() -> None:
    documented = {**V1, "doc": "a parcel", "fields": [{**V1["fields"][0], "doc": "the id"}]}
    undocumented = {**V1, "fields": [V1["fields"][0]]}
    assert parse(documented).fingerprint == parse(undocumented).fingerprint
    assert parse(V1).fingerprint != parse(V2).fingerprint
    assert parse(V1).fingerprint != parse(V_INCOMPATIBLE).fingerprint


def test_field_names_follow_the_schema(catalog: SchemaCatalog) -> None:
    assert catalog.current(f"{NS}.Parcel").field_names == ("id", "weight_g", "label")


def test_missing_value_is_no_value(catalog: SchemaCatalog) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(catalog, None)
    assert caught.value.reason == "no-value"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc3",
        b"\xc3\x01\x00\x00",  # the marker, but too short to hold a fingerprint
        b'{"id": "p-1", "weight_g": 1250}',  # JSON, long enough to hold a header
        b"\x00\x01\x02",  # a zero byte, but too short for the Confluent wire format
        b"\x01\xc3" + b"\x00" * 20,  # the marker bytes swapped
    ],
)
def test_bytes_that_are_not_framed_avro_are_not_avro(catalog: SchemaCatalog, data: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(catalog, data)
    assert caught.value.reason == "not-avro"


def test_confluent_framing_without_a_registry_is_an_unknown_schema(
    catalog: SchemaCatalog,
) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(catalog, b"\x00\x00\x00\x00\x07" + b"\x02")
    assert caught.value.reason == "unknown-schema"
    assert "no registry" in caught.value.detail


def test_unknown_fingerprint_is_unknown_schema(catalog: SchemaCatalog) -> None:
    other = parse({**V1, "name": "Other"})
    framed = encode(other, PARCEL)
    with pytest.raises(DecodeError) as caught:
        decode(catalog, framed)
    assert caught.value.reason == "unknown-schema"
    assert other.fingerprint.hex() in caught.value.detail


def test_every_truncation_of_the_body_is_corrupt_avro(catalog: SchemaCatalog) -> None:
    framed = encode(catalog.current(f"{NS}.Parcel"), PARCEL)
    for length in range(HEADER_SIZE, len(framed)):
        with pytest.raises(DecodeError) as caught:
            decode(catalog, framed[:length])
        assert caught.value.reason == "corrupt-avro", f"cut at {length}: {caught.value}"


def test_trailing_bytes_are_corrupt_avro(catalog: SchemaCatalog) -> None:
    framed = encode(catalog.current(f"{NS}.Parcel"), PARCEL)
    with pytest.raises(DecodeError) as caught:
        decode(catalog, framed + b"\x00")
    assert caught.value.reason == "corrupt-avro"
    assert "trailing" in caught.value.detail


def test_invalid_union_branch_is_corrupt_avro(catalog: SchemaCatalog) -> None:
    schema = catalog.current(f"{NS}.Parcel")
    framed = bytearray(encode(schema, {**PARCEL, "label": None}))
    assert framed[-1] == 0  # union branch 0 (null) is the last byte
    framed[-1] = 0x0A  # zigzag 5: a branch the two-member union does not have
    with pytest.raises(DecodeError) as caught:
        decode(catalog, bytes(framed))
    assert caught.value.reason == "corrupt-avro"


def test_old_writer_schema_resolves_onto_the_current_version() -> None:
    v1, v2 = parse(V1, "v1"), parse(V2, "v2")
    catalog = SchemaCatalog()
    catalog.add(v2)
    catalog.add_writer(v1)

    old = encode(v1, PARCEL)
    reader, datum = decode(catalog, old)
    assert reader is v2
    assert datum == {**PARCEL, "fragile": False}
    # Current records still decode, and keep their own value for the new field.
    assert decode(catalog, encode(v2, {**PARCEL, "fragile": True}))[1]["fragile"] is True


def test_add_writer_never_replaces_the_current_version() -> None:
    v1, v2 = parse(V1, "v1"), parse(V2, "v2")
    catalog = SchemaCatalog()
    catalog.add(v2)
    catalog.add_writer(v1)
    assert catalog.current(f"{NS}.Parcel") is v2
    assert catalog.writer(v1.fingerprint) is v1
    assert catalog.reader_for(v1) is v2


def test_writer_without_a_current_version_is_read_as_itself() -> None:
    v1 = parse(V1)
    catalog = SchemaCatalog()
    catalog.add_writer(v1)
    reader, datum = decode(catalog, encode(v1, PARCEL))
    assert reader is v1
    assert datum == PARCEL


def test_record_of_an_unknown_old_version_is_unknown_schema() -> None:
    catalog = SchemaCatalog()
    catalog.add(parse(V2))
    with pytest.raises(DecodeError) as caught:
        decode(catalog, encode(parse(V1), PARCEL))
    assert caught.value.reason == "unknown-schema"


def test_incompatible_type_change_is_incompatible_schema() -> None:
    catalog = SchemaCatalog()
    catalog.add(parse(V_INCOMPATIBLE, "new"))
    v1 = parse(V1, "old")
    catalog.add_writer(v1)
    with pytest.raises(DecodeError) as caught:
        decode(catalog, encode(v1, PARCEL))
    assert caught.value.reason == "incompatible-schema"
    assert f"{NS}.Parcel" in caught.value.detail


def test_new_field_without_default_is_incompatible_schema() -> None:
    no_default = {**V1, "fields": [*V1["fields"], {"name": "fragile", "type": "boolean"}]}
    catalog = SchemaCatalog()
    catalog.add(parse(no_default))
    v1 = parse(V1)
    catalog.add_writer(v1)
    with pytest.raises(DecodeError) as caught:
        decode(catalog, encode(v1, PARCEL))
    assert caught.value.reason == "incompatible-schema"


def test_two_different_current_schemas_with_one_name_are_refused() -> None:
    catalog = SchemaCatalog()
    catalog.add(parse(V1, "first.avsc"))
    with pytest.raises(SchemaError, match=r"two different schemas named tests\.unit\.avro\.Parcel"):
        catalog.add(parse(V2, "second.avsc"))
    # The refused schema did not become current.
    assert catalog.current(f"{NS}.Parcel").source == "first.avsc"


def test_adding_the_same_schema_twice_is_fine() -> None:
    catalog = SchemaCatalog()
    catalog.add(parse(V1, "a"))
    catalog.add(parse({**V1, "doc": "same shape"}, "b"))
    assert catalog.has(f"{NS}.Parcel")


def test_unknown_name_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"no schema named nope\.Nope"):
        SchemaCatalog().current("nope.Nope")


@pytest.mark.parametrize(
    "definition",
    [
        {"type": "enum", "name": "E", "symbols": ["A"]},
        {"type": "record", "name": "R", "fields": [{"name": "x", "type": "nosuchtype"}]},
    ],
)
def test_unsupported_or_invalid_schemas_are_schema_errors(definition: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        parse(definition, "bad.avsc")


def test_load_directory_adds_every_avsc_below_it(tmp_path: Path) -> None:
    (tmp_path / "nested").mkdir()
    (tmp_path / "Parcel.avsc").write_text(json.dumps(V1))
    (tmp_path / "nested" / "Box.avsc").write_text(json.dumps({**V1, "name": "Box"}))
    (tmp_path / "ignored.json").write_text("not a schema")
    catalog = SchemaCatalog()
    loaded = catalog.load_directory(tmp_path)
    assert sorted(s.full_name for s in loaded) == [f"{NS}.Box", f"{NS}.Parcel"]
    assert catalog.current(f"{NS}.Box").source.endswith("Box.avsc")


def test_load_directory_refuses_invalid_json(tmp_path: Path) -> None:
    (tmp_path / "Broken.avsc").write_text("{not json")
    with pytest.raises(SchemaError, match="not valid JSON"):
        SchemaCatalog().load_directory(tmp_path)


def test_load_directory_refuses_two_files_with_one_name(tmp_path: Path) -> None:
    (tmp_path / "a.avsc").write_text(json.dumps(V1))
    (tmp_path / "b.avsc").write_text(json.dumps(V2))
    with pytest.raises(SchemaError, match="two different schemas"):
        SchemaCatalog().load_directory(tmp_path)


# --- unknown fingerprints: asking the fallback is bounded ----------------------------------------


class _Fallback:
    """A schema history stand-in: counts questions; knows what was "recorded" in ``history``."""

    def __init__(self, catalog: SchemaCatalog) -> None:
        self.catalog = catalog
        self.asked: list[bytes] = []
        self.history: dict[bytes, AvroSchema] = {}

    def __call__(self, fp: bytes) -> AvroSchema | None:
        self.asked.append(fp)
        for schema in self.history.values():  # a read takes in everything recorded so far
            self.catalog.add_writer(schema)
        return self.history.get(fp)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _asking(catalog: SchemaCatalog) -> tuple[_Fallback, _Clock]:
    fallback, clock = _Fallback(catalog), _Clock()
    catalog.fallback, catalog.clock = fallback, clock
    return fallback, clock


def _garbage(n: int) -> bytes:
    return MAGIC + n.to_bytes(8, "little") + b"\x00"


def _unknown(catalog: SchemaCatalog, data: bytes) -> None:
    with pytest.raises(DecodeError, match="unknown-schema"):
        decode(catalog, data)


def test_a_storm_of_unknown_fingerprints_asks_the_fallback_once_per_interval(
    catalog: SchemaCatalog,
) -> None:
    fallback, clock = _asking(catalog)
    for n in range(3_000):
        _unknown(catalog, _garbage(n))
    assert len(fallback.asked) == 1
    clock.now += FALLBACK_INTERVAL
    for n in range(3_000, 6_000):
        _unknown(catalog, _garbage(n))
    assert len(fallback.asked) == 2
    # The same fingerprint again: not asked until its time as unknown is up.
    assert 10 * FALLBACK_INTERVAL < UNKNOWN_TTL - FALLBACK_INTERVAL
    for _ in range(10):
        clock.now += FALLBACK_INTERVAL
        _unknown(catalog, _garbage(0))
    assert fallback.asked.count(_garbage(0)[2:HEADER_SIZE]) == 1
    clock.now += UNKNOWN_TTL
    _unknown(catalog, _garbage(0))
    assert fallback.asked.count(_garbage(0)[2:HEADER_SIZE]) == 2


def test_the_unknown_fingerprints_remembered_are_bounded(catalog: SchemaCatalog) -> None:
    fallback, clock = _asking(catalog)
    for n in range(UNKNOWN_CACHE_SIZE + 100):
        clock.now += FALLBACK_INTERVAL
        _unknown(catalog, _garbage(n))
    assert len(fallback.asked) == UNKNOWN_CACHE_SIZE + 100
    assert len(catalog._unknown) == UNKNOWN_CACHE_SIZE
    clock.now += FALLBACK_INTERVAL
    _unknown(catalog, _garbage(0))  # the oldest was forgotten: asked again
    assert len(fallback.asked) == UNKNOWN_CACHE_SIZE + 101


def test_a_schema_recorded_later_is_found(catalog: SchemaCatalog) -> None:
    fallback, clock = _asking(catalog)
    late = parse({**V1, "name": "Late"})
    record = encode(late, PARCEL)
    _unknown(catalog, record)  # not recorded yet: remembered as unknown
    fallback.history[late.fingerprint] = late  # recorded now, by its writer
    _unknown(catalog, record)  # within its time as unknown: not asked again
    clock.now += UNKNOWN_TTL
    assert decode(catalog, record)[1] == PARCEL  # its time is up: asked, and found


def test_a_schema_the_history_reads_for_another_fingerprint_is_known_at_once(
    catalog: SchemaCatalog,
) -> None:
    fallback, clock = _asking(catalog)
    late = parse({**V1, "name": "Late"})
    record = encode(late, PARCEL)
    _unknown(catalog, record)
    fallback.history[late.fingerprint] = late
    clock.now += FALLBACK_INTERVAL
    _unknown(catalog, _garbage(1))  # this read takes in the late schema too
    assert decode(catalog, record)[1] == PARCEL
    assert len(fallback.asked) == 2


def test_a_fingerprint_not_asked_in_a_storm_is_asked_next_time(catalog: SchemaCatalog) -> None:
    fallback, clock = _asking(catalog)
    late = parse({**V1, "name": "Late"})
    _unknown(catalog, _garbage(1))
    fallback.history[late.fingerprint] = late  # recorded just after that read
    record = encode(late, PARCEL)
    _unknown(catalog, record)  # within the interval: not asked, and not remembered as unknown
    clock.now += FALLBACK_INTERVAL
    assert decode(catalog, record)[1] == PARCEL
