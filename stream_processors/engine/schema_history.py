"""The schema history: every writer schema ever used on each topic, kept in Kafka.

A record names its writer schema only by fingerprint, so a reader can decode it only if it knows
that schema. The ``schemas/`` folders hold only the *current* version of each schema: once a
``.avsc`` file changes, what was written with the old version would become unreadable. The
history fixes that. It is the compacted topic ``_sagalog.schemas`` (one partition), holding one
record per (topic, writer schema)::

    key    "<topic>/<fingerprint hex>"
    value  {"topic", "full_name", "fingerprint", "definition", "recorded_at_ms"}   (JSON)
           optional: "recorded_by" (who: free text), "foreign": true (registered by hand)

Who writes what records it before writing it: publishers their events' schemas (best effort),
workers their replies' schemas (best effort), processors, when they start, the journal, snapshot,
state and command schemas. A producer that is not Sagalog's (a Java service) has its schema
recorded by hand: ``sagas schemas register`` (``sagas/cli/schemas.py``) writes the same record,
marked ``foreign``. ``load`` reads the whole history and adds every schema to the process
catalog as a known writer, so old records are resolved onto the current schemas; a catalog
served by ``serve_unknown`` also asks the history again when it meets a fingerprint it does not
know (a schema recorded after it loaded). Once it has met one the history lacked, it *follows*
the history topic (a consumer whose fetches run in the client's background), and the catalog
takes in what it received before it gives up on an unknown fingerprint (``SchemaCatalog.refresh``:
no network): a schema registered while the process runs is read from the next record on, even
one whose fingerprint the catalog had just given up on.

When a processor starts, ``prepare_saga_schemas`` checks every schema the saga reads against the
writer schemas recorded for the topic it reads it from (``stream_processors.codecs.compatibility``)
and
refuses to start, with ``IncompatibleSchemaError`` naming the topic, the schema and the field,
when one cannot be read. Deleting a key of the history (a tombstone) forgets that writer schema:
the way to accept a breaking change once no record written with the old schema is left.

This module owns the history topic and the start check; the rules live in ``compatibility``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from stream_processors.codecs.avro import AvroSchema, SchemaCatalog, SchemaError, parse
from stream_processors.codecs.compatibility import incompatibilities
from stream_processors.codecs.derive import plain
from stream_processors.codecs.records import CATALOG, Event, registered_upcaster
from stream_processors.core.journal import JournalEntry
from stream_processors.core.model import SagaDefinition
from stream_processors.kafka.config import bootstrap_servers, consumer_config, producer_config
from stream_processors.kafka.reading import watermarks
from stream_processors.kafka.topics import SagaTopics, ensure_plain_topics

log = logging.getLogger(__name__)

SCHEMAS_TOPIC = "_sagalog.schemas"
SCHEMAS_TOPIC_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}

#: (bootstrap, history topic, topic, fingerprint) recorded by this process: recorded once.
_RECORDED: set[tuple[str, str, str, bytes]] = set()


class SchemaHistoryError(Exception):
    """The history could not be read or written."""


class IncompatibleSchemaError(SchemaError):
    """Current schemas that cannot read records already written; ``problems`` lists each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        listed = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            "refusing to start: a current schema cannot read records written with an older "
            "version of it. Give each new field a default, or, once no record written with the "
            f"old version is left, forget it (SchemaHistory.forget, a tombstone in {SCHEMAS_TOPIC})"
            f":\n{listed}"
        )


@dataclass(frozen=True)
class RecordedSchema:
    """One entry of the history: a writer schema of a topic, with who recorded it and when."""

    topic: str
    schema: AvroSchema
    recorded_at_ms: int | None = None
    recorded_by: str | None = None
    #: Registered by hand for a producer that is not Sagalog's (``sagas schemas register``).
    foreign: bool = False


class SchemaHistory:
    """The writer schemas recorded per topic, read from and written to the history topic.

    Cheap to make: nothing touches Kafka until ``load`` or ``record``. ``catalog`` (by default
    the process catalog) learns every schema the history holds.
    """

    def __init__(
        self,
        bootstrap: str | None = None,
        *,
        topic: str = SCHEMAS_TOPIC,
        catalog: SchemaCatalog = CATALOG,
        timeout: float = 30,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.catalog = catalog
        self.timeout = timeout
        self._by_topic: dict[str, dict[bytes, RecordedSchema]] = {}
        self._by_fingerprint: dict[bytes, AvroSchema] = {}
        self._next_offset = 0
        self._topic_ready = False
        self._producer: Producer | None = None
        self._tried: set[tuple[str, bytes]] = set()
        #: Follows the history topic once a fingerprint was not found (see ``refresh``).
        self._follower: Consumer | None = None

    # -- reading ----------------------------------------------------------------------------

    def load(self) -> int:
        """Read the history up to its current end (from where the last load stopped).

        Every schema goes into the catalog as a known writer. Returns the records read.
        """
        self._ensure_topic()
        consumer = Consumer(
            consumer_config(
                self.bootstrap,
                "sagalog-schema-history",
                None,
                # Never commits: the group id only satisfies the client.
                **{"group.id": "sagalog.schema-history", "fetch.wait.max.ms": 20},
            )
        )
        try:
            tp = TopicPartition(self.topic, 0)
            low, high = watermarks(consumer, tp, self.timeout)
            start = max(low, self._next_offset)
            if start >= high:
                return 0
            consumer.assign([TopicPartition(self.topic, 0, start)])
            deadline = time.monotonic() + self.timeout
            read = 0
            while True:
                for message in consumer.consume(num_messages=1000, timeout=0.1):
                    if message.error() is not None:
                        log.warning("reading %s: %s", self.topic, message.error())
                        continue
                    self._take(message)
                    read += 1
                # Under read_committed the last offsets may be markers, never delivered.
                position = consumer.position([tp])[0].offset
                if position >= high:
                    break
                if time.monotonic() > deadline:
                    raise SchemaHistoryError(
                        f"{self.topic}: read to offset {position} of {high} in {self.timeout} s"
                    )
            self._next_offset = max(self._next_offset, high)
            return read
        finally:
            consumer.close()

    def _take(self, message: Message) -> None:
        key = (message.key() or b"").decode(errors="replace")
        value = message.value()
        if value is None:  # a tombstone: that writer is forgotten (the catalog keeps it)
            topic, _, fp_hex = key.rpartition("/")
            with contextlib.suppress(ValueError):  # not hex: not a key this module wrote
                self._by_topic.get(topic, {}).pop(bytes.fromhex(fp_hex), None)
            return
        try:
            entry = json.loads(value)
            topic = str(entry["topic"])
            schema = parse(entry["definition"], f"{self.topic} {key}")
        except (ValueError, KeyError, TypeError, SchemaError) as error:
            log.warning(
                "%s: skipping unreadable entry %r at offset %s: %s",
                self.topic,
                key,
                message.offset(),
                error,
            )
            return
        if entry.get("fingerprint") != schema.fingerprint.hex():
            log.warning(
                "%s: entry %r says fingerprint %s, its definition has %s; using the latter",
                self.topic,
                key,
                entry.get("fingerprint"),
                schema.fingerprint.hex(),
            )
        at, by = entry.get("recorded_at_ms"), entry.get("recorded_by")
        self.remember(
            topic,
            schema,
            recorded_at_ms=at if isinstance(at, int) else None,
            recorded_by=by if isinstance(by, str) else None,
            foreign=entry.get("foreign") is True,
        )

    def remember(
        self,
        topic: str,
        schema: AvroSchema,
        *,
        recorded_at_ms: int | None = None,
        recorded_by: str | None = None,
        foreign: bool = False,
    ) -> None:
        """Know that ``schema`` wrote to ``topic`` (what ``load`` does for each record read)."""
        entry = RecordedSchema(topic, schema, recorded_at_ms, recorded_by, foreign)
        self._by_topic.setdefault(topic, {}).setdefault(schema.fingerprint, entry)
        self._by_fingerprint.setdefault(schema.fingerprint, schema)
        self.catalog.add_writer(schema)

    def recorded(self, topic: str) -> list[AvroSchema]:
        """The writer schemas known to have been used on ``topic``."""
        return [entry.schema for entry in self.entries(topic)]

    def entries(self, topic: str) -> list[RecordedSchema]:
        """The history's entries for ``topic``, in the order they were recorded."""
        return list(self._by_topic.get(topic, {}).values())

    def serve_unknown(self) -> None:
        """Let the catalog ask the history for fingerprints it does not know.

        An unknown fingerprint makes the history read what was recorded since it last read.
        The catalog decides how often it asks (``stream_processors.codecs.avro``: a bounded cache of
        fingerprints the history did not have, and at most one question per interval), so a
        storm of unknown fingerprints does not become a storm of history reads. Before it
        decides not to ask, it takes in what the follower received (``refresh``).
        """
        self.catalog.fallback = self.lookup
        self.catalog.refresh = self.refresh

    def lookup(self, fp: bytes) -> AvroSchema | None:
        """The writer schema with fingerprint ``fp``, reading the history's tail if needed.

        When the history does not have it either, start following the history topic: a
        schema recorded for it later (``sagas schemas register``) is then taken in by
        ``refresh`` as soon as it arrives, whatever the catalog remembers as unknown.
        """
        known = self._by_fingerprint.get(fp)
        if known is not None:
            return known
        try:
            self.load()
        except Exception as error:  # the record goes to a dead-letter topic; say why here
            log.warning("cannot read %s for fingerprint %s: %s", self.topic, fp.hex(), error)
            return None
        found = self._by_fingerprint.get(fp)
        if found is None:
            self._follow()
        return found

    def _follow(self) -> None:
        if self._follower is not None:
            return
        try:
            follower = Consumer(
                consumer_config(
                    self.bootstrap,
                    "sagalog-schema-history",
                    None,
                    **{"group.id": "sagalog.schema-history", "fetch.wait.max.ms": 100},
                )
            )
            follower.assign([TopicPartition(self.topic, 0, self._next_offset)])
        except Exception as error:  # reading on demand (``lookup``) still works
            log.warning("cannot follow %s: %s", self.topic, error)
            return
        self._follower = follower

    def refresh(self) -> None:
        """Take in the history records the follower has received: no network, no waiting.

        Called by the catalog before it gives up on a fingerprint it does not know; a no-op
        until ``lookup`` started following (or after ``close``).
        """
        if self._follower is None:
            return
        for message in self._follower.consume(num_messages=100, timeout=0):
            offset = message.offset()
            if message.error() is not None or offset is None or offset < self._next_offset:
                continue
            self._take(message)
            self._next_offset = offset + 1

    def close(self) -> None:
        """Stop following the history; the catalog stops asking this history."""
        if self.catalog.fallback == self.lookup:
            self.catalog.fallback = None
        if self.catalog.refresh == self.refresh:
            self.catalog.refresh = None
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.close()

    # -- checking ---------------------------------------------------------------------------

    def check(self, topic: str, readers: Iterable[AvroSchema]) -> list[str]:
        """Why ``readers`` cannot read what was written to ``topic``: one message per problem.

        Each reader is checked against every recorded writer schema of the same full name,
        except writers that a registered upcaster reads (it turns their records into the
        reader's shape; a record it fails on is dead-lettered as ``upcast-failed``).
        """
        problems = []
        recorded = self.recorded(topic)
        for reader in readers:
            for writer in recorded:
                if writer.full_name != reader.full_name or writer.fingerprint == reader.fingerprint:
                    continue
                if registered_upcaster(reader.full_name, writer.fingerprint) is not None:
                    continue
                where = (
                    f"topic {topic}, schema {reader.full_name} "
                    f"(recorded writer {writer.fingerprint.hex()})"
                )
                problems += [f"{where}: {p}" for p in incompatibilities(writer, reader)]
        return problems

    # -- writing ----------------------------------------------------------------------------

    def record(
        self,
        topic: str,
        schema: AvroSchema,
        *,
        recorded_by: str | None = None,
        foreign: bool = False,
    ) -> bool:
        """Record that ``schema`` writes to ``topic``; once per process. True if it produced.

        ``recorded_by`` says who (shown by ``sagas schemas list``); ``foreign`` marks a schema
        registered by hand for a producer that is not Sagalog's. Raises ``SchemaHistoryError``
        when the broker does not acknowledge the record.
        """
        mark = (bootstrap_servers(self.bootstrap), self.topic, topic, schema.fingerprint)
        if mark in _RECORDED or schema.fingerprint in self._by_topic.get(topic, {}):
            self.remember(topic, schema)
            return False
        value: dict[str, Any] = {
            "topic": topic,
            "full_name": schema.full_name,
            "fingerprint": schema.fingerprint.hex(),
            "definition": plain(schema.definition),
            "recorded_at_ms": int(time.time() * 1000),
        }
        if recorded_by is not None:
            value["recorded_by"] = recorded_by
        if foreign:
            value["foreign"] = True
        self._produce(topic, schema.fingerprint, json.dumps(value, sort_keys=True).encode())
        _RECORDED.add(mark)
        self.remember(
            topic,
            schema,
            recorded_at_ms=value["recorded_at_ms"],
            recorded_by=recorded_by,
            foreign=foreign,
        )
        return True

    def forget(self, topic: str, fingerprint: bytes) -> None:
        """Delete a recorded writer schema of ``topic`` (a tombstone): it no longer takes part in
        the start check. For accepting a breaking change once its old records are gone."""
        self._produce(topic, fingerprint, None)
        self._by_topic.get(topic, {}).pop(fingerprint, None)
        _RECORDED.difference_update({m for m in _RECORDED if m[2:] == (topic, fingerprint)})

    def _produce(self, topic: str, fingerprint: bytes, value: bytes | None) -> None:
        """Write one history record and wait for the broker's acknowledgement."""
        self._ensure_topic()
        if self._producer is None:
            self._producer = Producer(producer_config(self.bootstrap, "sagalog-schema-history"))
        failures: list[KafkaError] = []

        def delivered(error: KafkaError | None, _: Message) -> None:
            if error is not None:
                failures.append(error)

        key = f"{topic}/{fingerprint.hex()}"
        self._producer.produce(self.topic, key=key.encode(), value=value, on_delivery=delivered)
        remaining = self._producer.flush(self.timeout)
        if remaining or failures:
            why = failures[0] if failures else f"not acknowledged within {self.timeout} s"
            raise SchemaHistoryError(f"cannot write {key} to {self.topic}: {why}")

    def try_record(self, topic: str, schema: AvroSchema) -> None:
        """``record``, best effort and tried once per (topic, schema): a failure is a warning.

        For publishers and workers, whose records stay readable to anyone who knows the schema
        (its current version, or a history that got it another way).
        """
        attempt = (topic, schema.fingerprint)
        if attempt in self._tried:
            return
        self._tried.add(attempt)
        try:
            self.record(topic, schema)
        except Exception as error:
            log.warning(
                "could not record schema %s for %s in %s (going on without): %s",
                schema.full_name,
                topic,
                self.topic,
                error,
            )

    def _ensure_topic(self) -> None:
        if not self._topic_ready:
            ensure_plain_topics([self.topic], self.bootstrap, 1, SCHEMAS_TOPIC_CONFIG)
            self._topic_ready = True


def refuse_incompatible(
    history: SchemaHistory, readers_by_topic: Mapping[str, Iterable[AvroSchema]]
) -> None:
    """Raise ``IncompatibleSchemaError`` if a reader cannot read a writer recorded for its topic."""
    problems = [
        problem
        for topic, readers in readers_by_topic.items()
        for problem in history.check(topic, readers)
    ]
    if problems:
        raise IncompatibleSchemaError(problems)


# -- a saga's schemas ---------------------------------------------------------------------------


def _add(table: dict[str, dict[bytes, AvroSchema]], topic: str, schema: AvroSchema) -> None:
    table.setdefault(topic, {})[schema.fingerprint] = schema


def saga_reads(definition: SagaDefinition, topics: SagaTopics) -> dict[str, list[AvroSchema]]:
    """The schemas a saga's processor reads, by the topic it reads them from.

    The inbox: every input. Each source topic: the events of that topic the saga takes. The
    snapshots topic: ``sagalog.Snapshot`` and the saga's state. The journal: its entries (read
    when the store is rebuilt and by the history tools).
    """
    reads: dict[str, dict[bytes, AvroSchema]] = {}
    for input_type in sorted(definition.inputs, key=lambda t: t.__avro__.full_name):
        _add(reads, topics.inbox, input_type.__avro__)
        source = input_type.__topic__ if issubclass(input_type, Event) else None
        if source is not None and source in topics.sources:
            _add(reads, source, input_type.__avro__)
    _add(reads, topics.snapshots, CATALOG.current("sagalog.Snapshot"))
    _add(reads, topics.snapshots, definition.state.__avro__)
    _add(reads, topics.journal, JournalEntry.__avro__)
    return {topic: list(schemas.values()) for topic, schemas in reads.items()}


def saga_writes(definition: SagaDefinition, topics: SagaTopics) -> dict[str, list[AvroSchema]]:
    """The schemas a saga's processor writes, by topic: journal entries; snapshots and the
    saga's state (inside them); each command on its topic."""
    writes: dict[str, dict[bytes, AvroSchema]] = {}
    _add(writes, topics.journal, JournalEntry.__avro__)
    _add(writes, topics.snapshots, CATALOG.current("sagalog.Snapshot"))
    _add(writes, topics.snapshots, definition.state.__avro__)
    for spec in definition.specs():
        if spec.command is not None and spec.topic is not None:
            _add(writes, spec.topic, spec.command.__avro__)
    return {topic: list(schemas.values()) for topic, schemas in writes.items()}


def check_saga_schemas(
    history: SchemaHistory, definition: SagaDefinition, topics: SagaTopics
) -> None:
    """Refuse (``IncompatibleSchemaError``) a saga whose schemas cannot read what was written."""
    refuse_incompatible(history, saga_reads(definition, topics))


def prepare_saga_schemas(
    definition: SagaDefinition, topics: SagaTopics, bootstrap: str | None = None
) -> SchemaHistory:
    """A processor's start: load the history (old records become readable), refuse to start on
    an incompatible schema change, then record the schemas the saga writes."""
    history = SchemaHistory(bootstrap)
    read = history.load()
    history.serve_unknown()
    log.info("schema history: read %s records of %s", read, history.topic)
    check_saga_schemas(history, definition, topics)
    for topic, schemas in saga_writes(definition, topics).items():
        # With a schema registry: registered now, so that deciding never has to ask it.
        CATALOG.register(schemas)
        for schema in schemas:
            history.record(topic, schema)
    return history


__all__ = [
    "SCHEMAS_TOPIC",
    "IncompatibleSchemaError",
    "RecordedSchema",
    "SchemaHistory",
    "SchemaHistoryError",
    "check_saga_schemas",
    "prepare_saga_schemas",
    "refuse_incompatible",
    "saga_reads",
    "saga_writes",
]
