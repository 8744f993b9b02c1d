"""Keys and the instances records name (``stream_processors.core.keys``), and bounded metric labels.

A source event is routed by the instance its fields name; an inbox record keyed by another
instance than it names is dead-lettered as ``key-mismatch``. The processor's part is checked
with stand-ins for the Kafka message and producer: a record keyed wrongly goes to the dead-letter
topic and never reaches ``decide``, and however many distinct operator actions or reasons the
records carry, the metrics' label values stay a fixed set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from examples.order_fulfillment.messages import OrderPlaced, PaymentCompleted, PaymentRefunded
from examples.order_fulfillment.saga import OrderFulfillment
from sagas.testing import SagaTest
from stream_processors.core.keys import key_mismatch, route_key
from stream_processors.core.model import CommandFailed, OperatorAction
from stream_processors.engine import metrics
from stream_processors.engine.processor import ProcessorConfig, SagaProcessor
from stream_processors.engine.routing import COMMAND_ID, DLQ_REASON, INSTANCE, NOTE
from tests.unit.test_failure_handling import Kit, declare, kit  # noqa: F401  (kit: a fixture)

SAGA = OrderFulfillment.definition
ORDER = OrderPlaced(
    order_id="o-1", customer_id="c-1", amount_cents=4_200, card_token="tok", postcode="N1 9GU"
)
PAID = PaymentCompleted(order_id="o-1", payment_id="pay-1")


# --- the pure comparison ------------------------------------------------------------------------


def test_a_start_event_is_routed_by_the_saga_key_field_not_the_event_class_key() -> None:
    assert route_key(SAGA, ORDER) == "o-1"
    by_customer = dataclasses.replace(SAGA, key="customer_id")
    assert route_key(by_customer, ORDER) == "c-1"
    assert key_mismatch(by_customer, ORDER, "c-1") is None
    assert key_mismatch(by_customer, ORDER, "o-1") == (
        "OrderPlaced names instance 'c-1', its key is 'o-1'"
    )
    assert route_key(SAGA, PAID) is None  # declares no key field: a worker's reply


def test_a_start_event_keyed_by_another_instance_is_a_mismatch() -> None:
    assert key_mismatch(SAGA, ORDER, "o-1") is None
    assert key_mismatch(SAGA, ORDER, "o-2") is not None


def test_a_reply_is_matched_to_its_key_by_its_headers_not_its_fields() -> None:
    cid = "order_fulfillment/o-1/payment/1"
    # Its fields are the service's business: a payment reply naming another order is fine.
    other = PaymentCompleted(order_id="someone-else", payment_id="p")
    assert key_mismatch(SAGA, other, "o-1", cid, "o-1") is None
    assert key_mismatch(SAGA, PAID, "o-1", None, None) is None  # decide ignores it: no id
    assert key_mismatch(SAGA, PAID, "o-1", cid, "o-2") == (
        "PaymentCompleted: sagalog.instance is 'o-2', its key is 'o-1'"
    )
    assert key_mismatch(SAGA, PAID, "o-2", cid) is not None
    assert key_mismatch(SAGA, PAID, "o-1", "order_fulfillment/o-1/payment") is None  # a signal
    refunded = PaymentRefunded(order_id="o-1", payment_id="p")
    assert key_mismatch(SAGA, refunded, "o-1", "order_fulfillment/o-11/payment/1") is not None
    failed = CommandFailed(error="E", message="")
    assert key_mismatch(SAGA, failed, "o-1", "order_fulfillment/o-2/payment/1") is not None
    # Another saga's command id is not this saga's to judge: decide finds it stale.
    assert key_mismatch(SAGA, failed, "o-1", "other_saga/o-2/payment/1") is None


def test_an_operator_action_is_named_by_its_key_alone() -> None:
    action = OperatorAction(action="retry", by="me", reason="why")
    assert key_mismatch(SAGA, action, "o-1") is None


def test_an_event_a_wait_waits_for_is_named_by_its_key_field(kit: Kit) -> None:  # noqa: F811
    definition = declare(kit, wait={})
    approved = kit.approved(order_id="o-1", approver="carol")
    assert route_key(definition, approved) == "o-1"
    assert key_mismatch(definition, approved, "o-1") is None
    assert key_mismatch(definition, approved, "o-2") is not None


# --- the processor, without a broker ------------------------------------------------------------


class _Message:
    def __init__(self, key: str, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self._key, self._value, self._headers = key.encode(), value, headers

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def topic(self) -> str:
        return "order_fulfillment.inbox"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


class _Producer:
    def __init__(self) -> None:
        self.produced: list[tuple[str, dict[str, Any]]] = []

    def produce(self, topic: str, **record: Any) -> None:
        self.produced.append((topic, record))


def _processor(tmp_path: Path) -> tuple[SagaProcessor, _Producer]:
    processor = SagaProcessor(SAGA, ProcessorConfig(state_dir=tmp_path))
    producer = _Producer()
    processor.producer = producer  # type: ignore[assignment]
    test = SagaTest(OrderFulfillment)
    test.start(ORDER)
    processor._staged[(0, "o-1")] = test.instance
    return processor, producer


def _labels(metric: Any, label: str, **match: str) -> set[str]:
    return {
        sample.labels[label]
        for family in metric.collect()
        for sample in family.samples
        if all(sample.labels.get(k) == v for k, v in match.items())
    }


def test_an_inbox_record_keyed_by_another_instance_is_dead_lettered(tmp_path: Path) -> None:
    processor, producer = _processor(tmp_path)
    try:
        before = processor._staged[(0, "o-1")]
        headers = [(COMMAND_ID, b"order_fulfillment/o-1/payment/1"), (INSTANCE, b"o-1")]
        processor._process(_Message("o-2", PAID.encode(), headers), 0)  # type: ignore[arg-type]
        [(topic, record)] = producer.produced
        assert topic == "order_fulfillment.dlq"
        assert dict(record["headers"])[DLQ_REASON] == b"key-mismatch"
        assert processor._staged[(0, "o-1")] is before
    finally:
        processor.store.close()


def test_metric_labels_stay_a_fixed_set_whatever_the_records_say(tmp_path: Path) -> None:
    processor, producer = _processor(tmp_path)
    try:
        for n in range(300):
            action = OperatorAction(action=f"made-up-{n}", by="mallory", reason="noise")
            note = [(NOTE, f"made-up-{n} by mallory".encode())]
            processor._process(_Message("o-1", action.encode(), note), 0)  # type: ignore[arg-type]
        assert producer.produced == []  # ignored: nothing journaled, nothing sent
        ignored = _labels(metrics.IGNORED, "reason", saga=SAGA.name)
        assert "operator-unknown-not-applicable" in ignored
        assert ignored <= metrics.IGNORED_REASONS
        for n in range(300):  # reasons from any source are bounded too
            metrics.count_ignored("bounded-test", f"reason-{n}")
            metrics.count_dead_letter("bounded-test", f"reason-{n}")
        assert _labels(metrics.IGNORED, "reason", saga="bounded-test") == {metrics.OTHER}
        assert _labels(metrics.DEAD_LETTERS, "reason", owner="bounded-test") == {metrics.OTHER}
    finally:
        processor.store.close()
