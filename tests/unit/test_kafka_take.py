"""``take``: a batch read that returns at its first input with what is already fetched."""

from __future__ import annotations

from confluent_kafka import TopicPartition

from stream_processors.kafka.fake import FakeBroker, FakeConsumer
from stream_processors.kafka.reading import take

TOPIC = "t"


def _consumer(records: int) -> FakeConsumer:
    broker = FakeBroker(partitions=1)
    for n in range(records):
        broker.publish(TOPIC, f"k{n}".encode(), f"v{n}".encode())
    consumer = FakeConsumer(broker)
    consumer.assign([TopicPartition(TOPIC, 0, 0)])
    return consumer


def test_take_returns_the_first_input_and_what_is_already_there() -> None:
    consumer = _consumer(5)
    taken = take(consumer, 3, timeout=0.1)
    assert [m.value() for m in taken] == [b"v0", b"v1", b"v2"]
    rest = take(consumer, 10, timeout=0.1)
    assert [m.value() for m in rest] == [b"v3", b"v4"]
    assert take(consumer, 10, timeout=0.1) == []


def test_take_one_reads_only_the_first() -> None:
    consumer = _consumer(2)
    assert [m.value() for m in take(consumer, 1, timeout=0.1)] == [b"v0"]
    assert [m.value() for m in take(consumer, 1, timeout=0.1)] == [b"v1"]
