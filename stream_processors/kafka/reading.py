"""Reading what is committed on a topic, from given offsets up to where it ends now.

Replay, verification, the dead-letter tools and the chaos checks all need the same thing: every
committed record of some partitions, from an offset to the end offset seen when reading began,
with no consumer group joined and nothing committed. Three details make it worth one place:
under ``read_committed`` the last offsets of a partition are often transaction markers, which
are never delivered, so "done" means the consumer's *position* reached the end, not that the
record at end - 1 was read; a partition with nothing to read has no position to reach; and the
end is what was written, not what a read_committed reader sees as the end (``written_end``).

``take`` reads a batch without holding its first record back; the processor, the worker and
``committed_records`` read with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from stream_processors.kafka.config import consumer_config

# Leadership moves (or is still being settled on a topic created a moment ago): worth retrying.
_TRANSIENT = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
    # A broker that was killed leaves the metadata: requests that were waiting on it fail so.
    KafkaError._DESTROY_BROKER,
    KafkaError._TRANSPORT,
}


def watermarks(consumer: Consumer, tp: TopicPartition, patience: float = 30) -> tuple[int, int]:
    """(low, high) offsets of ``tp`` from the broker, retrying transient leadership errors."""
    deadline = time.monotonic() + patience
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=15, cached=False)
            return int(low), int(high)
        except KafkaException as error:
            kafka_error = error.args[0]
            transient = kafka_error.retriable() or kafka_error.code() in _TRANSIENT
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def written_end(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` for a consumer that asks only where partitions' writes end (read_uncommitted).

    Why: a read_committed consumer's high watermark is the last stable offset, which stops at
    the first record of any transaction not complete, and a transaction committed a moment ago
    is not complete until the broker has written its markers. Reading "to the end" up to that
    offset could miss the last transaction of a writer that has just committed (a partition's
    previous owner, committing as it gives the partition up); reading on to the written end
    waits for that transaction's outcome instead (a crashed writer's is decided within
    ``transaction.timeout.ms``), and read_committed still skips it if it aborted."""
    return config | {"isolation.level": "read_uncommitted"}


class Batches(Protocol):
    """The two reads ``take`` makes (confluent-kafka's consumer and the in-memory one fit)."""

    def poll(self, timeout: float = -1) -> Message | None: ...
    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]: ...


def take(consumer: Batches, most: int, timeout: float) -> list[Message]:
    """Up to ``most`` messages: waits at most ``timeout`` for the first, none for the rest.

    ``consume(n, timeout)`` returns only once it has ``n`` messages or the timeout has passed,
    which on a quiet stream holds every input back by the whole timeout. ``poll`` returns as
    soon as one message is there; ``consume(n - 1, 0)`` then takes what is already fetched.
    Both read the same queue and serve rebalance callbacks and error events alike, so mixing
    them loses nothing (confluent-kafka documents both on one consumer).
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    if most <= 1:
        return [first]
    return [first, *consumer.consume(most - 1, timeout=0)]


class ReadTimeout(Exception):
    """The end was not reached in time (a transaction left open by a crashed writer, say)."""


def committed_records(
    topic: str,
    bootstrap: str | None = None,
    start: Mapping[int, int] | None = None,
    *,
    partitions: Iterable[int] | None = None,
    timeout: float = 120,
) -> Iterator[Message]:
    """Committed records of ``topic`` from ``start[partition]`` (default: the beginning) to the
    end offsets of the moment this starts, partition by partition in offset order.

    ``partitions`` limits the read (default: those in ``start``, else all of the topic's).
    """
    # The client wants a group id; assigning partitions never joins the group, nothing commits.
    group = f"sagalog-reader-{time.time_ns()}"
    consumer = Consumer(consumer_config(bootstrap, "sagalog-reader", group))
    # The end is what was written, a transaction still completing included (``written_end``).
    ender = Consumer(written_end(consumer_config(bootstrap, "sagalog-reader-ends", group)))
    try:
        if partitions is None:
            partitions = start.keys() if start else _all_partitions(consumer, topic)
        ends: dict[int, int] = {}
        assignment = []
        for partition in partitions:
            low, high = watermarks(ender, TopicPartition(topic, partition))
            begin = max(low, (start or {}).get(partition, low))
            if high > begin:
                ends[partition] = high
                assignment.append(TopicPartition(topic, partition, begin))
        if not assignment:
            return
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout
        while ends:
            for message in take(consumer, 5000, 0.2):
                error = message.error()
                if error is None:
                    yield message
                elif error.fatal():
                    raise KafkaException(error)
            for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                if tp.offset >= ends[tp.partition]:
                    del ends[tp.partition]
            if ends and time.monotonic() > deadline:
                raise ReadTimeout(
                    f"{topic}: partitions {sorted(ends)} not read to their end in {timeout} s"
                )
    finally:
        ender.close()
        consumer.close()


def _all_partitions(consumer: Consumer, topic: str) -> list[int]:
    return sorted(consumer.list_topics(topic, timeout=15).topics[topic].partitions)
