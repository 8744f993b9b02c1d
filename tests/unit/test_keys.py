"""Keys and the instances records name (``stream_processors.core.keys``), and bounded metric labels.

A source event is routed by the instance its fields name; an inbox record keyed by another
instance than it names is dead-lettered as ``key-mismatch``. The processor's part is checked
on in-memory Kafka (``stream_processors.kafka.fake``): a record keyed wrongly goes to the
dead-letter topic and never changes the instance, and however many distinct operator actions or
reasons the records carry, the metrics' label values stay a fixed set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from examples.order_fulfillment.messages import OrderPlaced, PaymentCompleted, PaymentRefunded
from examples.order_fulfillment.saga import OrderFulfillment
from stream_processors.core.keys import key_mismatch, route_key
from stream_processors.core.model import CommandFailed, OperatorAction
from stream_processors.engine import metrics
from stream_processors.engine.routing import COMMAND_ID, DLQ_REASON, INSTANCE, NOTE
from tests.unit.processor_rig import PAYMENTS, Rig
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


# --- the processor, on in-memory Kafka (tests/unit/processor_rig.py) ---------------------------


def _labels(metric: Any, label: str, **match: str) -> set[str]:
    return {
        sample.labels[label]
        for family in metric.collect()
        for sample in family.samples
        if all(sample.labels.get(k) == v for k, v in match.items())
    }


def _started(tmp_path: Path) -> Rig:
    """A processor with order o-1 started and committed."""
    rig = Rig(tmp_path)
    rig.start()
    rig.place("o-1")
    rig.steps(3)
    assert rig.stored("o-1") is not None
    return rig


def test_an_inbox_record_keyed_by_another_instance_is_dead_lettered(tmp_path: Path) -> None:
    rig = _started(tmp_path)
    try:
        before = rig.stored("o-1")
        headers = [(COMMAND_ID, b"order_fulfillment/o-1/payment/1"), (INSTANCE, b"o-1")]
        rig.broker.publish(rig.topics.inbox, b"o-2", PAID.encode(), headers)
        rig.steps(2)
        [letter] = rig.visible(rig.topics.dlq)
        assert dict(letter.headers() or [])[DLQ_REASON] == b"key-mismatch"
        assert rig.stored("o-1") == before and rig.stored("o-2") is None
    finally:
        rig.processor.close()


def test_metric_labels_stay_a_fixed_set_whatever_the_records_say(tmp_path: Path) -> None:
    rig = _started(tmp_path)
    try:
        journal = len(rig.visible(rig.topics.journal))
        for n in range(300):
            action = OperatorAction(action=f"made-up-{n}", by="mallory", reason="noise")
            note = [(NOTE, f"made-up-{n} by mallory".encode())]
            rig.broker.publish(rig.topics.inbox, b"o-1", action.encode(), note)
        rig.steps(2)
        # Ignored: nothing journaled, nothing sent.
        assert len(rig.visible(rig.topics.journal)) == journal
        assert len(rig.visible(PAYMENTS)) == 1 and rig.visible(rig.topics.dlq) == []
        ignored = _labels(metrics.IGNORED, "reason", saga=SAGA.name)
        assert "operator-unknown-not-applicable" in ignored
        assert ignored <= metrics.IGNORED_REASONS
        for n in range(300):  # reasons from any source are bounded too
            metrics.count_ignored("bounded-test", f"reason-{n}")
            metrics.count_dead_letter("bounded-test", f"reason-{n}")
        assert _labels(metrics.IGNORED, "reason", saga="bounded-test") == {metrics.OTHER}
        assert _labels(metrics.DEAD_LETTERS, "reason", owner="bounded-test") == {metrics.OTHER}
    finally:
        rig.processor.close()
