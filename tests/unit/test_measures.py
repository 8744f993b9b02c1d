"""What the metrics count (``stream_processors.core.measures``), from real decisions: no Kafka."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest

from examples.control_flow.saga import Fulfilment
from examples.order_fulfillment.messages import (
    MakePayment,
    OrderPlaced,
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    RefundPayment,
    ShippingFailed,
    ShippingLabelCreated,
)
from examples.order_fulfillment.saga import OrderFulfillment
from sagas import DeclarationError, Saga, Wait
from sagas.testing import SagaTest
from stream_processors.codecs.avro import decode
from stream_processors.codecs.records import CATALOG
from stream_processors.core.decide import Decision
from stream_processors.core.instance import Instance, encode_snapshot
from stream_processors.core.measures import OTHER, InstanceCounts, Measurer, Tally
from stream_processors.core.model import SagaDefinition
from stream_processors.core.policy import TIMEOUT, TRANSIENT, RetryPolicy
from tests.unit.flow_records import ID, A, Flow, Started, Verified, begin

SLA_S = 10


TIMED_ORDER = dataclasses.replace(OrderFulfillment.definition, sla_ms=SLA_S * 1000)
UNTIMED_ORDER = dataclasses.replace(OrderFulfillment.definition, sla_ms=None)


class Approval(Saga, name="approval", sla=timedelta(minutes=1)):
    """A wait for an event, then a command with a timeout (and one retry)."""

    start, state, begin = Started, Flow, staticmethod(begin)
    approved = Wait(success=Verified, timeout=3600)
    a = A.step(timeout=5, retry=RetryPolicy(max_attempts=2))


def order(order_id: str = "o-1") -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id, customer_id="c", amount_cents=100, card_token="t", postcode="1"
    )


class Recorder:
    """A ``SagaTest`` whose every decision is measured as the processor would measure it."""

    def __init__(self, saga: type[Saga] | SagaDefinition) -> None:
        self.definition = saga if isinstance(saga, SagaDefinition) else saga.definition
        self.test = SagaTest(saga, tick=1)
        self.measurer = Measurer(self.definition)

    def __call__(self, act: Callable[[SagaTest], Decision]) -> Tally:
        before = self.test.instance if self.test.started else None
        return self.measured(before, act(self.test))

    def measured(self, before: Instance | None, decision: Decision) -> Tally:
        assert decision.instance is not None
        tally = Tally()
        self.measurer.measure(before, decision.entries, decision.instance, tally)
        return tally

    def label(self) -> str | None:
        return self.measurer.status_label(self.test.instance)


def ended(tally: Tally) -> list[tuple[str, str, float | None, str | None]]:
    """Each step attempt a decision ended: (node, outcome, seconds, error)."""
    return [
        (
            node,
            outcome,
            next((s for n, o, s in tally.step_seconds if (n, o) == (node, outcome)), None),
            next((e for n, e in tally.failures if n == node and outcome != "succeeded"), None),
        )
        for (node, outcome), times in tally.steps.items()
        for _ in range(times)
    ]


def test_a_completed_saga_counts_its_start_its_steps_with_their_times_and_its_end() -> None:
    run = Recorder(TIMED_ORDER)
    started = run(lambda t: t.start(order()))
    assert started == Tally(lifecycle=Counter(["started"]))
    assert run.label() == "running"
    payment = run.test.expect_command(MakePayment)
    paid = run(lambda t: t.reply(payment, PaymentCompleted(order_id="o-1", payment_id="p")))
    assert ended(paid) == [("payment", "succeeded", 1.0, None)]
    shipping = run.test.outstanding[0]
    run.test.advance(4)
    created = ShippingLabelCreated(order_id="o-1", tracking_number="T")
    done = run(lambda t: t.reply(shipping, created))
    assert ended(done) == [("shipping", "succeeded", 5.0, None)]
    assert done.lifecycle == Counter(["completed"])
    (finish,) = done.finishes
    assert (finish.outcome, finish.seconds, finish.within_sla) == ("completed", 6.0, True)
    assert run.label() is None  # finished: not counted among the unfinished


def test_a_failed_step_counts_its_error_type_and_a_saga_over_its_sla() -> None:
    run = Recorder(TIMED_ORDER)
    run(lambda t: t.start(order()))
    payment = run.test.expect_command(MakePayment)
    run(lambda t: t.reply(payment, PaymentCompleted(order_id="o-1", payment_id="p")))
    shipping = run.test.outstanding[0]
    run.test.advance(SLA_S)
    failed = run(lambda t: t.reply(shipping, ShippingFailed(order_id="o-1", reason="no road")))
    assert ended(failed) == [("shipping", "failed", SLA_S + 1.0, "ShippingFailed")]
    assert run.label() == "compensating"
    refund = run.test.expect_command(RefundPayment)
    undone = run(lambda t: t.reply(refund, PaymentRefunded(order_id="o-1", payment_id="p")))
    assert ended(undone) == []  # a compensation's attempt is not the step's
    (finish,) = undone.finishes
    assert (finish.outcome, finish.within_sla) == ("compensated", False)


def test_a_saga_without_an_sla_judges_nothing() -> None:
    run = Recorder(UNTIMED_ORDER)
    run(lambda t: t.start(order()))
    payment = run.test.expect_command(MakePayment)
    failed = run(lambda t: t.reply(payment, PaymentFailed(order_id="o-1", reason="card")))
    assert failed.lifecycle == Counter(["failed"])
    assert ended(failed) == [("payment", "failed", 1.0, "PaymentFailed")]
    assert failed.finishes[0].within_sla is None


def test_a_retried_attempt_counts_as_retried_with_the_workers_error_as_transient() -> None:
    run = Recorder(OrderFulfillment)
    run(lambda t: t.start(order()))
    payment = run.test.expect_command(MakePayment)
    retried = run(lambda t: t.fail_transiently(payment, "ConnectionError", "reset: by peer"))
    assert ended(retried) == [("payment", "retried", 1.0, TRANSIENT)]
    assert run.label() == "running"  # an attempt is due: not a wait


def test_waits_timeouts_and_parking_have_their_labels() -> None:
    run = Recorder(Approval)
    run(lambda t: t.start(Started(id=ID)))
    assert run.label() == "waiting"
    run(lambda t: t.send(Verified(id=ID)))
    assert run.label() == "running"
    before = run.test.instance
    (timed_out, *_) = run.test.advance(5)
    assert ended(run.measured(before, timed_out)) == [("a", "retried", 5.0, TIMEOUT)]
    run.test.advance(5 + 5)  # the retry's attempt times out too: the saga fails
    assert run.label() is None


def test_an_instance_at_a_child_saga_or_a_sleep_is_waiting() -> None:
    waits = Measurer(Fulfilment.definition).waits
    assert {"invoice", "batch"} <= waits  # the child saga, the sleep
    assert not waits & {"reserve", "charge", "courier", "pack_line"}  # workers' commands


def test_the_error_type_is_bounded_by_the_declaration() -> None:
    measurer = Measurer(OrderFulfillment.definition)
    assert measurer.error_type("payment", "payment: PaymentFailed") == "PaymentFailed"
    assert measurer.error_type("payment", "payment: no reply in time") == TIMEOUT
    assert measurer.error_type("payment", "payment: SomethingElse") == OTHER
    assert measurer.error_type("payment", "payment: NotDeclared: its message") == TRANSIENT
    assert measurer.error_type("payment", "shipping: PaymentFailed") == OTHER
    assert measurer.error_type("payment", None) == OTHER


def test_a_snapshot_is_labelled_as_its_instance() -> None:
    run = Recorder(Approval)
    run(lambda t: t.start(Started(id=ID)))
    _, datum = decode(CATALOG, encode_snapshot(run.test.instance))
    assert run.measurer.snapshot_label(datum) == ("waiting", run.test.instance.started_at_ms)
    parked = dataclasses.replace(run.test.instance, status=run.test.status.NEEDS_ATTENTION)
    assert run.measurer.counted(parked) == ("parked", parked.started_at_ms)


def test_instance_counts_move_rebuild_forget_and_see_the_sla_pass() -> None:
    counts = InstanceCounts(sla_ms=60_000)
    counts.rebuild(0, [("running", 1_000), ("waiting", 2_000), None])
    counts.rebuild(1, [("parked", 61_500)])
    assert counts.partitions == {0, 1}
    assert counts.by_status() == {"running": 1, "waiting": 1, "compensating": 0, "parked": 1}
    counts.moved(0, ("running", 1_000), None)  # finished
    counts.moved(0, None, ("running", 70_000))  # started
    counts.moved(5, None, ("running", 70_000))  # a partition not held: ignored
    assert counts.by_status()["running"] == 1
    assert counts.past_sla(now_ms=62_999) == 0  # waiting started in second 2: past at 63 s
    assert counts.past_sla(now_ms=63_000) == 1
    assert counts.past_sla(now_ms=200_000) == 3
    counts.forget(1)
    assert counts.by_status()["parked"] == 0
    assert InstanceCounts(sla_ms=None).past_sla(now_ms=10**12) is None


def test_the_sla_option_takes_seconds_a_timedelta_or_a_class_attribute() -> None:
    assert Approval.definition.sla_ms == 60_000
    assert OrderFulfillment.definition.sla_ms == 5 * 60_000
    assert declared(name="by_seconds", sla=2.5).definition.sla_ms == 2500
    by_attribute = declared(name="by_attribute", attributes={"sla": timedelta(seconds=1.5)})
    assert by_attribute.definition.sla_ms == 1500
    for bad in (0, -1, "5m", True):
        with pytest.raises(DeclarationError, match="sla must be"):
            declared(name="bad_sla", sla=bad)


def declared(attributes: dict[str, object] | None = None, **options: object) -> type[Saga]:
    """A one-step saga class declared with ``options`` and class ``attributes``."""
    body = {
        "start": Started,
        "state": Flow,
        "begin": staticmethod(begin),
        "a": A.step(),
        **(attributes or {}),
    }
    return type("Declared", (Saga,), body, **options)
