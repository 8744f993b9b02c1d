"""Restore as a phase of the processor's loop: partitions recover, paused, a chunk at a time.

When inbox partitions are assigned (or when the store must be brought up to the changelog again
after a producer was recreated), they are paused on the group's consumer and marked recovering;
each turn of the loop gives the restore a bounded slice of time (``CHUNK_SECONDS``), so SIGTERM
and further rebalances are honoured between slices; a partition whose store is current is
resumed and reported back, to be owned. A partition revoked or lost while it recovers is
abandoned: what was written to the store so far is consistent, and the next restore of it starts
there. Partitions recover one after another, on one group-less consumer (the restorer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import KafkaException, TopicPartition

from stream_processors.engine import metrics
from stream_processors.engine.restore import PartitionRestore
from stream_processors.engine.store import SnapshotStore
from stream_processors.kafka.clients import Consumer, Restorer

log = logging.getLogger(__name__)

#: The longest one turn of the loop spends restoring.
CHUNK_SECONDS = 0.2
#: How long asking for a partition's end may block (a busy broker can take a second).
WATERMARK_TIMEOUT = 2.0
#: How often a restore that cannot reach the broker says so.
SAY_EVERY = 5.0


class Recovery:
    def __init__(
        self,
        restorer: Restorer,
        store: SnapshotStore,
        changelog: str,
        inbox: str,
        retention_ms: int | None,
        saga: str,
    ) -> None:
        self.restorer = restorer
        self.store = store
        self.changelog = changelog
        self.inbox = inbox
        self.retention_ms = retention_ms
        self._queue: dict[int, PartitionRestore | None] = {}  # None: not begun
        self._said = 0.0
        self._restored = metrics.RESTORED.labels(saga=saga)
        self._remaining = metrics.RESTORE_REMAINING.labels(saga=saga)

    @property
    def pending(self) -> set[int]:
        return set(self._queue)

    def mark(self, consumer: Consumer, partitions: Iterable[int]) -> None:
        """Pause ``partitions`` of the inbox and queue them for restoring."""
        added = sorted(set(partitions) - set(self._queue))
        if not added:
            return
        consumer.pause([TopicPartition(self.inbox, p) for p in added])
        for partition in added:
            self._queue[partition] = None
        log.info("inbox partitions %s recovering", added)

    def abandon(self, partitions: Iterable[int]) -> None:
        """Stop restoring ``partitions`` (revoked or lost)."""
        for partition in partitions:
            restore = self._queue.pop(partition, None)
            if restore is not None:
                restore.abandon()
                log.info(
                    "restore of partition %s abandoned after %s records", partition, restore.read
                )

    def step(self, consumer: Consumer, seconds: float | None = None) -> list[int]:
        """Restore for up to ``seconds`` (``CHUNK_SECONDS``); returns the partitions now
        current (resumed). Every call reads something, however short the time."""
        seconds = CHUNK_SECONDS if seconds is None else seconds
        deadline = time.monotonic() + seconds
        done: list[int] = []
        while self._queue:
            partition = next(iter(self._queue))
            restore = self._queue[partition] or PartitionRestore(
                self.restorer, self.store, self.changelog, partition, self.retention_ms
            )
            self._queue[partition] = restore
            try:
                finished = restore.step(deadline, watermark_timeout=WATERMARK_TIMEOUT)
            except KafkaException as error:
                self._say(f"restore of partition {partition} waits for the broker: {error}")
                break
            self._remaining.set(sum(r.expected - r.read for r in self._started()))
            if finished:
                del self._queue[partition]
                self._finished(restore)
                done.append(partition)
            if time.monotonic() >= deadline:
                break
        if done:
            consumer.resume([TopicPartition(self.inbox, p) for p in done])
        if not self._queue:
            self._remaining.set(0)
        return done

    def _started(self) -> list[PartitionRestore]:
        return [r for r in self._queue.values() if r is not None]

    def _finished(self, restore: PartitionRestore) -> None:
        result = restore.result()
        self._restored.inc(result.records)
        log.info(
            "restored partition %s: %s changelog records (offsets %s..%s) in %.3fs",
            result.partition,
            result.records,
            result.started_at_offset,
            result.high_watermark,
            result.seconds,
        )

    def _say(self, what: str) -> None:
        if time.monotonic() - self._said >= SAY_EVERY:
            log.warning(what)
            self._said = time.monotonic()
