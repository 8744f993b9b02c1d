"""The restorer asks for a topic's metadata before its first assignment of that topic.

Without it, librdkafka learns the leaders of a topic that is assigned (not subscribed) only on
its topic scan, once a second, and a restore's first partition read nothing until then. These
tests need no broker: the consumer is made for an address nobody listens on, and
``list_topics`` is replaced to record the calls (or to fail as an unreachable broker would).
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream_processors.kafka.clients import ConfluentRestorer, restorer_settings
from stream_processors.kafka.config import consumer_config


class Recording(ConfluentRestorer):
    def __init__(self, failing: set[str] | None = None) -> None:
        config = consumer_config("127.0.0.1:1", "test-restore", None, **restorer_settings("t"))
        super().__init__(config)
        self.asked: list[str] = []
        self.failing = failing or set()

    def list_topics(self, topic: str | None = None, *args: Any, **kwargs: Any) -> Any:
        assert topic is not None
        self.asked.append(topic)
        if topic in self.failing:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        return None


def test_each_topic_is_asked_for_once_before_it_is_first_assigned() -> None:
    restorer = Recording()
    try:
        restorer.assign([TopicPartition("snapshots", 0, 5)])
        assert restorer.asked == ["snapshots"]
        restorer.assign([TopicPartition("snapshots", 1, 0)])
        restorer.assign([TopicPartition("snapshots", 2, 0), TopicPartition("flow", 2, 0)])
        assert restorer.asked == ["snapshots", "flow"]
        assert {(p.topic, p.partition, p.offset) for p in restorer.assignment()} == {
            ("snapshots", 2, 0),
            ("flow", 2, 0),
        }
    finally:
        restorer.close()


def test_a_topic_whose_metadata_cannot_be_read_is_assigned_anyway_and_asked_again() -> None:
    restorer = Recording(failing={"snapshots"})
    try:
        restorer.assign([TopicPartition("snapshots", 0, 7)])
        assert [(p.partition, p.offset) for p in restorer.assignment()] == [(0, 7)]
        restorer.failing.clear()
        restorer.assign([TopicPartition("snapshots", 1, 0)])
        restorer.assign([TopicPartition("snapshots", 2, 0)])
        assert restorer.asked == ["snapshots", "snapshots"]
    finally:
        restorer.close()
