"""The broker is real and has what the engine relies on.

Transactions (commit visible, abort invisible under read_committed), offsets committed through a
transaction, log compaction, and consumer-group resumption: if any of these fails, nothing the
engine promises can hold, so these run before everything else.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from tests.conftest import KafkaCluster

pytestmark = pytest.mark.kafka


def _consumer(kafka: KafkaCluster, group: str, **extra: object) -> Consumer:
    config: dict[str, object] = {
        "bootstrap.servers": kafka.bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    }
    config.update(extra)
    return Consumer(config)


def _drain(consumer: Consumer, idle_seconds: float = 3.0, limit: float = 30.0) -> list[Message]:
    """Read until nothing new has arrived for ``idle_seconds`` since partitions were assigned.

    The idle clock starts only once the group has assigned partitions: joining a group can take
    seconds on a fresh broker, and silence before that says nothing about the topic.
    """
    records: list[Message] = []
    deadline = time.monotonic() + limit
    last_seen: float | None = None
    while time.monotonic() < deadline:
        for message in consumer.consume(num_messages=500, timeout=0.5):
            assert message.error() is None, message.error()
            records.append(message)
            last_seen = time.monotonic()
        if last_seen is None and consumer.assignment():
            last_seen = time.monotonic()
        if last_seen is not None and time.monotonic() - last_seen >= idle_seconds:
            break
    return records


def _transactional_producer(kafka: KafkaCluster, transactional_id: str) -> Producer:
    producer = Producer(
        {"bootstrap.servers": kafka.bootstrap, "transactional.id": transactional_id}
    )
    producer.init_transactions(30)
    return producer


def test_read_committed_sees_committed_and_not_aborted_transactions(
    kafka: KafkaCluster, unique_name: Callable[[str], str]
) -> None:
    topic = kafka.create_topic(unique_name("txn"))
    producer = _transactional_producer(kafka, unique_name("txn-producer"))

    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, key=b"k", value=f"committed-{i}".encode())
    producer.commit_transaction(30)

    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, key=b"k", value=f"aborted-{i}".encode())
    producer.flush(30)  # the aborted records really are in the log, not just in a buffer
    producer.abort_transaction(30)

    consumer = _consumer(kafka, unique_name("txn-reader"))
    consumer.subscribe([topic])
    values = [m.value() for m in _drain(consumer)]
    consumer.close()

    assert values == [f"committed-{i}".encode() for i in range(5)]

    # A read_uncommitted reader does see the aborted records: the filter above is the broker's.
    dirty = _consumer(kafka, unique_name("dirty-reader"), **{"isolation.level": "read_uncommitted"})
    dirty.subscribe([topic])
    dirty_values = [m.value() for m in _drain(dirty)]
    dirty.close()
    assert b"aborted-0" in dirty_values


def test_send_offsets_to_transaction_moves_the_groups_committed_offset(
    kafka: KafkaCluster, unique_name: Callable[[str], str]
) -> None:
    source = kafka.create_topic(unique_name("source"))
    sink = kafka.create_topic(unique_name("sink"))
    group = unique_name("pipe")

    plain = Producer({"bootstrap.servers": kafka.bootstrap})
    for i in range(10):
        plain.produce(source, value=str(i).encode())
    plain.flush(30)

    consumer = _consumer(kafka, group)
    consumer.subscribe([source])
    inputs = _drain(consumer)
    assert len(inputs) == 10

    producer = _transactional_producer(kafka, unique_name("pipe-producer"))
    producer.begin_transaction()
    for message in inputs[:6]:
        producer.produce(sink, value=message.value())
    # The offset sent is the next one to read: last processed + 1.
    next_offset = inputs[5].offset() + 1
    producer.send_offsets_to_transaction(
        [TopicPartition(source, 0, next_offset)], consumer.consumer_group_metadata(), 30
    )
    producer.commit_transaction(30)

    committed = consumer.committed([TopicPartition(source, 0)], timeout=10)
    consumer.close()
    assert committed[0].offset == 6

    # A new member of the group starts exactly after what the transaction committed.
    resumed = _consumer(kafka, group)
    resumed.subscribe([source])
    rest = _drain(resumed)
    resumed.close()
    assert [m.value() for m in rest] == [str(i).encode() for i in range(6, 10)]


def test_compacted_topic_keeps_only_the_latest_value_per_key(
    kafka: KafkaCluster, unique_name: Callable[[str], str]
) -> None:
    # Only closed segments are compacted: roll segments quickly and clean at any dirt ratio.
    topic = kafka.create_topic(
        unique_name("compact"),
        **{
            "cleanup.policy": "compact",
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.001",
            "delete.retention.ms": "100",
            "min.compaction.lag.ms": "0",
        },
    )
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    keys = [f"key-{k}".encode() for k in range(3)]
    for version in range(20):
        for key in keys:
            producer.produce(topic, key=key, value=f"v{version}".encode())
        producer.flush(30)
        time.sleep(0.05)

    deadline = time.monotonic() + 90
    while True:
        # Keep rolling: a record written now closes the previous segment so it can be cleaned.
        producer.produce(topic, key=b"roll", value=b"x")
        producer.flush(30)
        reader = _consumer(kafka, unique_name("compact-reader"))
        reader.assign([TopicPartition(topic, 0, 0)])
        records = [(m.key(), m.value()) for m in _drain(reader, idle_seconds=1.5)]
        reader.close()
        by_key = [r for r in records if r[0] in keys]
        if len(by_key) == len(keys) or time.monotonic() > deadline:
            break
        time.sleep(2)

    assert len(by_key) == len(keys), f"not compacted after 90 s: {len(by_key)} records for 3 keys"
    assert {key: value for key, value in by_key} == {key: b"v19" for key in keys}


def test_group_resumes_from_its_committed_offset_after_the_consumer_restarts(
    kafka: KafkaCluster, unique_name: Callable[[str], str]
) -> None:
    topic = kafka.create_topic(unique_name("resume"), partitions=3)
    group = unique_name("resume-group")
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    for i in range(30):
        producer.produce(topic, key=str(i).encode(), value=str(i).encode())
    producer.flush(30)

    first = _consumer(kafka, group)
    first.subscribe([topic])
    seen_first = _drain(first)
    assert len(seen_first) == 30
    first.commit(asynchronous=False)
    first.close()

    for i in range(30, 45):
        producer.produce(topic, key=str(i).encode(), value=str(i).encode())
    producer.flush(30)

    second = _consumer(kafka, group)
    second.subscribe([topic])
    seen_second = sorted(int(m.value()) for m in _drain(second))
    second.close()
    assert seen_second == list(range(30, 45))
