"""Feeding the instance index (``tools.index``) from a saga's snapshots changelog.

The changelog ``<saga>.snapshots`` is keyed by instance id; each value is the instance's latest
``sagalog.Snapshot`` and a tombstone deletes it. It is read with ``read_committed`` (only what
the processors' transactions committed), with no consumer group: the index keeps its own
offsets, written with the rows. ``IndexFeed.catch_up`` reads to the ends of the moment it
starts (what ``sagas list`` does before it queries); ``follow`` keeps reading
(``sagas index --follow``).

An index fed from another topic of the same name (deleted and created again: the broker's topic
id differs) is emptied and rebuilt.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from stream_processors.codecs.avro import DecodeError
from stream_processors.core.instance import decode_snapshot
from stream_processors.engine.store import FLOW_ROWS, QUEUE_ROWS
from stream_processors.kafka.config import consumer_config
from stream_processors.kafka.errors import metadata as kafka_metadata
from stream_processors.kafka.reading import ReadTimeout, watermarks
from stream_processors.kafka.topics import topic_id
from stream_processors.tools.index import Change, Index, row_of

LOG = logging.getLogger(__name__)
#: Records applied per SQLite transaction at most (one ``consume`` call's worth).
BATCH = 5000
#: How long a follower waits for records before applying what it has: a batch is applied at
#: the latest this long after its first record arrived (the bulk of the index's lag when the
#: changelog is busy but the feeder keeps up), and an idle follower wakes this often.
FOLLOW_POLL = 0.05


@dataclass
class Fed:
    """What one call read, what it applied (an instance's latest snapshot in the batch), and
    the records it could not decode (left out, and logged).

    ``oldest_ms`` and ``newest_ms`` are the earliest and latest record timestamps read (when
    the records were written): how far behind the index was when it applied them."""

    read: int = 0
    applied: int = 0
    undecodable: int = 0
    oldest_ms: int | None = None
    newest_ms: int | None = None

    def add(self, other: Fed) -> None:
        self.read += other.read
        self.applied += other.applied
        self.undecodable += other.undecodable
        stamps = [t for t in (self.oldest_ms, other.oldest_ms) if t is not None]
        self.oldest_ms = min(stamps, default=None)
        stamps = [t for t in (self.newest_ms, other.newest_ms) if t is not None]
        self.newest_ms = max(stamps, default=None)


def change_of(message: Message) -> Change | None:
    """The index change of one changelog record; None when its value cannot be decoded."""
    partition, offset = message.partition() or 0, message.offset() or 0
    key = (message.key() or b"").decode(errors="replace")
    value = message.value()
    if key.startswith(FLOW_ROWS):  # a partition's flow-control row, not an instance
        return _queue_change(partition, offset, key, value)
    if value is None:
        return Change(partition, offset, key, None)
    try:
        instance = decode_snapshot(value)
    except (DecodeError, KeyError, ValueError) as error:
        LOG.warning("snapshot of %s at %d:%d not decoded: %s", key, partition, offset, error)
        return None
    return Change(partition, offset, key, row_of(instance, partition))


def _queue_change(partition: int, offset: int, key: str, value: bytes | None) -> Change | None:
    """A queue row's change (a step waiting for its limit, or no longer); None for the other
    flow rows (in flight, priorities), which the index does not keep."""
    if not key.startswith(QUEUE_ROWS):
        return None
    if value is None:
        return Change(partition, offset, key, None, queue_row=True)
    try:
        row = json.loads(value)
        waiting = (str(row["instance"]), str(row["limit"]))
    except (ValueError, KeyError, TypeError) as error:
        LOG.warning("queue row at %d:%d not decoded: %s", partition, offset, error)
        return None
    return Change(partition, offset, key, None, queue_row=True, waiting=waiting)


class IndexFeed:
    """A changelog reader assigned to every partition of ``topic`` at the index's offsets."""

    def __init__(self, index: Index, topic: str, bootstrap: str | None = None) -> None:
        self.index = index
        self.topic = topic
        group = f"sagalog-index-{time.time_ns()}"  # assigned, never joined: nothing commits
        self._consumer = Consumer(consumer_config(bootstrap, "sagalog-index", group))
        # Watermarks from a consumer that never fetches: asked of the fetching one, each query
        # waits behind its long-polling fetch.
        self._probe = Consumer(consumer_config(bootstrap, "sagalog-index", group))
        try:  # raises MissingTopic (one line naming it) when the saga never ran here
            topics = kafka_metadata(self._probe, bootstrap, topic).topics
        except Exception:
            self.close()
            raise
        self.partitions = sorted(topics[topic].partitions)
        # A topic deleted and created again has a new id: its offsets mean other records.
        index.fed_from(topic_id(topic, bootstrap))
        self._assign()

    def _assign(self) -> None:
        stored = self.index.offsets()
        self._consumer.assign(
            [
                TopicPartition(self.topic, p, stored.get(p, OFFSET_BEGINNING))
                for p in self.partitions
            ]
        )

    def ends(self) -> dict[int, int]:
        """Each partition's end offset now. Records of a transaction still open below it are
        read once it commits (a processor commits every few hundred milliseconds); one left
        open by a crashed writer is aborted by the broker after the transaction timeout."""
        return {
            p: watermarks(self._probe, TopicPartition(self.topic, p))[1] for p in self.partitions
        }

    def poll(self, timeout: float) -> Fed:
        """Apply what arrives within ``timeout`` seconds (up to ``BATCH`` records)."""
        fed = Fed()
        last: dict[bytes | None, Message] = {}
        for message in self._consumer.consume(num_messages=BATCH, timeout=timeout):
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                continue
            fed.read += 1
            _, stamp = message.timestamp()
            if stamp > 0:
                fed.oldest_ms = stamp if fed.oldest_ms is None else min(fed.oldest_ms, stamp)
                fed.newest_ms = stamp if fed.newest_ms is None else max(fed.newest_ms, stamp)
            # Only an instance's latest snapshot counts: the earlier ones are not even decoded.
            last.pop(message.key(), None)
            last[message.key()] = message
        changes: list[Change] = []
        for message in last.values():
            change = change_of(message)
            if change is None:
                fed.undecodable += 1
            else:
                changes.append(change)
        if changes:
            fed.applied = self.index.apply(changes)
        return fed

    def behind(self, ends: dict[int, int]) -> list[int]:
        """Partitions whose reading position is short of ``ends``."""
        positions = self._consumer.position([TopicPartition(self.topic, p) for p in ends])
        stored = self.index.offsets()
        # Before the first record arrives a position is unknown (negative): the stored offset,
        # or the end itself for an empty partition, tells where reading stands.
        return [
            tp.partition
            for tp in positions
            if max(tp.offset, stored.get(tp.partition, 0)) < ends[tp.partition]
        ]

    def catch_up(self, stall: float = 120, progress: Callable[[int], None] | None = None) -> Fed:
        """Read to the ends of the moment this is called; raises ``ReadTimeout`` when nothing
        arrives for ``stall`` seconds short of them (a transaction left open, say)."""
        total = Fed()
        ends = {p: end for p, end in self.ends().items() if end > 0}
        deadline = time.monotonic() + stall
        while self.behind(ends):
            if time.monotonic() > deadline:
                raise ReadTimeout(f"{self.topic}: nothing read for {stall} s short of its end")
            fed = self.poll(0.2)
            total.add(fed)
            if fed.read:
                deadline = time.monotonic() + stall
            if progress is not None and fed.read:
                progress(fed.read)
        return total

    def follow(self, keep_going: Callable[[], bool], each: Callable[[Fed], None]) -> None:
        """Apply records as they are committed while ``keep_going()``."""
        while keep_going():
            each(self.poll(FOLLOW_POLL))

    def close(self) -> None:
        self._consumer.close()
        self._probe.close()
