"""Shared fixtures: the real Kafka broker that integration tests talk to.

Integration tests take the ``kafka`` fixture. When no broker answers it fails the test, whether
or not CI=true: a test that needs Kafka must never pass by skipping. ``make test`` starts a broker
(tools/kafka/broker.sh) and exports KAFKA_BOOTSTRAP_SERVERS before running pytest.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stream_processors.engine import tracing
from stream_processors.kafka.config import common


@dataclass(frozen=True)
class KafkaCluster:
    """A reachable broker plus helpers to make throwaway, uniquely named topics."""

    bootstrap: str
    admin: AdminClient

    def create_topic(self, name: str, partitions: int = 1, **config: str) -> str:
        futures = self.admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)]
        )
        for future in futures.values():
            future.result(timeout=30)
        return name


def _bootstrap() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


@pytest.fixture(scope="session")
def kafka() -> KafkaCluster:
    bootstrap = _bootstrap()
    admin = AdminClient(common(bootstrap, "sagalog-tests"))
    try:
        metadata = admin.list_topics(timeout=10)
    except Exception as error:
        pytest.fail(
            f"no Kafka broker reachable at {bootstrap} ({error}); run `make kafka` or `make test`",
            pytrace=False,
        )
    assert metadata.brokers, f"broker at {bootstrap} reported no brokers"
    return KafkaCluster(bootstrap, admin)


@pytest.fixture
def unique_name() -> Iterator[Callable[[str], str]]:
    """Topic and group names unique to one test, so tests never see each other's records."""
    run = uuid.uuid4().hex[:8]
    yield lambda prefix: f"{prefix}.{run}"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Spans the engine and workers of this process export, for the test to read."""
    spans = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(spans))
    try:
        yield spans
    finally:
        tracing.uninstall()
