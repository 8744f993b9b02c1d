"""Avro encoding for every record Sagalog reads or writes: schemas, fingerprints and framing.

A record on the wire is Avro *single-object encoding*: the two marker bytes ``C3 01``, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema's parsing canonical form, then the
Avro binary body. The fingerprint is what a reader needs to find the writer schema, so a record
written under an old version of a schema stays readable after the schema changes: the reader
looks the writer schema up by fingerprint and lets Avro schema resolution map it onto the
current (reader) schema of the same name.

This module is pure: no Kafka. ``SchemaCatalog`` holds every known schema (current and older
writer versions); ``encode``/``decode`` turn dictionaries into framed bytes and back, with
every schema parsed once, when it enters the catalog.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8


class DecodeError(Exception):
    """A record that cannot be read. ``reason`` is short and stable: it goes into DLQ headers."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SchemaError(Exception):
    """A schema file or a schema change that Sagalog refuses."""


@dataclass(frozen=True)
class AvroSchema:
    """One parsed schema version, with its fingerprint and where it came from."""

    full_name: str
    definition: Mapping[str, Any] = field(repr=False)
    parsed: Any = field(repr=False, compare=False)
    fingerprint: bytes
    source: str = ""

    @property
    def header(self) -> bytes:
        return MAGIC + self.fingerprint

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f["name"] for f in self.definition["fields"])


def parse(definition: Mapping[str, Any], source: str = "") -> AvroSchema:
    """Parse a record schema once and compute its single-object fingerprint."""
    if definition.get("type") != "record":
        raise SchemaError(f"{source or 'schema'}: only record schemas are supported at the top")
    try:
        parsed = parse_schema(dict(definition), _write_hint=False)
    except Exception as error:
        raise SchemaError(f"{source or 'schema'}: {error}") from error
    canonical = to_parsing_canonical_form(parsed)
    fp_hex = fingerprint(canonical, "CRC-64-AVRO")
    # The spec's fingerprint bytes are little-endian, and fastavro's hex already lists the bytes
    # in that order (as Java's SchemaNormalization.parsingFingerprint does): use them as they are.
    fp = bytes.fromhex(fp_hex)
    return AvroSchema(str(definition_name(parsed)), definition, parsed, fp, source)


def definition_name(parsed: Any) -> str:
    """The full name fastavro gives a parsed record schema."""
    return str(parsed["name"])


class SchemaCatalog:
    """Every schema this process knows: the current version per name, and all writer versions.

    ``current`` answers "what shape do I read and write now"; ``by_fingerprint`` answers "what
    shape was this record written with". Older versions enter through ``add_writer`` (from a
    schema history, a registry, or a directory of old versions) and are never read with: they
    are only resolved onto the current version of their name.
    """

    def __init__(self) -> None:
        self._current: dict[str, AvroSchema] = {}
        self._by_fingerprint: dict[bytes, AvroSchema] = {}

    def add(self, schema: AvroSchema) -> AvroSchema:
        """Make ``schema`` the current version of its name (and a known writer)."""
        existing = self._current.get(schema.full_name)
        if existing is not None and existing.fingerprint != schema.fingerprint:
            raise SchemaError(
                f"two different schemas named {schema.full_name}: "
                f"{existing.source or '?'} and {schema.source or '?'}"
            )
        self._current[schema.full_name] = schema
        self._by_fingerprint[schema.fingerprint] = schema
        return schema

    def add_writer(self, schema: AvroSchema) -> None:
        """Know an older (or other) version of a schema well enough to read its records."""
        self._by_fingerprint.setdefault(schema.fingerprint, schema)

    def load_directory(self, directory: Path) -> list[AvroSchema]:
        """Add every ``*.avsc`` below ``directory`` as a current schema."""
        loaded = []
        for path in sorted(directory.rglob("*.avsc")):
            try:
                definition = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise SchemaError(f"{path}: not valid JSON ({error})") from error
            loaded.append(self.add(parse(definition, str(path))))
        return loaded

    def current(self, full_name: str) -> AvroSchema:
        try:
            return self._current[full_name]
        except KeyError:
            raise SchemaError(f"no schema named {full_name} is known") from None

    def has(self, full_name: str) -> bool:
        return full_name in self._current

    def writer(self, fp: bytes) -> AvroSchema | None:
        return self._by_fingerprint.get(fp)

    def schemas(self) -> Iterable[AvroSchema]:
        return self._current.values()

    def reader_for(self, writer: AvroSchema) -> AvroSchema:
        """The current schema a record written with ``writer`` is read as."""
        return self._current.get(writer.full_name, writer)

    def resolution(self, writer: AvroSchema, reader: AvroSchema) -> Any:
        """The reader schema fastavro needs for (writer, reader); None when they are the same."""
        if writer.fingerprint == reader.fingerprint:
            return None
        return reader.parsed


def encode(schema: AvroSchema, datum: Mapping[str, Any]) -> bytes:
    """Single-object encode ``datum`` with ``schema``."""
    buffer = io.BytesIO()
    buffer.write(schema.header)
    fastavro.schemaless_writer(buffer, schema.parsed, datum)
    return buffer.getvalue()


def peek_fingerprint(data: bytes | None) -> bytes:
    """The writer fingerprint of a framed record, or DecodeError when it is not framed Avro."""
    if data is None:
        raise DecodeError("no-value", "the record has no value")
    if len(data) < HEADER_SIZE or data[:2] != MAGIC:
        raise DecodeError("not-avro", "the value does not start with the Avro single-object marker")
    return data[2:HEADER_SIZE]


def decode(catalog: SchemaCatalog, data: bytes | None) -> tuple[AvroSchema, dict[str, Any]]:
    """Decode a framed record into (the reader schema it was resolved to, its fields)."""
    fp = peek_fingerprint(data)
    assert data is not None
    writer = catalog.writer(fp)
    if writer is None:
        raise DecodeError("unknown-schema", f"no known schema has fingerprint {fp.hex()}")
    reader = catalog.reader_for(writer)
    body = io.BytesIO(data)
    body.seek(HEADER_SIZE)
    try:
        datum = fastavro.schemaless_reader(body, writer.parsed, catalog.resolution(writer, reader))
    except Exception as error:
        # fastavro raises SchemaResolutionError for incompatible pairs and assorted errors
        # (EOFError, UnicodeDecodeError, IndexError) for corrupt bodies.
        name = type(error).__name__
        reason = "incompatible-schema" if "Resolution" in name else "corrupt-avro"
        raise DecodeError(reason, f"{writer.full_name}: {name}: {error}") from error
    if body.tell() != len(data):
        raise DecodeError("corrupt-avro", f"{writer.full_name}: trailing bytes after the record")
    if not isinstance(datum, dict):
        raise DecodeError("corrupt-avro", f"{writer.full_name}: not a record")
    return reader, datum
