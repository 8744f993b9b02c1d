"""Reading one instance's history from the journal, without scanning the journal.

An instance's journal entries are in one partition of the journal topic: the partition its key
hashes to (Kafka's murmur2 partitioner, which every Sagalog producer uses), the same number as
its inbox and snapshot partitions. The processor stamps each journal record with the entry's own
time, so Kafka's time index finds where an instance's history starts from the ``started_at_ms``
in its snapshot; reading stops once the snapshot's ``seq`` entries are in. Without a snapshot at
hand the partition is read from its start: correct, just slower.

``fold_until`` turns a history into the state as of a journal position or a point in time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from stream_processors.core.fold import apply
from stream_processors.core.instance import Instance, decode_snapshot
from stream_processors.core.journal import JournalEntry, stateless
from stream_processors.core.model import SagaDefinition
from stream_processors.core.partitioner import partition_for
from stream_processors.engine.store import SnapshotStore
from stream_processors.kafka.config import consumer_config
from stream_processors.kafka.errors import metadata as kafka_metadata
from stream_processors.kafka.reading import watermarks


@dataclass
class ReadStats:
    """How much of the journal a lookup read: the measure of "did not scan the journal"."""

    records: int = 0


@dataclass(frozen=True)
class Located:
    """A journal entry and where it is: its offset in the journal partition."""

    offset: int
    entry: JournalEntry


def read_history(
    journal_topic: str,
    instance_id: str,
    bootstrap: str | None = None,
    *,
    since_ms: int | None = None,
    expected: int | None = None,
    timeout: float = 30,
    stats: ReadStats | None = None,
) -> list[Located]:
    """The journal entries of ``instance_id``, in order.

    ``since_ms`` (the instance's ``started_at_ms``) lets Kafka's time index skip everything
    before the instance began; ``expected`` (its snapshot's ``seq``) stops reading once that
    many entries are in. Without them the whole partition is read up to its current end.
    """
    consumer = Consumer(consumer_config(bootstrap, "sagalog-history", "sagalog-history"))
    try:
        metadata = kafka_metadata(consumer, bootstrap, journal_topic).topics[journal_topic]
        partition = partition_for(instance_id.encode(), len(metadata.partitions))
        tp = TopicPartition(journal_topic, partition)
        low, high = watermarks(consumer, tp)
        start = low
        if since_ms is not None:
            found = consumer.offsets_for_times(
                [TopicPartition(journal_topic, partition, since_ms)], timeout=15
            )[0]
            start = found.offset if found.offset >= 0 else high
        counted = stats if stats is not None else ReadStats()
        return list(_read(consumer, tp, instance_id, start, high, expected, timeout, counted))
    finally:
        consumer.close()


def _read(
    consumer: Consumer,
    tp: TopicPartition,
    instance_id: str,
    start: int,
    high: int,
    expected: int | None,
    timeout: float,
    stats: ReadStats,
) -> Iterator[Located]:
    if start >= high:
        return
    consumer.assign([TopicPartition(tp.topic, tp.partition, start)])
    key = instance_id.encode()
    found = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in consumer.consume(num_messages=500, timeout=0.2):
            stats.records += 1
            if message.error() is not None or message.key() != key:
                continue
            entry = JournalEntry.decode(message.value() or b"")
            found += 0 if stateless(entry) else 1  # a refusal is no position of the history
            yield Located(message.offset() or 0, entry)
            if expected is not None and found >= expected:
                return
        if (consumer.position([tp])[0].offset or 0) >= high:
            return
    raise TimeoutError(f"reading {tp.topic}[{tp.partition}] took over {timeout:.0f} s")


def fold_until(
    definition: SagaDefinition,
    history: list[Located],
    *,
    position: int | None = None,
    at_ms: int | None = None,
) -> Instance | None:
    """The instance after the entries up to ``position`` (a seq) and/or up to ``at_ms``."""
    instance: Instance | None = None
    for located in history:
        entry = located.entry
        if position is not None and entry.seq > position:
            break
        if at_ms is not None and entry.at_ms > at_ms:
            break
        if not stateless(entry):
            instance = apply(definition, instance, entry)
    return instance


def local_snapshot(state_dir: Path, instance_id: str, partitions: int) -> Instance | None:
    """The instance's snapshot from a processor's store on this machine, if one holds it.

    Stores are opened read-only, so this works while the processor runs (it sees what the
    processor had written when it was opened).
    """
    partition = partition_for(instance_id.encode(), partitions)
    for path in sorted(state_dir.glob("slot-*/rocksdb")):
        try:
            store = SnapshotStore.read_only(path)
        except Exception:
            continue
        try:
            value = store.get(partition, instance_id)
        finally:
            store.close()
        if value is not None:
            return decode_snapshot(value)
    return None


def instance_history(
    journal_topic: str,
    instance_id: str,
    state_dir: Path,
    bootstrap: str | None = None,
    stats: ReadStats | None = None,
) -> tuple[list[Located], bool]:
    """The instance's history, and whether a local snapshot let it skip most of the journal."""
    consumer = Consumer(consumer_config(bootstrap, "sagalog-history", "sagalog-history"))
    try:
        topic = kafka_metadata(consumer, bootstrap, journal_topic).topics[journal_topic]
        partitions = len(topic.partitions)
    finally:
        consumer.close()
    snapshot = local_snapshot(state_dir, instance_id, partitions)
    if snapshot is None:
        return read_history(journal_topic, instance_id, bootstrap, stats=stats), False
    # A finished instance's history is complete at its snapshot's seq; a running one may have
    # grown since the store was written, so read it to the end of the partition.
    expected = snapshot.seq if snapshot.status.finished else None
    located = read_history(
        journal_topic,
        instance_id,
        bootstrap,
        since_ms=snapshot.started_at_ms,
        expected=expected,
        stats=stats,
    )
    return located, True
