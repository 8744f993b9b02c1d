"""In-memory Kafka for tests: a broker, consumers and transactional producers, no network.

Enough of Kafka's contract for the processor's exactly-once paths, and nothing more:

- records produced in a transaction get their offsets at once but are invisible to consumers
  (all of them read committed) until the transaction commits; an abort hides them for good;
- offsets sent to a transaction become the group's committed offsets with its commit;
- ``init_transactions`` fences every earlier producer with the same transactional id and aborts
  what it left open;
- a consumer's rebalance callbacks run inside ``consume``, as librdkafka runs them inside a poll:
  tests ask for one with ``FakeConsumer.assign_next``, ``revoke_next`` or ``lose_next``;
- any call can be made to fail: ``fail(name, error)`` queues an error for its next call.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from stream_processors.core import limits
from stream_processors.core.model import SagaDefinition
from stream_processors.core.partitioner import partition_for
from stream_processors.kafka.clients import Closeable, Delivered, Rebalanced
from stream_processors.kafka.topics import SagaTopics

#: A topic's limits when a test sets none: one object, as a real client caches them, so that
#: its computed maximum is not computed again for every record (tools/profile_engine.py).
DEFAULT_LIMITS = limits.Limits()


@dataclass
class _Entry:
    message: Message
    transaction: int | None  # the producing transaction's number; None once it committed
    aborted: bool = False


@dataclass
class FakeBroker:
    """Topics as lists of entries per partition, and each group's committed offsets."""

    partitions: int = 8
    logs: dict[tuple[str, int], list[_Entry]] = field(default_factory=lambda: defaultdict(list))
    committed: dict[str, dict[tuple[str, int], int]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    epochs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: The open transaction of each transactional id.
    open: dict[str, int] = field(default_factory=dict)
    _transactions: int = 0

    def append(self, topic: str, partition: int, transaction: int | None, **record: Any) -> _Entry:
        log = self.logs[(topic, partition)]
        message = Message(topic=topic, partition=partition, offset=len(log), **record)
        entry = _Entry(message, transaction)
        log.append(entry)
        return entry

    def partition_of(self, key: bytes) -> int:
        """Where a keyed record goes: Kafka's murmur2, as every Sagalog producer partitions
        (a source event decided without the inbox hop is where its routed copy would be)."""
        return partition_for(key, self.partitions)

    def publish(self, topic: str, key: bytes, value: bytes, headers: Any = None) -> None:
        """A committed record from outside the processor (a service, a test)."""
        partition = self.partition_of(key)
        self.append(topic, partition, None, key=key, value=value, headers=headers)

    def new_transaction(self) -> int:
        self._transactions += 1
        return self._transactions

    def end(self, transaction: int, commit: bool) -> None:
        for log in self.logs.values():
            for entry in log:
                if entry.transaction == transaction:
                    entry.transaction = None
                    entry.aborted = not commit

    def visible(self, topic: str, partition: int) -> list[Message]:
        """What a read_committed consumer reads: committed records up to the first open one."""
        out = []
        for entry in self.logs[(topic, partition)]:
            if entry.transaction is not None:
                break
            if not entry.aborted:
                out.append(entry.message)
        return out

    def records(self, topic: str) -> list[Message]:
        return [m for (t, p) in sorted(self.logs) if t == topic for m in self.visible(t, p)]

    def open_end(self, topic: str, partition: int) -> int:
        """The last stable offset: where a read_committed consumer stops."""
        log = self.logs[(topic, partition)]
        return next((e.message.offset() or 0 for e in log if e.transaction is not None), len(log))


class _Failing:
    """``fail(name, error)``: the next call of ``name`` raises ``KafkaException(error)``."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[KafkaError]] = defaultdict(deque)
        self.calls: dict[str, int] = defaultdict(int)

    def fail(self, name: str, error: KafkaError, times: int = 1) -> None:
        self._failures[name].extend([error] * times)

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        if self._failures[name]:
            raise KafkaException(self._failures[name].popleft())


class FakeProducer(_Failing):
    def __init__(self, broker: FakeBroker, transactional_id: str) -> None:
        super().__init__()
        self.broker = broker
        self.transactional_id = transactional_id
        self.epoch = -1
        self._transaction: int | None = None
        self._offsets: dict[str, dict[tuple[str, int], int]] = defaultdict(dict)
        self._deliveries: list[tuple[Delivered, Message]] = []

    def _check_fenced(self) -> None:
        if self.epoch != self.broker.epochs[self.transactional_id]:
            error = KafkaError(KafkaError._FENCED, "producer fenced", fatal=True)
            raise KafkaException(error)

    def init_transactions(self, timeout: float = -1) -> None:
        self._call("init_transactions")
        left_open = self.broker.open.pop(self.transactional_id, None)
        if left_open is not None:  # what the previous epoch left open is aborted
            self.broker.end(left_open, commit=False)
        self.broker.epochs[self.transactional_id] += 1
        self.epoch = self.broker.epochs[self.transactional_id]

    def begin_transaction(self) -> None:
        self._call("begin_transaction")
        self._check_fenced()
        assert self._transaction is None, "a transaction is open already"
        self._transaction = self.broker.new_transaction()
        self.broker.open[self.transactional_id] = self._transaction

    def produce(
        self,
        topic: str,
        value: str | bytes | None = None,
        key: str | bytes | None = None,
        partition: int = -1,
        callback: Delivered | None = None,
        on_delivery: Delivered | None = None,
        timestamp: int = 0,
        headers: Any = None,
    ) -> None:
        self._call("produce")
        self._check_fenced()
        assert self._transaction is not None, "produce outside a transaction"
        if partition < 0:
            raw = key.encode() if isinstance(key, str) else key or b""
            partition = self.broker.partition_of(raw)
        entry = self.broker.append(
            topic, partition, self._transaction, key=key, value=value, headers=headers
        )
        report = on_delivery or callback
        if report is not None:
            self._deliveries.append((report, entry.message))

    def poll(self, timeout: float = -1) -> int:
        served, self._deliveries = self._deliveries, []
        for report, message in served:
            report(None, message)
        return len(served)

    def flush(self, timeout: float = -1) -> int:
        self._call("flush")
        self.poll(0)
        return 0

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None:
        self._call("send_offsets_to_transaction")
        self._check_fenced()
        for tp in positions:
            self._offsets[str(group_metadata)][(tp.topic, tp.partition)] = tp.offset

    def commit_transaction(self, timeout: float = -1) -> None:
        self._call("commit_transaction")
        self._check_fenced()
        assert self._transaction is not None, "no transaction to commit"
        self.poll(0)
        self.broker.end(self._transaction, commit=True)
        for group, offsets in self._offsets.items():
            self.broker.committed[group].update(offsets)
        self._end()

    def abort_transaction(self, timeout: float = -1) -> None:
        self._call("abort_transaction")
        self._check_fenced()
        if self._transaction is not None:
            self.broker.end(self._transaction, commit=False)
        self._end()

    def _end(self) -> None:
        self.broker.open.pop(self.transactional_id, None)
        self._transaction = None
        self._offsets.clear()
        self._deliveries.clear()


class FakeConsumer(_Failing):
    """A read_committed consumer; with a ``group``, its assignment comes from the test."""

    def __init__(self, broker: FakeBroker, group: str | None = None) -> None:
        super().__init__()
        self.broker = broker
        self.group = group
        self.positions: dict[tuple[str, int], int] = {}
        self.paused: set[tuple[str, int]] = set()
        #: Partitions read (or sought) since their assignment: ``position`` knows only these.
        self.fetched: set[tuple[str, int]] = set()
        self.callbacks: dict[str, Rebalanced | None] = {}
        self.closed = False
        self._events: deque[tuple[str, list[TopicPartition]]] = deque()
        self._errors: deque[KafkaError] = deque()

    # -- what tests ask for: rebalances, served at the next consume ---------------------------

    def assign_next(self, partitions: list[TopicPartition]) -> None:
        self._events.append(("on_assign", partitions))

    def revoke_next(self, partitions: list[TopicPartition] | None = None) -> None:
        self._events.append(("on_revoke", partitions or self.assignment()))

    def lose_next(self, partitions: list[TopicPartition] | None = None) -> None:
        self._events.append(("on_lost", partitions or self.assignment()))

    def error_next(self, error: KafkaError) -> None:
        """An error event (as librdkafka hands one out: a message with ``error()`` set), first
        in the next read, after its rebalance callbacks."""
        self._errors.append(error)

    # -- the interface ------------------------------------------------------------------------

    def subscribe(
        self,
        topics: list[str],
        on_assign: Rebalanced | None = None,
        on_revoke: Rebalanced | None = None,
        on_lost: Rebalanced | None = None,
    ) -> None:
        self.callbacks = {"on_assign": on_assign, "on_revoke": on_revoke, "on_lost": on_lost}

    def _rebalance(self) -> None:
        while self._events:
            name, partitions = self._events.popleft()
            callback = self.callbacks.get(name)
            before = dict(self.positions)
            if callback is not None:
                callback(self, partitions)
            if name == "on_assign" and self.positions == before:  # as librdkafka does
                self.assign(partitions)
            elif name != "on_assign":
                for tp in partitions:
                    self.positions.pop((tp.topic, tp.partition), None)
                    self.fetched.discard((tp.topic, tp.partition))
                    self.paused.discard((tp.topic, tp.partition))

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        self._call("consume")
        self._rebalance()
        out: list[Message] = []
        while self._errors and len(out) < num_messages:
            out.append(Message(error=self._errors.popleft()))
        for where, position in sorted(self.positions.items()):
            if where in self.paused:
                continue
            for message in self.broker.visible(*where):
                if len(out) >= num_messages:
                    return out
                if (message.offset() or 0) >= position:
                    out.append(message)
                    self.positions[where] = (message.offset() or 0) + 1
                    self.fetched.add(where)
            # Past aborted records, and up to the stable end, as read_committed positions go.
            end = self.broker.open_end(*where)
            if end > self.positions[where]:
                self.positions[where] = end
                self.fetched.add(where)
        return out

    def poll(self, timeout: float = -1) -> Message | None:
        # Counted and failed as ``consume``: both are the one read of the same queue.
        taken = self.consume(1, timeout)
        return taken[0] if taken else None

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.positions = {}
        self.fetched = set()
        for tp in partitions:
            where = (tp.topic, tp.partition)
            offset = tp.offset
            if offset < 0 and self.group is not None:
                offset = self.broker.committed[self.group].get(where, OFFSET_BEGINNING)
            self.positions[where] = max(0, offset)

    def unassign(self) -> None:
        self.positions = {}

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self.positions)]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def seek(self, partition: TopicPartition) -> None:
        self._call("seek")
        where = (partition.topic, partition.partition)
        self.positions[where] = max(0, partition.offset)
        self.fetched.add(where)

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """As librdkafka: OFFSET_INVALID for a partition nothing was fetched from yet."""
        return [
            TopicPartition(tp.topic, tp.partition, self._position((tp.topic, tp.partition)))
            for tp in partitions
        ]

    def _position(self, where: tuple[str, int]) -> int:
        return self.positions[where] if where in self.fetched else OFFSET_INVALID

    def committed(
        self, partitions: list[TopicPartition], timeout: float = -1
    ) -> list[TopicPartition]:
        self._call("committed")
        offsets = self.broker.committed[self.group or ""]
        return [
            TopicPartition(tp.topic, tp.partition, offsets.get((tp.topic, tp.partition), -1001))
            for tp in partitions
        ]

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        """As a read_committed consumer's: the high offset is the last stable one."""
        self._call("get_watermark_offsets")
        return 0, self.broker.open_end(partition.topic, partition.partition)

    def written_offsets(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        """As a read_uncommitted consumer's: past every record, an open transaction's too."""
        self._call("written_offsets")
        return 0, len(self.broker.logs[(partition.topic, partition.partition)])

    def consumer_group_metadata(self) -> Any:
        return self.group

    def close(self) -> None:
        self.closed = True


assert OFFSET_INVALID == -1001  # what ``committed`` answers for a partition never committed


class FakeClients:
    """``KafkaClients`` on a ``FakeBroker``; keeps every client it made, for tests to inspect."""

    def __init__(self, broker: FakeBroker | None = None) -> None:
        self.broker = broker or FakeBroker()
        self.producers: list[FakeProducer] = []
        self.consumers: list[FakeConsumer] = []
        self.restorers: list[FakeConsumer] = []
        #: Topics' limits, as a test sets them (others: the defaults, as with no override).
        self.topic_limits: dict[str, limits.Limits] = {}

    def prepare(
        self, definition: SagaDefinition, topics: SagaTopics, stopping: threading.Event
    ) -> Closeable | None:
        return None

    def changelog_id(self, topic: str) -> str:
        return f"fake-{topic}"

    def partition_count(self, topic: str) -> int:
        return self.broker.partitions

    def limits(self, topic: str) -> limits.Limits:
        return self.topic_limits.get(topic) or DEFAULT_LIMITS

    def producer(self, transactional_id: str) -> FakeProducer:
        self.producers.append(FakeProducer(self.broker, transactional_id))
        return self.producers[-1]

    def consumer(self, group: str, instance_id: str) -> FakeConsumer:
        self.consumers.append(FakeConsumer(self.broker, group))
        return self.consumers[-1]

    def restorer(self) -> FakeConsumer:
        self.restorers.append(FakeConsumer(self.broker))
        return self.restorers[-1]
