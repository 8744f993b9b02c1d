"""``sagas diagram --instance`` reads the instance from the saga's journal on the real broker.

A saga of its own (the order saga's steps under another name, so that its hand-written
journal is no other test's business: a replay of the order saga's topics must not meet an
instance with no snapshot) gets one instance's entries as the processor would write them (the
decisions of ``decide``, keyed by instance, in its partition, stamped with their times); no
processor runs. The command folds them like ``sagas state`` and colours the diagram: now (the
payment succeeded, the shipping is in flight) and as of the journal position where only the
payment had been sent.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner, Result

from examples.order_fulfillment.messages import OrderPlaced, OrderState, PaymentCompleted
from examples.order_fulfillment.saga import OrderFulfillment
from sagas import Saga
from sagas.cli import app
from stream_processors.core.decide import Input, decide
from stream_processors.core.journal import JournalEntry, Kind
from stream_processors.core.partitioner import partition_for
from stream_processors.kafka.config import producer_config
from stream_processors.kafka.topics import SagaTopics, ensure_topics
from tests.conftest import KafkaCluster

pytestmark = pytest.mark.kafka


class DiagramOrders(Saga, name="diagram_test_orders"):
    """The order saga's steps and evolvers, on topics of its own."""

    start = OrderPlaced
    state = OrderState
    begin = staticmethod(OrderFulfillment.begin)
    payment = OrderFulfillment.payment
    shipping = OrderFulfillment.shipping
    paid = OrderFulfillment.paid
    labelled = OrderFulfillment.labelled


TARGET = f"{__name__}:DiagramOrders"
DEFINITION = DiagramOrders.definition
TOPICS = SagaTopics.for_saga(DEFINITION, 8)


def _journal_of_a_paid_order(order_id: str) -> list[JournalEntry]:
    """The entries of an order whose payment completed: its shipping is in flight."""
    placed = OrderPlaced(
        order_id=order_id, customer_id="c", amount_cents=100, card_token="tok", postcode="1"
    )
    started = decide(DEFINITION, None, Input(placed, placed.encode()), 1_700_000_000_000)
    assert started.instance is not None
    paid = PaymentCompleted(order_id=order_id, payment_id="pay-1")
    command_id = started.instance.steps["payment"].command_id
    shipping = decide(
        DEFINITION, started.instance, Input(paid, paid.encode(), command_id), 1_700_000_001_000
    )
    return [*started.entries, *shipping.entries]


def _journal(kafka: KafkaCluster, entries: list[JournalEntry]) -> None:
    ensure_topics(TOPICS, kafka.bootstrap)
    producer = Producer(producer_config(kafka.bootstrap, "diagram-test"))
    for entry in entries:
        key = entry.instance.encode()
        producer.produce(
            TOPICS.journal,
            key=key,
            value=entry.encode(),
            partition=partition_for(key, TOPICS.partitions),
            timestamp=entry.at_ms,
        )
    assert producer.flush(30) == 0


def _diagram(kafka: KafkaCluster, *args: str) -> str:
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap}
    result: Result = CliRunner().invoke(app, ["diagram", TARGET, *args], env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def _classes(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for members, kind in re.findall(r"^\s*class (\S+) (\w+)$", text, re.MULTILINE):
        found.update(dict.fromkeys(members.split(","), kind))
    return found


def test_the_diagram_of_an_instance_read_from_the_journal(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    order_id = f"diagram-{uuid.uuid4().hex[:8]}"
    entries = _journal_of_a_paid_order(order_id)
    _journal(kafka, entries)
    store = str(tmp_path / "no-store")  # no local snapshot: the partition is read from its start

    now = _diagram(kafka, "--instance", order_id, "--state-dir", store)
    assert f"{order_id} is running" in now.splitlines()[1]
    assert _classes(now) == {"payment": "succeeded", "shipping": "active"}
    assert "note right of shipping : pending" in now

    sent = next(e.seq for e in entries if e.kind == Kind.COMMAND_SENT.value)
    then = _diagram(kafka, "--instance", order_id, "--at", str(sent), "--state-dir", store)
    assert _classes(then) == {"payment": "active"}


def test_an_unknown_instance_is_an_error(kafka: KafkaCluster, tmp_path: Path) -> None:
    ensure_topics(TOPICS, kafka.bootstrap)
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap}
    args = ["diagram", TARGET, "--instance", "nobody", "--state-dir", str(tmp_path)]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 1
    assert "no journal entries for nobody" in result.output
