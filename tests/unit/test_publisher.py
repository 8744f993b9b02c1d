"""The publisher's producer settings (sent at once by default, lingering only when asked), and
what it does with an event the broker did not take."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from confluent_kafka import KafkaError, Message

import sagas.publisher as publisher_module
from examples.order_fulfillment.messages import OrderPlaced
from sagas.publisher import DeliveryFailed, Publisher


class RecordingProducer:
    """Stands in for confluent-kafka's producer: keeps the configuration it was given."""

    configs: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.configs.append(config)


@pytest.fixture
def configs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    RecordingProducer.configs = []
    monkeypatch.setattr(publisher_module, "Producer", RecordingProducer)
    return RecordingProducer.configs


def test_events_are_sent_as_soon_as_they_are_queued(configs: list[dict[str, Any]]) -> None:
    Publisher("127.0.0.1:1", record_schemas=False)
    (config,) = configs
    assert config["linger.ms"] == 0
    assert config["enable.idempotence"] is True and config["acks"] == "all"


def test_linger_is_the_callers_choice(configs: list[dict[str, Any]]) -> None:
    Publisher("127.0.0.1:1", record_schemas=False, linger_ms=20)
    assert configs[0]["linger.ms"] == 20


def test_a_negative_linger_is_refused(configs: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match="linger_ms must be 0 or more, not -1"):
        Publisher("127.0.0.1:1", record_schemas=False, linger_ms=-1)
    assert configs == []


class FailingProducer(RecordingProducer):
    """Stands in for a producer whose broker refuses every event: each flush reports them."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.pending: list[tuple[Message, Any]] = []

    def produce(self, topic: str, key: bytes | None, on_delivery: Any, **_: Any) -> None:
        self.pending.append((Message(topic=topic, key=key), on_delivery))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        for message, on_delivery in self.pending:
            on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), message)
        self.pending.clear()
        return 0


def test_an_event_the_broker_did_not_take_is_counted_logged_and_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(publisher_module, "Producer", FailingProducer)
    seen: list[KafkaError | None] = []
    failed = pytest.raises(DeliveryFailed, match=r"2 events failed to be delivered .*timed out")
    with failed, Publisher("127.0.0.1:1", record_schemas=False) as publisher:
        publisher.publish(
            OrderPlaced(
                order_id="o-1", customer_id="c", amount_cents=1, card_token="t", postcode="p"
            )
        )
        publisher.publish(
            OrderPlaced(
                order_id="o-2", customer_id="c", amount_cents=1, card_token="t", postcode="p"
            ),
            on_delivery=lambda error, _: seen.append(error),
        )
    assert publisher.failed == 2
    assert [(f.topic, f.key) for f in publisher.failures] == [
        ("orders.events", b"o-1"),
        ("orders.events", b"o-2"),
    ]
    assert len(seen) == 1 and seen[0] is not None  # the caller's callback too
    assert "orders.events (key b'o-1') not delivered" in caplog.text


def test_flush_raises_on_failure_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher_module, "Producer", FailingProducer)
    publisher = Publisher("127.0.0.1:1", record_schemas=False)
    publisher.publish(
        OrderPlaced(order_id="o-1", customer_id="c", amount_cents=1, card_token="t", postcode="p")
    )
    assert publisher.flush() == 0 and publisher.failed == 1
    with pytest.raises(DeliveryFailed, match="1 events failed"):
        publisher.flush(raise_on_failure=True)
