"""A saga processor on in-memory Kafka (``stream_processors.kafka.fake``), for unit tests.

``Rig`` builds the order saga's processor on a ``FakeBroker`` with a clock the test moves, and
says what is visible on the topics (read committed, as any consumer would see them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Message, TopicPartition

from examples.order_fulfillment.messages import OrderPlaced
from examples.order_fulfillment.saga import OrderFulfillment
from stream_processors.codecs.signing import Keyring
from stream_processors.core.model import CommandFailed, SagaDefinition
from stream_processors.engine.processor import ProcessorConfig, SagaProcessor
from stream_processors.engine.routing import COMMAND_ID, header, reply_headers
from stream_processors.kafka.fake import FakeBroker, FakeClients, FakeConsumer, FakeProducer

SAGA = OrderFulfillment.definition
PARTITIONS = 2
SOURCE = "orders.events"
PAYMENTS = "payments.commands"


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def order(order_id: str = "o-1") -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id, customer_id="c", amount_cents=100, card_token="t", postcode="1"
    )


@dataclass
class Rig:
    state_dir: Path
    commit_interval_ms: int = 100
    #: 0: a caught-up step commits what it did at once.
    idle_commit_ms: int = 0
    signing: Keyring | None = None
    broker: FakeBroker = field(default_factory=lambda: FakeBroker(partitions=PARTITIONS))
    clock: Clock = field(default_factory=Clock)
    saga: SagaDefinition = SAGA
    #: Off by default: most tests follow a source event through the inbox.
    direct: bool = False

    def __post_init__(self) -> None:
        self.clients = FakeClients(self.broker)
        config = ProcessorConfig(
            partitions=PARTITIONS,
            state_dir=self.state_dir,
            signing=self.signing,
            commit_interval_ms=self.commit_interval_ms,
            idle_commit_ms=self.idle_commit_ms,
            direct_sources=self.direct,
        )
        self.processor = SagaProcessor(self.saga, config, clock=self.clock, clients=self.clients)
        self.topics = self.processor.topics

    # -- the clients ---------------------------------------------------------------------------

    @property
    def consumer(self) -> FakeConsumer:
        return self.clients.consumers[-1]

    @property
    def producer(self) -> FakeProducer:
        return self.clients.producers[-1]

    def all_partitions(self) -> list[TopicPartition]:
        return [
            TopicPartition(topic, p)
            for topic in (self.topics.inbox, *self.topics.sources)
            for p in range(PARTITIONS)
        ]

    def start(self) -> None:
        """Started, given every partition, and restored."""
        assert self.processor.start()
        self.consumer.assign_next(self.all_partitions())
        self.steps(2)

    def steps(self, n: int = 1) -> None:
        for _ in range(n):
            self.processor.step()

    def age_transaction(self) -> None:
        """Move the clock on a second (a caught-up step commits at once: ``idle_commit_ms`` 0)."""
        self.clock.now += 1

    # -- the topics ---------------------------------------------------------------------------

    def place(self, order_id: str = "o-1") -> None:
        self.broker.publish(SOURCE, order_id.encode(), order(order_id).encode())

    def fail_command(self, command: Message) -> None:
        """The worker's reply to ``command``: a transient failure (the saga retries it later)."""
        command_id = header(command.headers(), COMMAND_ID)
        assert command_id is not None
        failed = CommandFailed(error="Timeout", message="try later").encode()
        key = command.key()
        assert key is not None
        self.broker.publish(self.topics.inbox, key, failed, reply_headers(command_id))

    def visible(self, topic: str) -> list[Message]:
        return self.broker.records(topic)

    def committed(self) -> dict[tuple[str, int], int]:
        return dict(self.broker.committed[f"sagalog.{SAGA.name}"])

    def stored(self, instance_id: str = "o-1") -> bytes | None:
        partition = self.broker.partition_of(instance_id.encode())
        return self.processor.store.get(partition, instance_id)

    def snapshot_records(self, count: int, partition: int, transaction: int | None = None) -> None:
        """``count`` snapshots of made-up instances in the changelog's ``partition``: committed,
        or in the open ``transaction`` (``FakeBroker.new_transaction``)."""
        from sagas.testing import SagaTest
        from stream_processors.core.instance import encode_snapshot

        test = SagaTest(OrderFulfillment)
        test.start(order())
        for n in range(count):
            instance = dataclasses.replace(test.instance, instance_id=f"r-{n}")
            value = encode_snapshot(instance)
            self.broker.append(
                self.topics.snapshots, partition, transaction, key=f"r-{n}".encode(), value=value
            )
