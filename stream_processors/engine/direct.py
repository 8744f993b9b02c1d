"""Deciding source events without the inbox hop: which source partitions may, and from when.

A record read from source partition *p* is decided directly, in the transaction that commits its
source offset, when the instance it names hashes to inbox partition *p* (murmur2 of the instance
id modulo the inbox's partition count: where its routed copy would go) and inbox partition *p*
is *direct-ready* here; any other is routed as before. The instances of inbox partition *p* are
only ever written by its owner, so deciding there keeps the single writer of their state.

Direct-ready is the end of a switch that keeps each instance's records in order: routed copies
of earlier records of the source partition (routed by this process before, by another owner, or
by a version that routed everything) may still be unread in inbox partition *p*, and must be
decided before any later record of the partition is decided directly. So:

1. when inbox partition *p* is assigned, or restored again (``hold``), the source partitions
   numbered *p* are paused with it (``stream_processors.engine.recovery`` pauses the inbox);
2. once it is restored (``restored``), the inbox partition alone is resumed and the end of
   what was written to it asked for (the high watermark for a read_uncommitted reader, as the
   restore's end: a copy in the previous owner's last transaction, its markers still being
   written, is past the last stable offset; a read_committed position passes the transaction
   markers and aborted records to reach it); if that fails, the number stays routing (never
   decide directly when unsure) until its next restore;
3. once the inbox partition's position reaches that end (``step``; a partition nothing was
   fetched from since its assignment or a seek is where the group's committed offset, or the
   start of the log, puts it) and nothing read from it is left uncommitted, everything routed
   before the pause has been decided and committed: the source partitions are resumed and the
   number is direct-ready. A drain that does not end within ``DRAIN_PATIENCE`` (an open
   transaction holding the inbox back) gives up the same way: routing, sources resumed.

A revoke, a loss or a restore again ends direct-ready, and a source partition newly assigned
alone (an incremental assignment) turns its number back to routing until its next restore:
routing is always in order, only the switch to deciding directly needs the drain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaException, TopicPartition

from stream_processors.core.partitioner import partition_for
from stream_processors.kafka.clients import Consumer, Restorer

log = logging.getLogger(__name__)

#: How long asking for an inbox partition's end and committed offsets may block the loop.
OFFSETS_TIMEOUT = 2.0
#: How long a drain may take before the number falls back to routing (sources resumed).
DRAIN_PATIENCE = 30.0


@dataclass(frozen=True)
class _Drain:
    end: int  # the inbox partition's end, asked for after its sources were paused
    start: int  # where its position is before anything is fetched: the committed offset
    since: float


class DirectSources:
    """Which inbox partition numbers decide their source partitions' records directly."""

    def __init__(self, inbox: str, enabled: bool) -> None:
        self.inbox = inbox
        self.enabled = enabled
        #: The inbox's real partition count (``start`` sets it: routed copies hash over it).
        self.partitions = 0
        self._sources: set[tuple[str, int]] = set()  # source partitions assigned
        self._held: set[int] = set()  # numbers whose source partitions are paused
        self._draining: dict[int, _Drain] = {}
        self._ready: set[int] = set()

    def decides(self, partition: int, instance_id: bytes) -> bool:
        """Whether a source record of ``partition`` naming ``instance_id`` is decided here."""
        return partition in self._ready and partition_for(instance_id, self.partitions) == partition

    def holds(self, partition: int) -> bool:
        """Whether the source partitions numbered ``partition`` are paused for the switch (a
        record of theirs read anyway must be read again later, not routed: see ``step``)."""
        return partition in self._held

    @property
    def ready(self) -> set[int]:
        return set(self._ready)

    # -- assignment ----------------------------------------------------------------------------

    def assigned(self, consumer: Consumer, partitions: Sequence[TopicPartition]) -> None:
        """After ``partitions`` were assigned (the inbox's ones queued for restore)."""
        inbox = {tp.partition for tp in partitions if tp.topic == self.inbox}
        sources = {(tp.topic, tp.partition) for tp in partitions if tp.topic != self.inbox}
        # Read by someone else until now: their routed copies may be unread.
        self._ready -= {p for _, p in sources - self._sources}
        self._sources |= sources
        self.hold(consumer, inbox)

    def hold(self, consumer: Consumer, partitions: Iterable[int]) -> None:
        """Inbox ``partitions`` restore (again): pause their numbers' source partitions."""
        if not self.enabled:
            return
        for p in partitions:
            self._ready.discard(p)
            self._draining.pop(p, None)
            self._held.add(p)
            self._pause(consumer, p)

    def forget(self, consumer: Consumer, partitions: Sequence[TopicPartition]) -> None:
        """``partitions`` were revoked or lost."""
        self._sources -= {(tp.topic, tp.partition) for tp in partitions}
        for p in {tp.partition for tp in partitions if tp.topic == self.inbox}:
            self._ready.discard(p)
            self._release(consumer, p)

    def reset(self) -> None:
        """A new consumer: nothing is assigned, held or ready."""
        self._sources.clear()
        self._held.clear()
        self._draining.clear()
        self._ready.clear()

    # -- the switch ----------------------------------------------------------------------------

    def restored(self, consumer: Consumer, ends: Restorer, partitions: Iterable[int]) -> None:
        """Inbox ``partitions`` are restored (and resumed): drain them up to their written end
        (``ends``: a consumer that can say where a partition's writes end)."""
        for p in partitions:
            if p not in self._held:
                continue
            try:
                drain = self._drain_of(consumer, ends, p)
            except KafkaException as error:
                log.warning("inbox partition %s: end not known (%s); its sources route", p, error)
                self._release(consumer, p)
                continue
            self._draining[p] = drain

    def step(self, consumer: Consumer, uncommitted: Collection[tuple[str, int]]) -> None:
        """Make the numbers whose inbox partition is drained direct-ready.

        Drained: read up to the end, and nothing read from it left in the open transaction
        (``uncommitted``: its consumed partitions). Were the copies read decided only in the
        open transaction, an abort would rewind the inbox partition and a later event of the
        source partition, decided directly, could be read before them again."""
        if not self._draining:
            return
        positions = consumer.position([TopicPartition(self.inbox, p) for p in self._draining])
        for tp in positions:
            drain = self._draining[tp.partition]
            # Invalid before the first fetch after an assignment or a seek (a rewind).
            position = tp.offset if tp.offset >= 0 else drain.start
            if position >= drain.end and (self.inbox, tp.partition) not in uncommitted:
                self._ready.add(tp.partition)
                self._release(consumer, tp.partition)
                log.info("source partitions %s decided directly from now on", tp.partition)
            elif time.monotonic() - drain.since > DRAIN_PATIENCE:
                log.warning(
                    "inbox partition %s not drained in %.0f s (at %s of %s): its sources route",
                    tp.partition,
                    DRAIN_PATIENCE,
                    position,
                    drain.end,
                )
                self._release(consumer, tp.partition)

    def _drain_of(self, consumer: Consumer, ends: Restorer, p: int) -> _Drain:
        tp = TopicPartition(self.inbox, p)
        low, end = ends.written_offsets(tp, timeout=OFFSETS_TIMEOUT)
        [committed] = consumer.committed([tp], timeout=OFFSETS_TIMEOUT)
        # Never committed: the consumer starts at the log's start (auto.offset.reset earliest).
        start = committed.offset if committed.offset >= 0 else low
        return _Drain(end, start, time.monotonic())

    def _pause(self, consumer: Consumer, p: int) -> None:
        held = [TopicPartition(t, q) for t, q in sorted(self._sources) if q == p]
        if held:
            consumer.pause(held)

    def _release(self, consumer: Consumer, p: int) -> None:
        """Resume the source partitions numbered ``p`` (still assigned): direct-ready or not."""
        self._draining.pop(p, None)
        if p in self._held:
            self._held.discard(p)
            resumed = [TopicPartition(t, q) for t, q in sorted(self._sources) if q == p]
            if resumed:
                consumer.resume(resumed)


__all__ = ["DRAIN_PATIENCE", "DirectSources"]
