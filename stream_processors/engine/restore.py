"""Restoring the local snapshot store from the snapshots changelog.

On assignment of a partition, the store reads the changelog from the offset after the one it is
current to (or from the start, when it has nothing for the partition) up to the high watermark
seen when restoring began. Records are read ``read_committed``, so snapshots of aborted
transactions never enter the store; tombstones delete. "Restored" means the consumer's position
reached that high watermark: under transactions the last offset of a partition is often a
commit marker, not a record, so waiting to *read* offset high-1 could wait forever.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    Message,
    TopicPartition,
)

from stream_processors.codecs.avro import DecodeError
from stream_processors.core.instance import snapshot_schedule
from stream_processors.engine.store import DueRef, SnapshotStore, index_entries
from stream_processors.kafka.reading import watermarks

log = logging.getLogger(__name__)

BATCH = 5_000


@dataclass(frozen=True)
class RestoreResult:
    partition: int
    records: int
    started_at_offset: int
    high_watermark: int
    seconds: float


def _restored(
    message: Message,
) -> tuple[str, bytes | None, tuple[list[int], int | None] | None] | None:
    """(instance id, snapshot or None for a tombstone, its timers' schedule) of a changelog
    record; None for a record no processor wrote (a key that is not text, a value that is not a
    snapshot): skipped with a warning, so that a foreign record can never stop a restore."""
    key, value = message.key(), message.value()
    try:
        instance_id = (key or b"").decode()
        schedule = None if value is None else snapshot_schedule(value)
    except (UnicodeDecodeError, DecodeError, KeyError, ValueError, TypeError) as error:
        log.warning(
            "changelog %s[%s]@%s is not a snapshot, skipped: %s",
            message.topic(),
            message.partition(),
            message.offset(),
            error,
        )
        return None
    if not instance_id:
        return None
    return instance_id, value, schedule


def restore_partition(
    consumer: Consumer,
    store: SnapshotStore,
    topic: str,
    partition: int,
    progress: object | None = None,
    retention_ms: int | None = None,
) -> RestoreResult:
    """Bring ``store``'s copy of ``partition`` up to the changelog's end; returns what it read.

    ``consumer`` is a group-less, read_committed consumer used only for restoring. ``progress``,
    if given, is called as ``progress(records_read_so_far, records_expected)``. The store's
    indexes of due timers and, with ``retention_ms``, of finished instances' expiry are rebuilt
    from the restored snapshots.
    """
    began = time.monotonic()
    tp = TopicPartition(topic, partition)
    low, high = watermarks(consumer, tp)
    stored = store.changelog_offset(partition)
    if stored is not None and not (low - 1 <= stored < high):
        # The changelog was deleted or recreated under us: what we hold is not from it.
        log.warning(
            "store offset %s outside changelog [%s, %s) of %s[%s]; restoring from start",
            stored,
            low,
            high,
            topic,
            partition,
        )
        store.drop_partition(partition)
        stored = None
    start = low if stored is None else stored + 1
    if start >= high:
        return RestoreResult(partition, 0, start, high, time.monotonic() - began)

    consumer.assign(
        [TopicPartition(topic, partition, start if stored is not None else OFFSET_BEGINNING)]
    )
    read = 0
    expected = high - start
    batch: list[tuple[int, str, bytes | None]] = []
    index: list[DueRef] = []
    last_offset = start - 1
    try:
        while True:
            for message in consumer.consume(num_messages=1000, timeout=0.1):
                if message.error():
                    log.warning("restore of %s[%s]: %s", topic, partition, message.error())
                    continue
                restored = _restored(message)
                if restored is not None:
                    instance_id, value, schedule = restored
                    batch.append((partition, instance_id, value))
                    if schedule is not None:
                        index += index_entries(partition, instance_id, *schedule, retention_ms)
                last_offset = message.offset() or 0
                read += 1
            if len(batch) >= BATCH:
                store.write(batch, {partition: last_offset}, index)
                batch, index = [], []
                if callable(progress):
                    progress(read, expected)
            position = consumer.position([tp])[0].offset or 0
            if position >= high:
                break
    finally:
        consumer.unassign()
    # Markers after the last record are not records: store the last offset actually applied,
    # or high-1 if it is higher, so that the next restore starts at the end.
    store.write(batch, {partition: max(last_offset, high - 1)}, index)
    if callable(progress):
        progress(read, expected)
    return RestoreResult(partition, read, start, high, time.monotonic() - began)
