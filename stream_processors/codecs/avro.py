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

A fingerprint the catalog does not know is asked of its ``fallback`` (the schema history, which
reads what was recorded since it last read: I/O, milliseconds). Records come from anyone, so
that is bounded: a fingerprint the fallback did not have is remembered as unknown for
``UNKNOWN_TTL`` seconds (the most recent ``UNKNOWN_CACHE_SIZE`` of them), and the fallback is
asked at most once per ``FALLBACK_INTERVAL`` seconds whatever the fingerprint. A storm of
garbage fingerprints then costs a dictionary lookup per record. A schema that enters the
catalog (the history read it, for any fingerprint) is known at once; one recorded later than
its fingerprint was asked for is found after the TTL. The price: while unknown fingerprints
arrive faster than the interval, a record whose writer schema was recorded in the last
``FALLBACK_INTERVAL`` seconds may be dead-lettered as ``unknown-schema`` (redrive it).
A source that can tell what it received without asking anyone installs ``refresh`` (a history
that follows its topic does): it runs before any of that, for every unknown fingerprint, so a
schema recorded while the process runs is found from the next record on, TTL or not.
"""

from __future__ import annotations

import io
import json
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from stream_processors.codecs.reader import RecordReader, Unreadable, compile_reader
from stream_processors.codecs.writer import (
    ObjectWriter,
    RecordWriter,
    Unwritable,
    compile_object_writer,
    compile_writer,
)

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
#: A schema folder's subfolder of earlier versions of its schemas (readable, never written).
PREVIOUS = "previous"
#: The Confluent wire format: one zero byte, then the registry's 4-byte big-endian schema id.
CONFLUENT_MAGIC = 0
CONFLUENT_HEADER_SIZE = 5
#: How many fingerprints the fallback did not have are remembered, and for how long (seconds).
UNKNOWN_CACHE_SIZE = 4096
UNKNOWN_TTL = 15.0
#: The least time (seconds) between two questions to the fallback, whatever the fingerprints.
FALLBACK_INTERVAL = 0.5


class SchemaRegistry(Protocol):
    """A Confluent-compatible schema registry (see ``stream_processors.codecs.schema_registry``)."""

    def register(self, schema: AvroSchema) -> int: ...
    def definition(self, schema_id: int) -> Mapping[str, Any]: ...


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
    #: ``parsed`` with fastavro's "already parsed" marker: what the reader and writer take.
    #: Without the marker fastavro parses the schema again on every call (most of the cost of
    #: encoding or decoding a small record). ``parsed`` stays unmarked for schema comparisons.
    hinted: Any = field(default=None, repr=False, compare=False)
    #: The schema's own writer (``stream_processors.codecs.writer``), or None: fastavro writes.
    writer: RecordWriter | None = field(default=None, repr=False, compare=False)
    #: The same, reading the fields as attributes of an object (a ``Record``), or None.
    object_writer: ObjectWriter | None = field(default=None, repr=False, compare=False)
    #: The schema's own reader of bodies it wrote (``stream_processors.codecs.reader``), or
    #: None: fastavro reads.
    body_reader: RecordReader | None = field(default=None, repr=False, compare=False)

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
    hinted = parse_schema(dict(definition))
    writer = compile_writer(definition)
    by_attributes = compile_object_writer(definition)
    reader = compile_reader(definition)
    name = str(definition_name(parsed))
    return AvroSchema(name, definition, parsed, fp, source, hinted, writer, by_attributes, reader)


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

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self._current: dict[str, AvroSchema] = {}
        self._by_fingerprint: dict[bytes, AvroSchema] = {}
        self.registry = registry
        self._registry_ids: dict[bytes, int] = {}
        self._by_registry_id: dict[int, AvroSchema] = {}
        self._offline_depth = 0  # > 0 inside ``offline()``: no registry calls
        #: Asked for a writer schema whose fingerprint the catalog does not know, before giving
        #: up on the record (a schema history installs one: see ``stream_processors.
        #: schema_history``). It returns the schema, having added it with ``add_writer``, or None.
        self.fallback: Callable[[bytes], AvroSchema | None] | None = None
        #: Called first for a fingerprint the catalog does not know: cheap (no network), it adds
        #: with ``add_writer`` what its source has received since (a followed schema history).
        self.refresh: Callable[[], None] | None = None
        #: Fingerprints the fallback did not have, with when it was asked (oldest first).
        self._unknown: OrderedDict[bytes, float] = OrderedDict()
        self._asked_at = -float("inf")
        self.clock: Callable[[], float] = time.monotonic

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
        self._unknown.pop(schema.fingerprint, None)
        return schema

    def frame_headers(self, full_name: str) -> frozenset[bytes]:
        """The single-object frame headers (marker and fingerprint) of every known version of
        ``full_name``: telling a record's type by its first bytes, without a lookup."""
        return frozenset(
            MAGIC + fingerprint
            for fingerprint, schema in self._by_fingerprint.items()
            if schema.full_name == full_name
        )

    def add_writer(self, schema: AvroSchema) -> None:
        """Know an older (or other) version of a schema well enough to read its records."""
        self._by_fingerprint.setdefault(schema.fingerprint, schema)
        self._unknown.pop(schema.fingerprint, None)

    def load_directory(self, directory: Path) -> list[AvroSchema]:
        """Add every ``*.avsc`` below ``directory`` as a current schema.

        Files in a folder named ``previous`` are earlier versions, kept so that records written
        with them stay readable: they are added as writers only, never as current.
        """
        loaded = []
        for path in sorted(directory.rglob("*.avsc")):
            try:
                definition = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise SchemaError(f"{path}: not valid JSON ({error})") from error
            schema = parse(definition, str(path))
            if PREVIOUS in path.relative_to(directory).parts:
                self.add_writer(schema)
            else:
                loaded.append(self.add(schema))
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

    def register(self, schemas: Iterable[AvroSchema]) -> None:
        """Register ``schemas`` with the registry now, if one is configured (I/O: the shell's).

        A processor registers every schema its saga writes before it decides anything, so
        that encoding inside the pure core finds each id cached (see ``offline``).
        """
        if self.registry is None:
            return
        for schema in schemas:
            if schema.fingerprint not in self._registry_ids:
                schema_id = self.registry.register(schema)
                self._registry_ids[schema.fingerprint] = schema_id
                self._by_registry_id[schema_id] = schema

    def offline(self) -> _Offline:
        """A context in which ``header`` never calls the registry (the pure core runs in it).

        Inside it, a schema whose registry id is not cached yet is written in single-object
        encoding instead: every Sagalog reader accepts both framings, and the pure core stays
        free of network calls whatever the configuration.
        """
        return _Offline(self)

    def header(self, schema: AvroSchema) -> bytes:
        """The frame header for records written with ``schema``.

        Single-object encoding unless a registry is configured; then the Confluent wire format,
        registering the schema the first time this process writes with it (outside ``offline``).
        """
        if self.registry is None:
            return schema.header
        schema_id = self._registry_ids.get(schema.fingerprint)
        if schema_id is None:
            if self._offline_depth:
                return schema.header
            self.register([schema])
            schema_id = self._registry_ids[schema.fingerprint]
        return bytes([CONFLUENT_MAGIC]) + struct.pack(">I", schema_id)

    def writer_of(self, data: bytes | None) -> tuple[AvroSchema, int]:
        """The writer schema of a framed record and where its Avro body starts."""
        if data is None:
            raise DecodeError("no-value", "the record has no value")
        if len(data) >= HEADER_SIZE and data[:2] == MAGIC:
            fp = data[2:HEADER_SIZE]
            writer = self._by_fingerprint.get(fp)
            if writer is None:
                writer = self._ask(fp)
            if writer is None:
                raise DecodeError("unknown-schema", f"no known schema has fingerprint {fp.hex()}")
            return writer, HEADER_SIZE
        if len(data) >= CONFLUENT_HEADER_SIZE and data[0] == CONFLUENT_MAGIC:
            (schema_id,) = struct.unpack(">I", data[1:CONFLUENT_HEADER_SIZE])
            return self._registry_writer(schema_id), CONFLUENT_HEADER_SIZE
        raise DecodeError("not-avro", "the value starts with neither Avro framing")

    def _ask(self, fp: bytes) -> AvroSchema | None:
        """The fallback's writer schema for ``fp``, unless asking now is known to be in vain.

        Not asked: for a fingerprint it did not have less than ``UNKNOWN_TTL`` seconds ago, or
        within ``FALLBACK_INTERVAL`` of the last question (a fingerprint not asked is not
        remembered as unknown: it is asked about next time).
        """
        if self.refresh is not None:
            self.refresh()
            received = self._by_fingerprint.get(fp)
            if received is not None:
                return received
        if self.fallback is None:
            return None
        now = self.clock()
        asked = self._unknown.get(fp)
        if asked is not None and now - asked < UNKNOWN_TTL:
            return None
        if now - self._asked_at < FALLBACK_INTERVAL:
            return None
        self._asked_at = now
        writer = self.fallback(fp)
        if writer is not None:
            self._unknown.pop(fp, None)
            return writer
        self._unknown[fp] = now
        self._unknown.move_to_end(fp)
        while len(self._unknown) > UNKNOWN_CACHE_SIZE:
            self._unknown.popitem(last=False)
        return None

    def _registry_writer(self, schema_id: int) -> AvroSchema:
        known = self._by_registry_id.get(schema_id)
        if known is not None:
            return known
        if self.registry is None:
            raise DecodeError("unknown-schema", f"registry schema id {schema_id}, no registry set")
        try:
            definition = self.registry.definition(schema_id)
        except LookupError as error:
            raise DecodeError("unknown-schema", f"registry has no schema {schema_id}") from error
        writer = parse(definition, f"registry id {schema_id}")
        self.add_writer(writer)
        self._by_registry_id[schema_id] = writer
        return writer

    def encode(self, schema: AvroSchema, datum: Mapping[str, Any]) -> bytes:
        """Frame and encode ``datum`` with ``schema`` (see ``header``)."""
        return _encode(self.header(schema), schema, datum)

    def resolution(self, writer: AvroSchema, reader: AvroSchema) -> Any:
        """The reader schema fastavro needs for (writer, reader); None when they are the same."""
        if writer.fingerprint == reader.fingerprint:
            return None
        return reader.hinted


class _Offline:
    """``SchemaCatalog.offline()``: a plain class, cheap enough to enter once per decision."""

    __slots__ = ("_catalog",)

    def __init__(self, catalog: SchemaCatalog) -> None:
        self._catalog = catalog

    def __enter__(self) -> None:
        self._catalog._offline_depth += 1

    def __exit__(self, *exc: object) -> None:
        self._catalog._offline_depth -= 1


def _encode(header: bytes, schema: AvroSchema, datum: Mapping[str, Any]) -> bytes:
    if schema.writer is not None:
        try:
            return schema.writer(header, datum)
        except (Unwritable, UnicodeError):
            pass  # a datum the compiled writer leaves to fastavro: its bytes or its error
    buffer = io.BytesIO()
    buffer.write(header)
    fastavro.schemaless_writer(buffer, schema.hinted, datum)
    return buffer.getvalue()


def encode(schema: AvroSchema, datum: Mapping[str, Any]) -> bytes:
    """Single-object encode ``datum`` with ``schema`` (no registry involved)."""
    return _encode(schema.header, schema, datum)


def decode(
    catalog: SchemaCatalog, data: bytes | None, *, as_written: bool = False
) -> tuple[AvroSchema, dict[str, Any]]:
    """Decode a framed record into (the reader schema it was resolved to, its fields).

    ``as_written`` skips resolution: the fields are those of the writer schema, which is
    returned instead (what an upcaster needs: see ``stream_processors.codecs.records``).
    """
    writer, start = catalog.writer_of(data)
    assert data is not None
    reader = writer if as_written else catalog.reader_for(writer)
    resolution = catalog.resolution(writer, reader)
    if resolution is None and writer.body_reader is not None and type(data) is bytes:
        try:
            fields, end = writer.body_reader(data, start)
            if end == len(data):
                return reader, fields
        except Unreadable:
            pass  # fastavro's to read, or to say what is wrong (trailing bytes too)
    body = io.BytesIO(data)
    body.seek(start)
    try:
        datum = fastavro.schemaless_reader(body, writer.hinted, resolution)
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
