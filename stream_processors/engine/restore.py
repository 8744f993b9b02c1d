"""Restoring the local snapshot store from the snapshots changelog.

On assignment of a partition, the store reads the changelog from the offset after the one it is
current to (or from the start, when it has nothing for the partition) up to the end of what was
written to it when restoring began: the high watermark as a read_uncommitted reader sees it, so
that a transaction still completing (the previous owner's last, committed as it gave the
partition up) is waited for, never cut off. Records are read ``read_committed``, so snapshots
of aborted transactions never enter the store; tombstones delete. "Restored" means the
consumer's position reached that end: under transactions the last offset of a partition is
often a commit marker, not a record, so waiting to *read* offset high-1 could wait forever.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from confluent_kafka import Message, TopicPartition

from stream_processors.codecs.avro import HEADER_SIZE, DecodeError
from stream_processors.core.instance import (
    is_snapshot,
    parse_schedule,
    snapshot_frames,
    snapshot_schedule,
)
from stream_processors.engine.routing import SCHEDULE
from stream_processors.engine.store import FLOW_ROWS, DueRef, SnapshotStore, index_entries
from stream_processors.kafka.clients import Restorer

log = logging.getLogger(__name__)

#: Records written to the store at a time (one ``WriteBatch``, with the offset they reach).
BATCH = 5_000
#: Records asked of the consumer at a time, and how long a read may wait for them: large
#: batches and a short wait, as a read waits its whole timeout for a batch it cannot fill.
#: (10,000 was no faster, and its messages, alive at once, kept 4-5 MB more resident.)
READ = 5_000
READ_WAIT = 0.01


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
        if instance_id.startswith(FLOW_ROWS):  # a partition's flow-control row: no timers
            return instance_id, value, None
        schedule = None if value is None else _schedule(value, message.headers())
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


def _schedule(value: bytes, headers: object) -> tuple[list[int], int | None]:
    """A snapshot record's schedule: from its ``sagalog.schedule`` header when it has one (the
    value is then only checked to be framed as a snapshot), else decoded from the value (records
    written before the header existed)."""
    for name, text in headers if isinstance(headers, list) else ():
        if name == SCHEDULE and isinstance(text, bytes) and is_snapshot(value):
            return parse_schedule(text)
    return snapshot_schedule(value)


#: The schedule header of a running instance with no timer: nothing to index.
_NOTHING_DUE = b";"


def _index_of(
    partition: int, key: bytes, text: object, retention: int | None, message: Message
) -> list[DueRef]:
    """The index entries a schedule header asks for; none (and a warning) for a bad one."""
    try:
        assert isinstance(text, bytes)
        return index_entries(partition, key.decode(), *parse_schedule(text), retention)
    except (AssertionError, ValueError, UnicodeDecodeError) as error:
        log.warning("changelog %s@%s: bad schedule header: %s", partition, message.offset(), error)
        return []


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """The cyclic garbage collector paused for a restore's chunk (at most ``CHUNK_SECONDS``).

    A chunk allocates tens of thousands of objects (messages, their header lists), which
    triggers full collections: each walks every object of the process, and they took as long
    as applying the records. Restoring makes no reference cycles, so there is nothing for
    them to find; reference counting still frees everything as it goes.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class PartitionRestore:
    """One partition's restore, done a bounded chunk at a time (see ``step``).

    ``consumer`` is a group-less, read_committed consumer used only for restoring, one
    partition at a time. The store's indexes of due timers and, with ``retention_ms``, of
    finished instances' expiry are rebuilt from the restored snapshots. What was read is written
    to the store in batches with the offset it is current to, so a restore abandoned midway
    (the partition revoked) leaves the store consistent and the next one starts where it ended.
    """

    def __init__(
        self,
        consumer: Restorer,
        store: SnapshotStore,
        topic: str,
        partition: int,
        retention_ms: int | None = None,
    ) -> None:
        self.consumer = consumer
        self.store = store
        self.tp = TopicPartition(topic, partition)
        self.partition = partition
        self.retention_ms = retention_ms
        self.began = time.monotonic()
        self.read = 0
        self.start = -1
        self.high = -1  # the end to reach; -1 until the watermarks are known
        self._batch: list[tuple[bytes, bytes | None]] = []
        self._index: list[DueRef] = []
        self._last_offset = -1
        self._assigned = False

    @property
    def expected(self) -> int:
        return max(0, self.high - self.start)

    def result(self) -> RestoreResult:
        return RestoreResult(
            self.partition, self.read, self.start, self.high, time.monotonic() - self.began
        )

    def step(self, deadline: float, watermark_timeout: float = 2.0) -> bool:
        """Restore until done (True) or ``deadline`` (a ``time.monotonic()``) passes (False).

        Raises ``KafkaException`` if the watermarks cannot be read (the broker is away): the
        caller tries again later.
        """
        if self.high < 0 and not self._begin(watermark_timeout):
            return True
        with _no_cyclic_gc():
            return self._read(deadline)

    def _read(self, deadline: float) -> bool:
        position = self._position()
        while True:  # at least one read, however short the time
            # Ask for no more than the offsets left, so that the last read returns as soon as
            # they are there (``consume`` waits its whole timeout for a batch it cannot fill);
            # markers, which are offsets but not records, leave it short: then the short wait.
            wanted = min(READ, max(1, self.high - position))
            messages = self.consumer.consume(num_messages=wanted, timeout=READ_WAIT)
            if messages:
                self._apply_all(messages)
            if len(self._batch) >= BATCH:
                self._write(self._last_offset)
            position = self._position()
            if position >= self.high:
                self._finish()
                return True
            if time.monotonic() >= deadline:
                return False

    def _position(self) -> int:
        """The consumer's position; before it has one (nothing read yet), the offset after the
        last one applied."""
        offset = self.consumer.position([self.tp])[0].offset or 0
        return max(offset, self._last_offset + 1)

    def abandon(self) -> None:
        """Stop restoring (the partition was revoked); what was written stays valid."""
        if self._assigned:
            self.consumer.unassign()
            self._assigned = False

    def _begin(self, timeout: float) -> bool:
        """Find where to start and end; False if there is nothing to read."""
        low, high = self.consumer.written_offsets(self.tp, timeout=timeout)
        stored = self.store.changelog_offset(self.partition)
        if stored is not None and not (low - 1 <= stored < high):
            # The changelog was deleted or recreated under us: what we hold is not from it.
            log.warning(
                "store offset %s outside changelog [%s, %s) of %s[%s]; restoring from start",
                stored,
                low,
                high,
                self.tp.topic,
                self.partition,
            )
            self.store.drop_partition(self.partition)
            stored = None
        self.start = low if stored is None else stored + 1
        self.high = high
        self._last_offset = self.start - 1
        if self.start >= high:
            return False
        # From the offset itself, never OFFSET_BEGINNING: that the consumer would look up with
        # a round trip of its own (and were ``low`` deleted meanwhile, the consumer's
        # auto.offset.reset=earliest starts it at the new start).
        self._assign(self.start)
        return True

    def _assign(self, offset: int) -> None:
        self.consumer.assign([TopicPartition(self.tp.topic, self.partition, offset)])
        self._assigned = True

    def _apply_all(self, messages: list[Message]) -> None:
        """Apply a chunk of changelog records. The loop is the restore's hot path (one turn per
        snapshot, a million at a restart): what it asks of each record is kept to the least,
        and a record the processor wrote (its schedule in a header, framed as a snapshot)
        takes the short way; anything else goes through ``_restored``."""
        batch, index, partition = self._batch, self._index, self.partition
        retention, frames = self.retention_ms, snapshot_frames()
        for message in messages:
            value, headers = message.value(), message.headers()
            first = headers[0] if isinstance(headers, list) and headers else None
            key = message.key()
            if (
                first is not None
                and first[0] == SCHEDULE
                and key
                and value is not None
                and value[:HEADER_SIZE] in frames
                and not message.error()
            ):
                batch.append((key, value))
                text = first[1]
                if text != _NOTHING_DUE:  # most have no timer: the id is not even decoded
                    index += _index_of(partition, key, text, retention, message)
                continue
            self._apply(message)
        self._last_offset = messages[-1].offset() or 0
        self.read += len(messages)

    def _apply(self, message: Message) -> None:
        """One record the short way did not take: an error, a tombstone, an older record."""
        if message.error():
            log.warning("restore of %s[%s]: %s", self.tp.topic, self.partition, message.error())
            return
        restored = _restored(message)
        if restored is not None:
            instance_id, value, schedule = restored
            self._batch.append((instance_id.encode(), value))
            if schedule is not None:
                self._index += index_entries(
                    self.partition, instance_id, *schedule, self.retention_ms
                )

    def _write(self, offset: int) -> None:
        self.store.write_restored(self.partition, self._batch, offset, self._index)
        self._batch, self._index = [], []

    def _finish(self) -> None:
        self.abandon()
        # Markers after the last record are not records: store the last offset actually
        # applied, or high-1 if it is higher, so that the next restore starts at the end.
        self._write(max(self._last_offset, self.high - 1))
