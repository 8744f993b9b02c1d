"""Rebuilding snapshots from the journal, and checking live snapshots against it.

The journal is the source of truth; snapshots are a cache of its fold. Two jobs follow:

- ``verify``: fold every instance's journal and compare, byte for byte, with the latest
  snapshot in the changelog (read in the current schema versions, if written in older ones).
  A difference is a bug or a non-deterministic fold. Instances whose snapshot left the store
  after the retention time are finished and not counted as missing; instances journaled after
  their snapshot was read (a processor is running) are counted as in flight.
- ``rebuild``: with the saga's processors stopped, recreate the snapshots changelog from the
  fold of the journal and write a fresh local store from it, flow-control rows included (the
  commands queued or in flight under a limit and the instances' priorities, rebuilt from the
  journal and the command topics: ``stream_processors.engine.flow.QueueRebuild``). Processors
  elsewhere notice the changelog is a new topic (its topic id differs from the one their store
  recorded) and restore from it in full.

Both read the journal one partition at a time, so memory holds one partition's instances.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from stream_processors.codecs.avro import DecodeError
from stream_processors.core.fold import apply
from stream_processors.core.instance import Instance, decode_snapshot, encode_snapshot
from stream_processors.core.journal import JournalEntry, stateless
from stream_processors.core.model import SagaDefinition
from stream_processors.engine.flow import QueueRebuild
from stream_processors.engine.routing import COMMAND_ID, SCHEDULE, header
from stream_processors.engine.store import FLOW_ROWS, DueRef, SnapshotStore, index_entries
from stream_processors.engine.transaction import planned
from stream_processors.kafka.config import producer_config
from stream_processors.kafka.errors import connect_admin
from stream_processors.kafka.reading import committed_records
from stream_processors.kafka.topics import SagaTopics, TopicMismatch, ensure_topics, topic_id

Progress = Callable[[int], None]


def _read_partition(
    bootstrap: str | None, topic: str, partition: int
) -> Iterator[tuple[bytes | None, bytes | None, int]]:
    """(key, value, offset) of every committed record of one partition, up to its end now."""
    for message in committed_records(topic, bootstrap, partitions=[partition]):
        yield message.key(), message.value(), message.offset() or 0


def _partitions(bootstrap: str | None, topic: str) -> list[int]:
    admin = connect_admin(bootstrap, "sagalog-replay")
    return sorted(admin.list_topics(topic, timeout=15).topics[topic].partitions)


def journal_partitions(topics: SagaTopics, bootstrap: str | None = None) -> int:
    """How many partitions the saga's journal has (0 when it does not exist)."""
    return len(_partitions(bootstrap, topics.journal))


def fold_partition(
    definition: SagaDefinition,
    journal: str,
    partition: int,
    bootstrap: str | None = None,
    progress: Progress | None = None,
    seen: Callable[[JournalEntry], None] | None = None,
) -> dict[str, Instance]:
    """Every instance of one journal partition, folded from its entries.

    ``progress`` is called with the number of entries folded since its last call (every 1000,
    and the rest at the end), so its arguments add up to the partition's entry count;
    ``seen`` with each entry, in order.
    """
    instances: dict[str, Instance] = {}
    count = 0
    for count, (_, value, _) in enumerate(_read_partition(bootstrap, journal, partition), 1):
        entry = JournalEntry.decode(value or b"")
        if seen is not None:
            seen(entry)
        if stateless(entry):  # an operator's refusal: it may name an instance that never was
            continue
        folded = apply(definition, instances.get(entry.instance), entry)
        instances[entry.instance] = folded
        if progress is not None and count % 1000 == 0:
            progress(1000)
    if progress is not None and count % 1000:
        progress(count % 1000)
    return instances


def _same(live: bytes, folded: bytes) -> bool:
    """Byte-identical, or identical once a snapshot written under an earlier schema version
    (of the snapshot or of the saga's state) is read as, and written again in, the current."""
    if live == folded:
        return True
    try:
        return encode_snapshot(decode_snapshot(live)) == folded
    except DecodeError:  # not a snapshot at all: a foreign writer's record
        return False


def _live_seq(live: bytes) -> int | None:
    """The journal position of a live snapshot; None for a record that is not one."""
    try:
        return decode_snapshot(live).seq
    except DecodeError:
        return None


@dataclass
class Difference:
    instance: str
    partition: int
    problem: str  # differs, missing, orphan


@dataclass
class VerifyReport:
    instances: int = 0
    expired: int = 0
    in_flight: int = 0  # journaled after their snapshot was read (a processor is running)
    differences: list[Difference] = field(default_factory=list)


def verify(
    definition: SagaDefinition,
    topics: SagaTopics,
    bootstrap: str | None = None,
    retention_ms: int | None = None,
    progress: Progress | None = None,
    now_ms: int | None = None,
) -> VerifyReport:
    """Compare the fold of the journal with the latest snapshots in the changelog."""
    report = VerifyReport()
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    for partition in _partitions(bootstrap, topics.journal):
        # Snapshots first, then the journal: a processor still running can only have moved the
        # journal further, so an instance whose fold is ahead of its snapshot is in flight.
        live: dict[str, bytes | None] = {}
        snapshots_read_at = int(time.time() * 1000)
        for key, value, _ in _read_partition(bootstrap, topics.snapshots, partition):
            if key is not None and not key.startswith(
                FLOW_ROWS.encode()
            ):  # flow rows: not instances
                live[key.decode()] = value
        folded = fold_partition(definition, topics.journal, partition, bootstrap, progress)
        for instance_id, instance in folded.items():
            report.instances += 1
            snapshot = live.pop(instance_id, None)
            if snapshot is None:
                expired = (
                    instance.status.finished
                    and retention_ms is not None
                    and instance.updated_at_ms + retention_ms <= now
                )
                if expired:
                    report.expired += 1
                elif instance.started_at_ms >= snapshots_read_at:
                    report.in_flight += 1
                else:
                    report.differences.append(Difference(instance_id, partition, "missing"))
            elif not _same(snapshot, encode_snapshot(instance)):
                live_seq = _live_seq(snapshot)
                if live_seq is not None and live_seq < instance.seq:
                    report.in_flight += 1
                else:
                    problem = "differs" if live_seq is not None else "not-a-snapshot"
                    report.differences.append(Difference(instance_id, partition, problem))
        for instance_id, value in live.items():
            if value is not None:
                report.differences.append(Difference(instance_id, partition, "orphan"))
    return report


#: Seconds ``rebuild`` waits for the processors' group to empty: the session timeout and some.
GROUP_EMPTY_WAIT = 20


class ProcessorsRunning(Exception):
    """Rebuilding under running processors would race them: stop them first."""


def active_members(group: str, bootstrap: str | None = None) -> int:
    admin = connect_admin(bootstrap, "sagalog-replay")
    try:
        description = admin.describe_consumer_groups([group])[group].result(timeout=15)
    except KafkaException:
        return 0  # no such group: nothing has ever run
    return len(description.members)


def _recreate(admin: AdminClient, topics: SagaTopics, bootstrap: str | None) -> None:
    name = topics.snapshots
    if name in admin.list_topics(timeout=15).topics:
        admin.delete_topics([name])[name].result(timeout=30)
    deadline = time.monotonic() + 60
    while True:  # a deleted topic takes a moment to go; creating it before then fails
        try:
            ensure_topics(topics, bootstrap)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@dataclass
class RebuildReport:
    instances: int = 0
    snapshots: int = 0
    expired: int = 0
    #: Flow-control rows rebuilt: commands queued or in flight under a limit, priorities.
    flow_rows: int = 0


def commands_left(definition: SagaDefinition, bootstrap: str | None = None) -> dict[str, int]:
    """{command id: when produced} of the saga's commands committed on its command topics: the
    commands that left the processor (a flow-controlled command not among them was queued)."""
    prefix = f"{definition.name}/"
    left: dict[str, int] = {}
    for topic in definition.command_topics():
        for message in committed_records(topic, bootstrap):
            command_id = header(message.headers(), COMMAND_ID)
            if command_id is not None and command_id.startswith(prefix):
                left[command_id] = message.timestamp()[1]
    return left


def rebuild(
    definition: SagaDefinition,
    topics: SagaTopics,
    store: SnapshotStore,
    bootstrap: str | None = None,
    retention_ms: int | None = None,
    progress: Progress | None = None,
    now_ms: int | None = None,
) -> RebuildReport:
    """Recreate the changelog and ``store`` (which must be empty) from the journal."""
    group = f"sagalog.{definition.name}"
    # Processors are static group members: one that stopped stays listed until its session
    # times out (10 s), so give stopped processors that long before calling them running.
    deadline = time.monotonic() + GROUP_EMPTY_WAIT
    while active_members(group, bootstrap):
        if time.monotonic() > deadline:
            raise ProcessorsRunning(f"consumer group {group} has members: stop the processors")
        time.sleep(1)
    journal_count = journal_partitions(topics, bootstrap)
    if topics.partitions != journal_count:
        # The changelog must be co-partitioned with the journal it is the fold of.
        raise TopicMismatch(
            f"{topics.journal} has {journal_count} partitions, not {topics.partitions}: the "
            f"snapshots changelog is rebuilt with the journal's partition count"
        )
    admin = connect_admin(bootstrap, "sagalog-replay")
    _recreate(admin, topics, bootstrap)
    store.set_changelog_id(topic_id(topics.snapshots, bootstrap))
    producer = Producer(producer_config(bootstrap, "sagalog-replay"))
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    report = RebuildReport()
    ends: dict[int, int] = {}

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is None:
            where = message.partition() or 0
            ends[where] = max(ends.get(where, -1), message.offset() or 0)

    throttle = definition.throttle
    left = {} if throttle is None else commands_left(definition, bootstrap)
    for partition in _partitions(bootstrap, topics.journal):
        queues = None if throttle is None else QueueRebuild(definition, throttle)
        seen = None if queues is None else queues.see
        folded = fold_partition(definition, topics.journal, partition, bootstrap, progress, seen)
        written: list[tuple[int, str, bytes | None]] = []
        index: list[DueRef] = []
        for instance_id, instance in folded.items():
            report.instances += 1
            finished, at = instance.status.finished, instance.updated_at_ms
            if finished and retention_ms is not None and at + retention_ms <= now:
                report.expired += 1
                continue
            value = encode_snapshot(instance)
            written.append((partition, instance_id, value))
            due, ended, header = planned(instance)
            index += index_entries(partition, instance_id, due, ended, retention_ms)
            producer.produce(
                topics.snapshots,
                key=instance_id.encode(),
                value=value,
                headers=[(SCHEDULE, header)],
                partition=partition,
                on_delivery=delivered,
            )
            producer.poll(0)
        for key, row in [] if queues is None else queues.rows(folded, left):
            written.append((partition, key, row))
            producer.produce(
                topics.snapshots,
                key=key.encode(),
                value=row,
                partition=partition,
                on_delivery=delivered,
            )
            report.flow_rows += 1
        if producer.flush(60):
            raise RuntimeError(f"snapshots of partition {partition} were not all acknowledged")
        offsets = {partition: ends[partition]} if partition in ends else {}
        store.write(written, offsets, index)
        report.snapshots += len(written)
    return report
