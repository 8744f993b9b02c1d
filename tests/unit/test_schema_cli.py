"""Unit tests for the pure parts of ``sagas schemas`` and of learning schemas while running.

Covers: ``SchemaCatalog.refresh`` (what a followed history received is found before an unknown
fingerprint is given up on, even one remembered as unknown a moment ago); which readers
``register`` checks a new writer against (``readers_of``: the project's current schema and the
latest one Sagalog itself recorded for the topic, never one registered by hand); fingerprints
given as 16 hex digits or as the 10-byte header. ``register``, ``list`` and ``forget`` against a
broker are in ``tests/integration/test_schema_evolution.py``.
"""

from __future__ import annotations

import pytest
import typer

from sagas.cli.schemas import parse_fingerprint, readers_of
from stream_processors.codecs.avro import (
    AvroSchema,
    DecodeError,
    SchemaCatalog,
    decode,
    encode,
    parse,
)
from stream_processors.codecs.records import CATALOG
from stream_processors.engine.schema_history import SchemaHistory

NS = "tests.unit.schemacli"


def schema(name: str, *fields: tuple[str, str]) -> dict[str, object]:
    return {
        "type": "record",
        "name": name,
        "namespace": NS,
        "fields": [{"name": n, "type": t} for n, t in fields],
    }


def test_refresh_finds_a_schema_received_after_its_fingerprint_was_given_up_on() -> None:
    writer = parse(schema("Late", ("id", "string")))
    catalog = SchemaCatalog()
    received: list[AvroSchema] = []
    asked: list[bytes] = []

    def fallback(fp: bytes) -> AvroSchema | None:
        asked.append(fp)
        return None

    def refresh() -> None:
        for received_schema in received:
            catalog.add_writer(received_schema)

    catalog.fallback, catalog.refresh = fallback, refresh
    record = encode(writer, {"id": "x"})
    with pytest.raises(DecodeError, match="unknown-schema"):
        decode(catalog, record)
    assert asked == [writer.fingerprint]  # now remembered as unknown for UNKNOWN_TTL
    received.append(writer)  # the history follower received it (sagas schemas register)
    assert decode(catalog, record) == (writer, {"id": "x"})
    assert asked == [writer.fingerprint]  # found without asking the history again


def test_readers_are_the_projects_current_schema_and_sagalogs_latest_recorded_one() -> None:
    topic = "schemacli.orders"
    history = SchemaHistory("unused:9092", catalog=SchemaCatalog())
    v1 = parse(schema("Placed", ("id", "string")))
    v0 = parse(schema("Placed", ("id", "string"), ("old", "long")))
    foreign = parse(schema("Placed", ("id", "string"), ("extra", "long")))
    history.remember(topic, v0, recorded_at_ms=1, recorded_by="publisher")
    history.remember(topic, v1, recorded_at_ms=2)
    history.remember(topic, foreign, recorded_at_ms=3, foreign=True)
    history.remember("schemacli.other", parse(schema("Other", ("id", "string"))))
    assert [(s, where) for s, where in readers_of(history, topic, f"{NS}.Placed")] == [
        (v1, f"recorded for {topic} by Sagalog ({v1.fingerprint.hex()})")
    ]
    assert readers_of(history, topic, f"{NS}.Other") == []
    assert [e.foreign for e in history.entries(topic)] == [False, False, True]

    # A schema of this project (folder or class) is a reader too, first.
    snapshot = CATALOG.current("sagalog.Snapshot")
    history.remember(topic, parse({**dict(snapshot.definition), "doc": "older"}))
    readers = readers_of(history, topic, "sagalog.Snapshot")
    assert [s for s, _ in readers] == [snapshot]


def test_a_fingerprint_is_16_hex_digits_or_the_header() -> None:
    fp = bytes.fromhex("1f09eecf2e0c5bc5")
    assert parse_fingerprint("1f09eecf2e0c5bc5") == fp
    assert parse_fingerprint("C3011F09EECF2E0C5BC5") == fp
    assert parse_fingerprint("0x1f09eecf2e0c5bc5") == fp
    for bad in ("1f09", "zz09eecf2e0c5bc5", ""):
        with pytest.raises(typer.BadParameter):
            parse_fingerprint(bad)
