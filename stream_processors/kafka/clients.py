"""The Kafka clients the saga processor uses, as a small interface, and where they are made.

``Consumer`` and ``Producer`` are the calls the processor makes (confluent-kafka's clients fit
them as they are); ``KafkaClients`` is the one place they and the rest of the processor's broker
contact (topics, schema history, the changelog's identity, record-size limits) come from.
``ConfluentClients`` talks to a real cluster; ``stream_processors.kafka.fake.FakeClients`` keeps
everything in memory, for tests that drive the processor without a broker.

How the processor and the worker read a batch (``take``) is in ``kafka.reading``, beside the
other reads.

A process started while the cluster is down waits for it in ``prepare``
(``stream_processors.kafka.errors.wait_until_reachable``), saying what it waits for every few
seconds, instead of exiting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import Consumer as ConfluentConsumer
from confluent_kafka import KafkaException, Message, TopicPartition
from confluent_kafka import Producer as ConfluentProducer

from stream_processors.core import limits
from stream_processors.core.model import SagaDefinition
from stream_processors.kafka.broker_limits import BrokerLimits
from stream_processors.kafka.config import consumer_config, producer_config
from stream_processors.kafka.errors import (
    KafkaUnavailable,
    connect_admin,
    metadata,
    wait_until_reachable,
)
from stream_processors.kafka.reading import written_end
from stream_processors.kafka.topics import SagaTopics, ensure_topics, topic_id

log = logging.getLogger(__name__)

#: The restore consumer's fetch queue (librdkafka's ``queued.max.messages.kbytes``), in KiB.
RESTORE_QUEUE_KBYTES = 8192

Rebalanced = Callable[[Any, list[TopicPartition]], None]
Delivered = Callable[[Any, Message], None]


class Stopping(Exception):
    """The process is stopping: a wait for the broker was given up."""


class Consumer(Protocol):
    """What the processor asks of a consumer (its group's and the restorer's)."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: Rebalanced | None = None,
        on_revoke: Rebalanced | None = None,
        on_lost: Rebalanced | None = None,
    ) -> None: ...
    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]: ...
    def poll(self, timeout: float = -1) -> Message | None: ...
    def assign(self, partitions: list[TopicPartition]) -> None: ...
    def unassign(self) -> None: ...
    def assignment(self) -> list[TopicPartition]: ...
    def pause(self, partitions: list[TopicPartition]) -> None: ...
    def resume(self, partitions: list[TopicPartition]) -> None: ...
    def seek(self, partition: TopicPartition) -> None: ...
    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...
    def committed(
        self, partitions: list[TopicPartition], timeout: float = -1
    ) -> list[TopicPartition]: ...
    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]: ...
    def consumer_group_metadata(self) -> Any: ...
    def close(self) -> None: ...


class Restorer(Consumer, Protocol):
    """The restore consumer: read_committed, and able to say where a partition's writes end."""

    def written_offsets(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        """(low, high) offsets of ``partition`` past every record written to it, those of a
        transaction not complete yet included (a read_committed reader's high offset stops
        before them)."""
        ...


class Producer(Protocol):
    """What the processor asks of its transactional producer."""

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
    ) -> None: ...
    def poll(self, timeout: float = -1) -> int: ...
    def flush(self, timeout: float = -1) -> int: ...
    def init_transactions(self, timeout: float = -1) -> None: ...
    def begin_transaction(self) -> None: ...
    def commit_transaction(self, timeout: float = -1) -> None: ...
    def abort_transaction(self, timeout: float = -1) -> None: ...
    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None: ...


class Closeable(Protocol):
    def close(self) -> None: ...


class KafkaClients(Protocol):
    """Everything the processor gets from the cluster, made in one place."""

    def prepare(
        self, definition: SagaDefinition, topics: SagaTopics, stopping: threading.Event
    ) -> Closeable | None:
        """Topics created, schemas checked and recorded, waiting for the cluster as long as it
        takes (``Stopping`` if the process stops first); returns what to close at the end."""
        ...

    def changelog_id(self, topic: str) -> str: ...
    def partition_count(self, topic: str) -> int: ...
    def limits(self, topic: str) -> limits.Limits: ...
    def producer(self, transactional_id: str) -> Producer: ...
    def consumer(self, group: str, instance_id: str) -> Consumer: ...
    def restorer(self) -> Restorer: ...


class ConfluentClients:
    """``KafkaClients`` on a real cluster, through confluent-kafka."""

    def __init__(self, bootstrap: str | None, saga: str, create_topics: bool = True) -> None:
        self.bootstrap = bootstrap
        self.saga = saga
        self.create_topics = create_topics
        self._limits: BrokerLimits | None = None

    def prepare(
        self, definition: SagaDefinition, topics: SagaTopics, stopping: threading.Event
    ) -> Closeable | None:
        # Imported here: schema history imports the codecs, which this module need not load.
        from stream_processors.engine.schema_history import prepare_saga_schemas

        what = f"the {definition.name} processor"
        while True:
            if not wait_until_reachable(self.bootstrap, what, stopping):
                raise Stopping()
            try:
                if self.create_topics:
                    ensure_topics(topics, self.bootstrap)
                # Old writer schemas become readable; an incompatible schema change refuses to
                # start (IncompatibleSchemaError naming topic, schema and field); ours are kept.
                return prepare_saga_schemas(definition, topics, self.bootstrap)
            except KafkaUnavailable as error:  # it went away again between the two
                log.warning("%s: %s", what, error)

    def changelog_id(self, topic: str) -> str:
        return topic_id(topic, self.bootstrap)

    def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` has on the cluster."""
        admin = connect_admin(self.bootstrap, "sagalog-admin")
        return len(metadata(admin, self.bootstrap, topic).topics[topic].partitions)

    def limits(self, topic: str) -> limits.Limits:
        if self._limits is None:
            settings = producer_config(self.bootstrap, f"{self.saga}-processor")
            self._limits = BrokerLimits(self.bootstrap, settings)
        return self._limits.limits(topic)

    def producer(self, transactional_id: str) -> Producer:
        client_id = f"{self.saga}-processor"
        return ConfluentProducer(producer_config(self.bootstrap, client_id, transactional_id))

    def consumer(self, group: str, instance_id: str) -> Consumer:
        settings = {
            "partition.assignment.strategy": "range",
            "max.poll.interval.ms": 300_000,
            # Static membership: a restarted process (same slot, same id) takes its partitions
            # back at once instead of waiting for a rebalance; a dead one's partitions move to
            # the others after the session timeout.
            "group.instance.id": instance_id,
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
        }
        return ConfluentConsumer(
            consumer_config(self.bootstrap, f"{self.saga}-processor", group, **settings)
        )

    def restorer(self) -> Restorer:
        return ConfluentRestorer(
            consumer_config(
                self.bootstrap, f"{self.saga}-restore", None, **restorer_settings(self.saga)
            )
        )


#: How long the restorer asks for a topic's metadata before its first assignment of it.
METADATA_TIMEOUT = 2.0


def restorer_settings(saga: str) -> dict[str, Any]:
    """The restore consumer's librdkafka settings, beyond ``consumer_config``'s."""
    return {
        # Never commits: the group id only satisfies the client.
        "group.id": f"sagalog.{saga}.restore",
        # A partition whose tail is aborted records or markers returns nothing; do not wait
        # 500 ms to learn it. Nor 20: the broker answers one connection's requests in turn, so
        # the next partition's watermarks waited behind the last fetch of the one before (a
        # fifth of a restore).
        "fetch.wait.max.ms": 5,
        # The fetch queue is bounded: restore reads as fast as it applies, and librdkafka's
        # default (64 MB per client) was a large part of resident memory at 1M instances.
        "queued.max.messages.kbytes": RESTORE_QUEUE_KBYTES,
        # Once that queue is full, librdkafka postpones the partition's next fetch by this
        # much (1,000 ms by default), long after the restore has emptied it: a partition of
        # 125,000 snapshots (31 MB) was read at 60,000 records/s, the restore waiting in
        # ``consume`` 90 % of the time; with 10 ms, 900,000-1,000,000/s (docs/benchmarks.md,
        # 2026-12-03 07:10).
        "fetch.queue.backoff.ms": 10,
    }


class ConfluentRestorer(ConfluentConsumer):
    """A read_committed consumer whose ``written_offsets`` asks a read_uncommitted one
    (``kafka.reading.written_end`` says why). Seen without it: a processor restoring a
    partition given up a moment before read none of the snapshots and flow rows of the previous
    owner's last transaction, committed in its revoke, and those sagas never went on."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self._ends = ConfluentConsumer(written_end(config))
        self._known: set[str] = set()  # topics whose metadata this consumer has asked for

    def written_offsets(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        low, high = self._ends.get_watermark_offsets(partition, timeout=timeout, cached=False)
        return int(low), int(high)

    def assign(self, partitions: list[TopicPartition]) -> None:
        """Assign, having asked for the metadata of each topic not seen before. Why: librdkafka
        learns the leaders of a topic first assigned (not subscribed) on its topic scan, once a
        second, and fetches nothing until then: a restore's first partition read nothing for
        0.9 s in 2 restores of 5 (docs/benchmarks.md, 2026-12-03 14:30). Asking first, a fresh
        restorer's first record came 13-72 ms after its assignment, against up to 411 ms."""
        for topic in {p.topic for p in partitions} - self._known:
            try:
                self.list_topics(topic, timeout=METADATA_TIMEOUT)
            except KafkaException as error:  # no harm: the scan still finds the leaders
                log.info("restorer: no metadata for %s yet (%s)", topic, error)
                continue
            self._known.add(topic)
        super().assign(partitions)

    def close(self) -> None:
        self._ends.close()
        super().close()
