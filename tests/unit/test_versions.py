"""Running instances across a new version of their saga's definition.

An instance records the version it started under (``saga_version`` in its snapshot) and every
journal entry the version that decided it. A new version may change policies, add steps, or add
steps at the end: instances in flight carry on under it. A version that lacks a step an
instance has used cannot run that instance: its inputs are rejected (to the dead-letter topic,
to be redriven once a fitting version runs) and a timer that comes due parks it.
"""

from __future__ import annotations

from dataclasses import replace

from examples.order_fulfillment.messages import (
    CreateShippingLabel,
    MakePayment,
    OrderPlaced,
    OrderState,
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    RefundPayment,
    ShippingFailed,
    ShippingLabelCreated,
)
from examples.order_fulfillment.saga import OrderFulfillment
from sagas import Compensate, RetryPolicy, Saga, Step, evolve
from sagas.testing import SagaTest
from stream_processors.core.instance import Status
from stream_processors.core.journal import Kind
from stream_processors.core.model import OperatorAction
from tests.unit.saga_run import Run

ORDER = OrderPlaced(
    order_id="o-1", customer_id="c", amount_cents=700, card_token="tok", postcode="1"
)


def _refund(state: OrderState) -> RefundPayment:
    assert state.payment_id is not None
    return RefundPayment(
        order_id=state.order_id, payment_id=state.payment_id, amount_cents=state.amount_cents
    )


class WithRefundCheck(Saga, name="order_fulfillment", version=2):
    """v2: no refund on failure, a shipping timeout, and a goodwill refund added at the end."""

    start = OrderPlaced
    state = OrderState
    begin = OrderFulfillment.begin
    payment = Step(MakePayment, success=PaymentCompleted, failure=PaymentFailed)
    shipping = Step(
        CreateShippingLabel,
        success=ShippingLabelCreated,
        failure=ShippingFailed,
        timeout=30,
        retry=RetryPolicy(max_attempts=1),
    )
    goodwill = Step(RefundPayment, build=_refund, success=PaymentRefunded)

    @evolve(PaymentCompleted)
    @staticmethod
    def paid(state: OrderState, event: PaymentCompleted) -> OrderState:
        return replace(state, payment_id=event.payment_id)


class Renamed(Saga, name="order_fulfillment", version=3):
    """v3 renamed the payment step: instances in it under v1 cannot go on."""

    start = OrderPlaced
    state = OrderState
    begin = OrderFulfillment.begin
    charge = Step(
        MakePayment,
        success=PaymentCompleted,
        failure=PaymentFailed,
        compensate=Compensate(RefundPayment, build=_refund, success=PaymentRefunded),
        timeout=10,
    )


def test_an_instance_started_under_v1_finishes_under_v2_with_its_new_step() -> None:
    run = Run(OrderFulfillment.definition)
    run.feed(ORDER)
    payment = run.instance.steps["payment"].command_id
    assert run.instance.saga_version == 1

    run.definition = WithRefundCheck.definition  # v2 is deployed
    run.feed(PaymentCompleted(order_id="o-1", payment_id="pay-1"), payment)
    assert run.journal[-1].saga_version == 2
    assert "timeout:shipping" in run.instance.timers  # v2's timeout applies to the new attempt
    shipping = run.instance.steps["shipping"].command_id
    run.feed(ShippingLabelCreated(order_id="o-1", tracking_number="t-1"), shipping)
    goodwill = run.instance.steps["goodwill"].command_id
    run.feed(PaymentRefunded(order_id="o-1", payment_id="pay-1"), goodwill)

    assert run.instance.status is Status.COMPLETED
    assert run.instance.saga_version == 1  # the version it started under


def test_a_version_without_a_step_the_instance_used_rejects_its_inputs() -> None:
    run = Run(OrderFulfillment.definition)
    run.feed(ORDER)
    payment = run.instance.steps["payment"].command_id

    run.definition = Renamed.definition
    decision = run.feed(PaymentCompleted(order_id="o-1", payment_id="pay-1"), payment)
    assert decision.rejected == "definition-mismatch"
    assert run.instance.status is Status.RUNNING  # unchanged: the input waits in the DLQ


def test_a_timer_due_under_a_version_without_its_step_parks_the_instance() -> None:
    run = Run(Renamed.definition)
    run.feed(ORDER)
    assert "timeout:charge" in run.instance.timers

    run.definition = OrderFulfillment.definition  # v1 again: it has no step "charge"
    decision = run.fire("timeout:charge")
    assert [Kind(e.kind) for e in decision.entries] == [Kind.SAGA_PARKED]
    assert run.instance.status is Status.NEEDS_ATTENTION
    assert "has no step 'charge'" in (run.instance.reason or "")
    assert "timeout:charge" in run.instance.timers  # kept for when a fitting version runs
    assert run.fire("timeout:charge").ignored == "parked"  # nothing moves while parked


def _operator(action: str) -> OperatorAction:
    return OperatorAction(action=action, by="ops", reason="tried")


def _parked_by_mismatch() -> SagaTest:
    run = Run(Renamed.definition)
    run.feed(ORDER)
    run.definition = OrderFulfillment.definition
    run.fire("timeout:charge")
    assert run.instance.status is Status.NEEDS_ATTENTION
    return run


def test_a_retry_under_a_version_that_still_lacks_the_step_is_refused() -> None:
    run = _parked_by_mismatch()
    assert run.feed(_operator("retry")).rejected == "definition-mismatch"
    assert run.instance.status is Status.NEEDS_ATTENTION


def test_a_retry_once_a_fitting_version_runs_resumes_the_instance_where_it_was() -> None:
    run = _parked_by_mismatch()
    run.definition = Renamed.definition  # the fitting version is deployed again
    run.feed(_operator("retry"))
    assert run.instance.status is Status.RUNNING  # not compensating with nothing in flight
    assert run.instance.parked_from is None

    decision = run.fire("timeout:charge", at_ms=run.now_ms + 1_000)  # the kept timer, overdue
    assert Kind.ATTEMPT_FAILED in [Kind(e.kind) for e in decision.entries]  # a timeout
    run.fire("retry:charge")
    charge = run.instance.steps["charge"]
    assert (charge.attempt, run.instance.status) == (2, Status.RUNNING)
    run.feed(PaymentCompleted(order_id="o-1", payment_id="pay-1"), charge.command_id)
    assert run.instance.status is Status.COMPLETED


def test_resolving_an_instance_parked_by_a_mismatch_drops_its_timers() -> None:
    run = _parked_by_mismatch()
    run.feed(_operator("resolve"))
    assert run.instance.status is Status.RESOLVED
    assert run.instance.timers == {}


def test_advancing_the_clock_over_a_parked_instance_fires_nothing() -> None:
    run = _parked_by_mismatch()
    assert run.advance(hours=1) == []
    assert run.instance.status is Status.NEEDS_ATTENTION
    assert "timeout:charge" in run.instance.timers
