"""Unit tests for failure handling in the pure core: retries, timeouts, catch, compensation
retries, parking and operator actions, the saga deadline, and wait steps. No Kafka.

Every scenario runs through ``Run`` (a ``sagas.testing.SagaTest``), which checks after each input
and each fired timer that the journal folds to the state ``decide`` returned, that snapshots
(timers included) are byte-identical after an encode/decode round trip, that journal entries
round-trip, that no command id is reused, and that the timers agree with the steps.

The sagas are the order fulfilment example's steps (pay, then ship; a refund undoes the payment)
declared here with the policies, timeouts, catches, waits and deadlines each test needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

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
from sagas import Command, Compensate, Complete, DeclarationError, Event, Saga, Step, evolve, on
from sagas.saga import Wait
from stream_processors.codecs.records import decode_record
from stream_processors.core.decide import DEADLINE, decide_timer
from stream_processors.core.instance import Status, StepState, StepStatus, Timer
from stream_processors.core.journal import Kind
from stream_processors.core.model import (
    COMPENSATE,
    DEFAULT_RETRY,
    CommandFailed,
    CommandSpec,
    OperatorAction,
    SagaDefinition,
    Task,
    validate,
)
from stream_processors.core.policy import ALL, NO_RETRY, TIMEOUT, TRANSIENT, RetryPolicy
from tests.unit.saga_run import T0, Run, kinds, only_command

ORDER = OrderPlaced(
    order_id="o-1", customer_id="c-9", amount_cents=4_200, card_token="tok", postcode="N1 9GU"
)
PAYMENT = MakePayment(order_id="o-1", customer_id="c-9", amount_cents=4_200, card_token="tok")
REFUND = RefundPayment(order_id="o-1", payment_id="pay-1", amount_cents=4_200)
PAID = PaymentCompleted(order_id="o-1", payment_id="pay-1")
DECLINED = PaymentFailed(order_id="o-1", reason="declined")
SHIPPED = ShippingLabelCreated(order_id="o-1", tracking_number="TRK-1")
NOT_SHIPPED = ShippingFailed(order_id="o-1", reason="no such postcode")
REFUNDED = PaymentRefunded(order_id="o-1", payment_id="pay-1")


def cid(step: str, attempt: int = 1) -> str:
    return f"orders/o-1/{step}/{attempt}"


def refund_id(attempt: int = 1) -> str:
    return cid("payment.compensation", attempt)


def transient(error: str = "ConnectionError", message: str = "refused") -> CommandFailed:
    return CommandFailed(error=error, message=message)


def operator(action: str, by: str = "alice", reason: str = "checked by hand") -> OperatorAction:
    return OperatorAction(action=action, by=by, reason=reason)


# --- the sagas ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kit:
    """Test-only messages (schemas in ``conftest.py``)."""

    refund_failed: type[Event]
    approved: type[Event]
    rejected: type[Event]
    send_invoice: type[Command]
    invoice_sent: type[Event]
    collected: type[Event]


@pytest.fixture(scope="module")
def kit(unit_schema_dir: Path) -> Iterator[Kit]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAGALOG_SCHEMA_PATH", str(unit_schema_dir))

        class RefundFailed(Event, schema="tests.unit.failures.RefundFailed"):
            order_id: str
            reason: str

        class OrderApproved(
            Event, schema="tests.unit.failures.OrderApproved", topic="approvals", key="order_id"
        ):
            order_id: str
            approver: str

        class OrderRejected(
            Event, schema="tests.unit.failures.OrderRejected", topic="approvals", key="order_id"
        ):
            order_id: str
            reason: str

        class SendInvoice(
            Command, schema="tests.unit.failures.SendInvoice", topic="invoices.commands"
        ):
            order_id: str
            amount_cents: int

        class InvoiceSent(Event, schema="tests.unit.failures.InvoiceSent"):
            order_id: str
            invoice_id: str

        class OrderCollected(
            Event, schema="tests.unit.failures.OrderCollected", topic="orders.events"
        ):
            order_id: str

    yield Kit(RefundFailed, OrderApproved, OrderRejected, SendInvoice, InvoiceSent, OrderCollected)


def _refund(state: OrderState) -> RefundPayment:
    assert state.payment_id is not None
    return RefundPayment(
        order_id=state.order_id, payment_id=state.payment_id, amount_cents=state.amount_cents
    )


def _paid(state: OrderState, event: PaymentCompleted) -> OrderState:
    return replace(state, payment_id=event.payment_id)


def _collected(state: OrderState, event: Any, now_ms: int) -> list[Any]:
    return [Complete()]


def declare(
    kit: Kit,
    *,
    payment: Mapping[str, Any] | None = None,
    refund: Mapping[str, Any] | None = None,
    shipping: Mapping[str, Any] | None = None,
    wait: Mapping[str, Any] | None = None,
    with_invoice: bool = False,
    deadline: float | None = None,
) -> SagaDefinition:
    """Pay, [invoice,] [wait for approval,] ship; keyword arguments go to each step.

    With ``with_invoice`` an ``invoice`` step, reached only through a ``catch``, goes to
    shipping; with ``wait`` an ``approval`` wait step stands between payment and shipping. An
    ``OrderCollected`` event completes the saga at once (a handler returning ``Complete``).
    """
    payment_kw = dict(payment or {})
    shipping_kw = dict(shipping or {})  # a class body cannot read a name it assigns from here
    if with_invoice:
        payment_kw.setdefault("next", "shipping")

    class Orders(Saga, name="orders", deadline=deadline):
        start = OrderPlaced
        state = OrderState
        begin = staticmethod(OrderFulfillment.definition.begin)

        payment = Step(
            MakePayment,
            success=PaymentCompleted,
            failure=PaymentFailed,
            compensate=Compensate(
                RefundPayment,
                build=_refund,
                success=PaymentRefunded,
                failure=kit.refund_failed,
                **(refund or {}),
            ),
            **payment_kw,
        )
        if with_invoice:
            invoice = Step(kit.send_invoice, success=kit.invoice_sent, next="shipping")
        if wait is not None:
            approval = Wait(success=kit.approved, failure=kit.rejected, timeout=3_600, **wait)
        shipping = Step(
            CreateShippingLabel,
            success=ShippingLabelCreated,
            failure=ShippingFailed,
            **shipping_kw,
        )

        paid = staticmethod(evolve(PaymentCompleted)(_paid))
        collected = staticmethod(on(kit.collected)(_collected))

    return Orders.definition


def paid_then_shipping_failed(run: Run) -> None:
    """Start, pay, and fail the shipment: the refund (attempt 1) is in flight."""
    run.feed(ORDER)
    run.feed(PAID, cid("payment"))
    run.feed(NOT_SHIPPED, cid("shipping"))
    assert run.sent[-1].command_id == refund_id(1)
    assert run.instance.status is Status.COMPENSATING


def attempt_fields(decision: Any, kind: Kind) -> tuple[Any, ...]:
    (entry,) = [e for e in decision.entries if Kind(e.kind) is kind]
    return entry.step, entry.command_id, entry.attempt, entry.reason


# --- a worker's CommandFailed: retried on a timer ----------------------------------------------


def test_command_failed_schedules_a_retry_then_sends_attempt_two_with_a_new_id(kit: Kit) -> None:
    run = Run(declare(kit))
    run.feed(ORDER)

    failed = run.feed(transient(), cid("payment"))
    assert kinds(failed) == [Kind.INPUT_ACCEPTED, Kind.ATTEMPT_FAILED, Kind.TIMER_SCHEDULED]
    assert failed.commands == []
    accepted, _, scheduled = failed.entries
    assert (accepted.step, accepted.command_id, accepted.attempt) == ("payment", cid("payment"), 1)
    assert decode_record(accepted.record) == transient()
    assert attempt_fields(failed, Kind.ATTEMPT_FAILED) == (
        "payment",
        cid("payment"),
        1,
        "payment: ConnectionError: refused",
    )
    due = run.now_ms + 1_000  # the default policy: 1 s before the second attempt
    assert (scheduled.timer, scheduled.due_ms, scheduled.step, scheduled.attempt) == (
        "retry:payment",
        due,
        "payment",
        2,
    )
    state = run.instance
    assert state.status is Status.RUNNING
    assert state.steps["payment"] == StepState(
        StepStatus.RETRYING, cid("payment"), 1, T0 + 1_000, "payment"
    )
    assert state.active == ("payment",)
    assert state.timers == {"retry:payment": Timer(due, "payment", 2)}

    # Not yet due, or not a timer of this instance: ignored, nothing written.
    assert run.fire("retry:payment", at_ms=due - 1).ignored == "stale-timer"
    assert run.fire("timeout:payment", at_ms=due - 1).ignored == "stale-timer"
    assert run.fire("retry:shipping", at_ms=due - 1).ignored == "stale-timer"
    # A duplicate delivery of the same CommandFailed neither retries again nor uses an attempt.
    assert run.feed(transient(), cid("payment"), at_ms=due - 1).ignored == "duplicate"
    assert run.instance.timers == {"retry:payment": Timer(due, "payment", 2)}

    retried = run.fire("retry:payment")
    assert run.now_ms == due
    assert kinds(retried) == [Kind.TIMER_FIRED, Kind.COMMAND_SENT]
    sent, command = only_command(retried)
    assert sent.command_id == "orders/o-1/payment/2"
    assert (sent.topic, sent.key) == ("payments.commands", "o-1")
    assert command == PAYMENT
    assert sent.value == run.sent[0].value  # the same command, under a new command id
    assert retried.entries[1].attempt == 2
    assert run.instance.steps["payment"] == StepState(
        StepStatus.PENDING, cid("payment", 2), 2, due, "payment"
    )
    assert run.instance.timers == {}
    assert run.fire("retry:payment").ignored == "stale-timer"  # fires once

    # Late answers to attempt 1 are stale, whatever they say.
    assert run.feed(PAID, cid("payment", 1)).ignored == "stale"
    assert run.feed(DECLINED, cid("payment", 1)).ignored == "stale"
    assert run.feed(transient(), cid("payment", 1)).ignored == "stale"
    assert run.instance.steps["payment"].status is StepStatus.PENDING

    paid = run.feed(PAID, cid("payment", 2))
    assert kinds(paid) == [Kind.INPUT_ACCEPTED, Kind.STEP_SUCCEEDED, Kind.COMMAND_SENT]
    assert paid.entries[0].command_id == cid("payment", 2)
    assert run.instance.data.payment_id == "pay-1"  # type: ignore[attr-defined]
    assert run.instance.active == ("shipping",)


def test_success_on_the_third_attempt_after_two_transient_failures_completes(kit: Kit) -> None:
    run = Run(declare(kit))
    run.feed(ORDER)
    delays = []
    for attempt in (1, 2):
        failed = run.feed(transient("TimeoutError", "read timed out"), cid("payment", attempt))
        assert kinds(failed) == [Kind.INPUT_ACCEPTED, Kind.ATTEMPT_FAILED, Kind.TIMER_SCHEDULED]
        assert attempt_fields(failed, Kind.ATTEMPT_FAILED)[2] == attempt
        delays.append(run.due("retry:payment") - run.now_ms)
        assert run.instance.timers["retry:payment"].attempt == attempt + 1
        run.fire("retry:payment")
    assert delays == [1_000, 2_000]

    run.feed(PAID, cid("payment", 3))
    done = run.feed(SHIPPED, cid("shipping"))
    assert kinds(done) == [Kind.INPUT_ACCEPTED, Kind.STEP_SUCCEEDED, Kind.SAGA_COMPLETED]
    state = run.instance
    assert state.status is Status.COMPLETED
    assert state.reason is None
    assert state.timers == {}
    assert state.steps["payment"].status is StepStatus.SUCCEEDED
    assert state.steps["payment"].attempt == 3
    assert state.completed == ("payment", "shipping")
    assert [c.command_id for c in run.sent] == [
        cid("payment", 1),
        cid("payment", 2),
        cid("payment", 3),
        cid("shipping"),
    ]
    failures = [e.reason for e in run.journal if Kind(e.kind) is Kind.ATTEMPT_FAILED]
    assert failures == ["payment: TimeoutError: read timed out"] * 2


def test_retry_delays_follow_the_policy_with_deterministic_jitter(kit: Kit) -> None:
    policy = RetryPolicy(
        max_attempts=4, interval=0.5, backoff_rate=3.0, max_interval=3.0, jitter=0.5
    )
    runs = [Run(declare(kit, payment={"retry": policy})) for _ in range(2)]
    for run in runs:
        run.feed(ORDER)
        delays = []
        for attempt in (1, 2, 3):
            run.feed(transient(), cid("payment", attempt))
            delays.append(run.due("retry:payment") - run.now_ms)
            run.fire("retry:payment")
        assert delays == [policy.delay_ms(n, cid("payment", n)) for n in (1, 2, 3)]
        for delay, full in zip(delays, (500, 1_500, 3_000), strict=True):
            assert full * 0.5 <= delay <= full
        exhausted = run.feed(transient(), cid("payment", 4))
        assert Kind.STEP_FAILED in kinds(exhausted)
    # A replay at the same times writes the same journal, byte for byte.
    assert [e.encode() for e in runs[0].journal] == [e.encode() for e in runs[1].journal]


def test_exhausted_retries_fail_the_saga_as_without_retries(kit: Kit) -> None:
    run = Run(declare(kit))
    run.feed(ORDER)
    for attempt in (1, 2):
        run.feed(transient(), cid("payment", attempt))
        run.fire("retry:payment")
    last = run.feed(transient(), cid("payment", 3))
    assert kinds(last) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_FAILED,
        Kind.SAGA_COMPENSATING,
        Kind.SAGA_FAILED,
    ]
    assert last.commands == []
    assert attempt_fields(last, Kind.STEP_FAILED) == (
        "payment",
        cid("payment", 3),
        0,
        "payment: ConnectionError: refused",
    )
    state = run.instance
    assert state.status is Status.FAILED
    assert state.reason == "payment: ConnectionError: refused"
    assert state.steps["payment"].status is StepStatus.FAILED
    assert state.timers == {}
    assert len(run.sent) == 3


def test_exhausted_retries_of_a_later_step_compensate_the_earlier_ones(kit: Kit) -> None:
    run = Run(declare(kit, shipping={"retry": RetryPolicy(max_attempts=2, interval=0.1)}))
    run.feed(ORDER)
    run.feed(PAID, cid("payment"))
    run.feed(transient(), cid("shipping", 1))
    assert run.due("retry:shipping") == run.now_ms + 100
    run.fire("retry:shipping")
    last = run.feed(transient("TimeoutError", "slow"), cid("shipping", 2))
    assert kinds(last) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_FAILED,
        Kind.SAGA_COMPENSATING,
        Kind.COMPENSATION_SENT,
    ]
    sent, refund = only_command(last)
    assert (sent.command_id, refund) == (refund_id(1), REFUND)
    assert run.instance.reason == "shipping: TimeoutError: slow"
    done = run.feed(REFUNDED, refund_id(1))
    assert kinds(done)[-1] is Kind.SAGA_COMPENSATED
    assert run.instance.status is Status.COMPENSATED


def test_a_business_failure_is_final_under_the_default_policy(kit: Kit) -> None:
    run = Run(declare(kit))
    run.feed(ORDER)
    failed = run.feed(DECLINED, cid("payment"))
    assert kinds(failed) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_FAILED,
        Kind.SAGA_COMPENSATING,
        Kind.SAGA_FAILED,
    ]
    assert run.instance.reason == "payment: PaymentFailed"
    assert run.instance.timers == {}


def test_a_business_failure_is_retried_when_the_policy_names_it(kit: Kit) -> None:
    policy = RetryPolicy(retry_on=(TRANSIENT, TIMEOUT, "PaymentFailed"))
    run = Run(declare(kit, payment={"retry": policy}))
    run.feed(ORDER)
    failed = run.feed(DECLINED, cid("payment"))
    assert kinds(failed) == [Kind.INPUT_ACCEPTED, Kind.ATTEMPT_FAILED, Kind.TIMER_SCHEDULED]
    assert attempt_fields(failed, Kind.ATTEMPT_FAILED)[3] == "payment: PaymentFailed"
    assert run.instance.steps["payment"].status is StepStatus.RETRYING
    run.fire("retry:payment")
    # Transient failures and declines count against the same attempts.
    run.feed(transient(), cid("payment", 2))
    run.fire("retry:payment")
    last = run.feed(DECLINED, cid("payment", 3))
    assert kinds(last)[1:] == [Kind.STEP_FAILED, Kind.SAGA_COMPENSATING, Kind.SAGA_FAILED]
    assert [c.command_id for c in run.sent] == [cid("payment", n) for n in (1, 2, 3)]
    # Only the payment's policy names it: a shipping failure is still final.
    other = Run(declare(kit, payment={"retry": policy}))
    other.feed(ORDER)
    other.feed(PAID, cid("payment"))
    assert Kind.STEP_FAILED in kinds(other.feed(NOT_SHIPPED, cid("shipping")))


@pytest.mark.parametrize(("error", "retried"), [("ConnectionError", True), ("OSError", False)])
def test_a_policy_naming_one_error_retries_only_that_error(
    kit: Kit, error: str, retried: bool
) -> None:
    run = Run(declare(kit, payment={"retry": RetryPolicy(retry_on=("ConnectionError",))}))
    run.feed(ORDER)
    decision = run.feed(transient(error), cid("payment"))
    assert (Kind.ATTEMPT_FAILED in kinds(decision)) is retried
    assert (Kind.STEP_FAILED in kinds(decision)) is not retried


def test_no_retry_fails_the_step_on_the_first_transient_error(kit: Kit) -> None:
    run = Run(declare(kit, payment={"retry": NO_RETRY}))
    run.feed(ORDER)
    failed = run.feed(transient(), cid("payment"))
    assert kinds(failed) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_FAILED,
        Kind.SAGA_COMPENSATING,
        Kind.SAGA_FAILED,
    ]


def test_command_failed_for_no_known_command_is_stale(kit: Kit) -> None:
    run = Run(declare(kit))
    run.feed(ORDER)
    assert run.feed(transient()).ignored == "no-command-id"  # it cannot be matched
    assert run.feed(transient(), "orders/o-2/payment/1").ignored == "stale"
    assert run.feed(transient(), cid("shipping")).ignored == "stale"
    assert run.feed(transient(), cid("payment", 2)).ignored == "stale"
    run.feed(PAID, cid("payment"))
    # For a step that already has its answer: a duplicate, not a new failure.
    assert run.feed(transient(), cid("payment")).ignored == "duplicate"
    assert run.instance.steps["payment"].status is StepStatus.SUCCEEDED


# --- step timeouts -----------------------------------------------------------------------------


def test_a_step_timeout_is_scheduled_and_cancelled_by_the_reply(kit: Kit) -> None:
    run = Run(declare(kit, payment={"timeout": 30}))
    started = run.feed(ORDER)
    assert kinds(started) == [Kind.SAGA_STARTED, Kind.COMMAND_SENT, Kind.TIMER_SCHEDULED]
    scheduled = started.entries[2]
    due = run.now_ms + 30_000
    assert (scheduled.timer, scheduled.due_ms, scheduled.step, scheduled.attempt) == (
        "timeout:payment",
        due,
        "payment",
        1,
    )
    assert run.instance.timers == {"timeout:payment": Timer(due, "payment", 1)}

    paid = run.feed(PAID, cid("payment"))
    assert kinds(paid) == [
        Kind.INPUT_ACCEPTED,
        Kind.TIMER_CANCELLED,
        Kind.STEP_SUCCEEDED,
        Kind.COMMAND_SENT,
    ]
    assert paid.entries[1].timer == "timeout:payment"
    assert run.instance.timers == {}  # shipping declares no timeout
    assert run.fire("timeout:payment", at_ms=due).ignored == "stale-timer"
    assert run.instance.steps["payment"].status is StepStatus.SUCCEEDED


def test_a_timeout_is_a_failed_attempt_retried_until_the_last_fails_the_saga(kit: Kit) -> None:
    run = Run(declare(kit, payment={"timeout": 30}))
    run.feed(ORDER)
    assert run.fire("timeout:payment", at_ms=run.due("timeout:payment") - 1).ignored

    for attempt, delay in ((1, 1_000), (2, 2_000)):
        timed_out = run.fire("timeout:payment")
        assert kinds(timed_out) == [Kind.TIMER_FIRED, Kind.ATTEMPT_FAILED, Kind.TIMER_SCHEDULED]
        assert attempt_fields(timed_out, Kind.ATTEMPT_FAILED) == (
            "payment",
            cid("payment", attempt),
            attempt,
            "payment: no reply in time",
        )
        assert run.instance.timers == {
            "retry:payment": Timer(run.now_ms + delay, "payment", attempt + 1)
        }
        retried = run.fire("retry:payment")
        assert kinds(retried) == [Kind.TIMER_FIRED, Kind.COMMAND_SENT, Kind.TIMER_SCHEDULED]
        assert retried.commands[0].command_id == cid("payment", attempt + 1)
        assert run.instance.timers == {
            "timeout:payment": Timer(run.now_ms + 30_000, "payment", attempt + 1)
        }
        # The answer to the attempt that timed out comes too late.
        assert run.feed(PAID, cid("payment", attempt)).ignored == "stale"

    last = run.fire("timeout:payment")
    assert kinds(last) == [
        Kind.TIMER_FIRED,
        Kind.STEP_FAILED,
        Kind.SAGA_COMPENSATING,
        Kind.SAGA_FAILED,
    ]
    assert run.instance.status is Status.FAILED
    assert run.instance.reason == "payment: no reply in time"
    assert run.instance.timers == {}
    assert len(run.sent) == 3


def test_a_reply_after_the_timeout_but_before_the_retry_is_ignored(kit: Kit) -> None:
    run = Run(declare(kit, payment={"timeout": 30}))
    run.feed(ORDER)
    run.fire("timeout:payment")
    assert run.feed(PAID, cid("payment", 1)).ignored == "duplicate"
    assert run.instance.steps["payment"].status is StepStatus.RETRYING
    assert kinds(run.fire("retry:payment"))[1] is Kind.COMMAND_SENT


def test_a_command_failed_cancels_the_attempt_timeout(kit: Kit) -> None:
    run = Run(declare(kit, payment={"timeout": 30}))
    run.feed(ORDER)
    timeout_due = run.due("timeout:payment")
    failed = run.feed(transient(), cid("payment"))
    assert kinds(failed) == [
        Kind.INPUT_ACCEPTED,
        Kind.TIMER_CANCELLED,
        Kind.ATTEMPT_FAILED,
        Kind.TIMER_SCHEDULED,
    ]
    assert set(run.instance.timers) == {"retry:payment"}
    run.fire("retry:payment")
    assert run.instance.timers["timeout:payment"].attempt == 2
    # The first attempt's timeout time passes: the second attempt has its own.
    assert run.fire("timeout:payment", at_ms=timeout_due).ignored == "stale-timer"


def test_a_policy_without_timeout_fails_the_step_when_it_times_out(kit: Kit) -> None:
    policy = RetryPolicy(retry_on=(TRANSIENT,))
    run = Run(declare(kit, shipping={"timeout": 5, "retry": policy}))
    run.feed(ORDER)
    run.feed(PAID, cid("payment"))
    timed_out = run.fire("timeout:shipping")
    assert kinds(timed_out) == [
        Kind.TIMER_FIRED,
        Kind.STEP_FAILED,
        Kind.SAGA_COMPENSATING,
        Kind.COMPENSATION_SENT,
    ]
    assert only_command(timed_out)[1] == REFUND
    assert run.instance.reason == "shipping: no reply in time"


def test_a_timeout_unblocks_a_cancelled_saga_whose_worker_never_answers(kit: Kit) -> None:
    run = Run(declare(kit, payment={"timeout": 30}))
    run.feed(ORDER)
    cancelled = run.feed(operator("cancel", "bob", "customer called"))
    assert kinds(cancelled) == [Kind.OPERATOR_ACTION, Kind.SAGA_COMPENSATING]
    assert run.instance.status is Status.COMPENSATING
    # The payment is still in flight: its timeout is what ends the saga, not a retry.
    timed_out = run.fire("timeout:payment")
    assert kinds(timed_out) == [Kind.TIMER_FIRED, Kind.STEP_FAILED, Kind.SAGA_FAILED]
    assert timed_out.commands == []
    assert run.instance.status is Status.FAILED
    assert run.instance.reason == "cancelled by bob: customer called"


# --- catch -------------------------------------------------------------------------------------


def test_catch_routes_a_failure_to_another_step_and_the_saga_completes_through_it(
    kit: Kit,
) -> None:
    run = Run(declare(kit, payment={"catch": {PaymentFailed: "invoice"}}, with_invoice=True))
    assert run.definition.tasks["payment"].catch == {"PaymentFailed": "invoice"}
    run.feed(ORDER)
    caught = run.feed(DECLINED, cid("payment"))
    assert kinds(caught) == [Kind.INPUT_ACCEPTED, Kind.STEP_FAILED, Kind.COMMAND_SENT]
    sent, invoice = only_command(caught)
    assert (sent.topic, sent.command_id) == ("invoices.commands", cid("invoice"))
    assert invoice == kit.send_invoice(order_id="o-1", amount_cents=4_200)
    state = run.instance
    assert state.status is Status.RUNNING
    assert state.reason is None
    assert state.steps["payment"].status is StepStatus.FAILED
    assert state.active == ("invoice",)

    invoiced = run.feed(kit.invoice_sent(order_id="o-1", invoice_id="inv-1"), cid("invoice"))
    assert kinds(invoiced) == [Kind.INPUT_ACCEPTED, Kind.STEP_SUCCEEDED, Kind.COMMAND_SENT]
    assert invoiced.commands[0].command_id == cid("shipping")
    run.feed(SHIPPED, cid("shipping"))
    assert run.instance.status is Status.COMPLETED
    assert run.instance.completed == ("invoice", "shipping")


def test_after_a_catch_only_completed_steps_are_compensated(kit: Kit) -> None:
    run = Run(declare(kit, payment={"catch": {PaymentFailed: "invoice"}}, with_invoice=True))
    run.feed(ORDER)
    run.feed(DECLINED, cid("payment"))
    run.feed(kit.invoice_sent(order_id="o-1", invoice_id="inv-1"), cid("invoice"))
    failed = run.feed(NOT_SHIPPED, cid("shipping"))
    # The payment failed, so there is nothing to refund; the invoice has no compensation.
    assert kinds(failed) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_FAILED,
        Kind.SAGA_COMPENSATING,
        Kind.SAGA_FAILED,
    ]
    assert failed.commands == []


def test_catch_on_timeout_after_the_retries(kit: Kit) -> None:
    payment = {
        "timeout": 5,
        "retry": RetryPolicy(max_attempts=2, interval=1.0),
        "catch": {TIMEOUT: "invoice", PaymentFailed: COMPENSATE},
    }
    run = Run(declare(kit, payment=payment, with_invoice=True))
    run.feed(ORDER)
    assert Kind.ATTEMPT_FAILED in kinds(run.fire("timeout:payment"))  # retried first
    run.fire("retry:payment")
    caught = run.fire("timeout:payment")
    assert kinds(caught) == [Kind.TIMER_FIRED, Kind.STEP_FAILED, Kind.COMMAND_SENT]
    assert caught.commands[0].command_id == cid("invoice")
    assert run.instance.status is Status.RUNNING


def test_catch_to_compensate_compensates(kit: Kit) -> None:
    payment = {"catch": {TIMEOUT: "invoice", PaymentFailed: COMPENSATE}}
    run = Run(declare(kit, payment=payment, with_invoice=True))
    run.feed(ORDER)
    failed = run.feed(DECLINED, cid("payment"))
    assert kinds(failed)[1:] == [Kind.STEP_FAILED, Kind.SAGA_COMPENSATING, Kind.SAGA_FAILED]
    assert "invoice" not in run.instance.steps

    run = Run(declare(kit, shipping={"catch": {ShippingFailed: COMPENSATE}}))
    run.feed(ORDER)
    run.feed(PAID, cid("payment"))
    failed = run.feed(NOT_SHIPPED, cid("shipping"))
    assert kinds(failed)[1:] == [
        Kind.STEP_FAILED,
        Kind.SAGA_COMPENSATING,
        Kind.COMPENSATION_SENT,
    ]
    assert only_command(failed)[1] == REFUND


@pytest.mark.parametrize("key", ["ConnectionError", TRANSIENT, ALL])
def test_catch_on_a_transient_error_by_name_family_or_all(kit: Kit, key: str) -> None:
    payment = {"retry": NO_RETRY, "catch": {key: "invoice"}}
    run = Run(declare(kit, payment=payment, with_invoice=True))
    run.feed(ORDER)
    caught = run.feed(transient(), cid("payment"))
    assert kinds(caught) == [Kind.INPUT_ACCEPTED, Kind.STEP_FAILED, Kind.COMMAND_SENT]
    assert caught.commands[0].command_id == cid("invoice")


def test_catch_all_matches_any_error_but_a_named_catch_wins(kit: Kit) -> None:
    payment = {"retry": NO_RETRY, "catch": {ALL: COMPENSATE, "PaymentFailed": "invoice"}}
    definition = declare(kit, payment=payment, with_invoice=True)
    run = Run(definition)
    run.feed(ORDER)
    assert kinds(run.feed(DECLINED, cid("payment")))[-1] is Kind.COMMAND_SENT  # invoice

    run = Run(definition)
    run.feed(ORDER)
    assert kinds(run.feed(transient(), cid("payment")))[-1] is Kind.SAGA_FAILED

    payment = {"timeout": 5, "retry": NO_RETRY, "catch": {ALL: "invoice"}}
    run = Run(declare(kit, payment=payment, with_invoice=True))
    run.feed(ORDER)
    assert run.fire("timeout:payment").commands[0].command_id == cid("invoice")


def test_an_error_no_catch_names_compensates(kit: Kit) -> None:
    payment = {"retry": NO_RETRY, "catch": {"TimeoutError": "invoice"}}
    run = Run(declare(kit, payment=payment, with_invoice=True))
    run.feed(ORDER)
    failed = run.feed(transient("ConnectionError"), cid("payment"))
    assert kinds(failed)[-1] is Kind.SAGA_FAILED
    assert "invoice" not in run.instance.steps


def test_catch_does_not_apply_once_the_saga_is_compensating(kit: Kit) -> None:
    run = Run(declare(kit, payment={"catch": {PaymentFailed: "invoice"}}, with_invoice=True))
    run.feed(ORDER)
    run.feed(operator("cancel"))
    failed = run.feed(DECLINED, cid("payment"))
    assert kinds(failed) == [Kind.INPUT_ACCEPTED, Kind.STEP_FAILED, Kind.SAGA_FAILED]
    assert "invoice" not in run.instance.steps


# --- compensation retries, parking, operator actions -------------------------------------------


COMPENSATION_RETRY = {"retry": RetryPolicy(max_attempts=2, interval=0.5)}


def test_a_compensation_is_retried_then_parks_then_an_operator_retry_compensates(
    kit: Kit,
) -> None:
    run = Run(declare(kit, refund=COMPENSATION_RETRY))
    paid_then_shipping_failed(run)

    failed = run.feed(transient(), refund_id(1))
    assert kinds(failed) == [Kind.INPUT_ACCEPTED, Kind.ATTEMPT_FAILED, Kind.TIMER_SCHEDULED]
    assert attempt_fields(failed, Kind.ATTEMPT_FAILED) == (
        "payment",
        refund_id(1),
        1,
        "payment: ConnectionError: refused",
    )
    state = run.instance
    assert state.status is Status.COMPENSATING
    assert state.steps["payment"].status is StepStatus.COMPENSATION_RETRYING
    assert state.active == ("payment",)
    assert state.timers == {"retry:payment": Timer(run.now_ms + 500, "payment", 2)}

    retried = run.fire("retry:payment")
    assert kinds(retried) == [Kind.TIMER_FIRED, Kind.COMPENSATION_SENT]
    sent, refund = only_command(retried)
    assert sent.command_id == "orders/o-1/payment.compensation/2"
    assert refund == REFUND
    assert retried.entries[1].attempt == 2
    assert run.instance.steps["payment"].status is StepStatus.COMPENSATING

    parked = run.feed(kit.refund_failed(order_id="o-1", reason="card closed"), refund_id(2))
    assert kinds(parked) == [Kind.INPUT_ACCEPTED, Kind.COMPENSATION_FAILED, Kind.SAGA_PARKED]
    assert parked.commands == []
    state = run.instance
    assert state.status is Status.NEEDS_ATTENTION
    assert not state.status.finished
    assert state.reason == "compensation failed: payment: RefundFailed"
    assert state.steps["payment"].status is StepStatus.COMPENSATION_FAILED
    assert state.active == ()
    assert state.timers == {}

    action = operator("retry", "alice", "card reopened")
    resumed = run.feed(action)
    assert kinds(resumed) == [Kind.OPERATOR_ACTION, Kind.SAGA_RESUMED, Kind.COMPENSATION_SENT]
    journaled = resumed.entries[0]
    assert decode_record(journaled.record) == action
    assert journaled.reason == "retry by alice: card reopened"
    assert resumed.entries[1].reason == "retry by alice: card reopened"
    sent, refund = only_command(resumed)
    assert (sent.command_id, refund) == (refund_id(3), REFUND)
    assert resumed.entries[2].attempt == 3
    assert run.instance.status is Status.COMPENSATING
    assert run.instance.active == ("payment",)

    assert run.feed(REFUNDED, refund_id(2)).ignored == "stale"
    done = run.feed(REFUNDED, refund_id(3))
    assert kinds(done) == [
        Kind.INPUT_ACCEPTED,
        Kind.COMPENSATION_SUCCEEDED,
        Kind.SAGA_COMPENSATED,
    ]
    assert run.instance.status is Status.COMPENSATED
    assert run.instance.steps["payment"].status is StepStatus.COMPENSATED
    assert run.instance.timers == {}
    assert [c.command_id for c in run.sent][-3:] == [refund_id(1), refund_id(2), refund_id(3)]


def test_a_compensation_failure_reply_is_final_under_its_default_policy(kit: Kit) -> None:
    run = Run(declare(kit, refund=COMPENSATION_RETRY))
    paid_then_shipping_failed(run)
    parked = run.feed(kit.refund_failed(order_id="o-1", reason="no"), refund_id(1))
    assert kinds(parked) == [Kind.INPUT_ACCEPTED, Kind.COMPENSATION_FAILED, Kind.SAGA_PARKED]


def test_exhausted_compensation_retries_park_naming_the_error(kit: Kit) -> None:
    run = Run(declare(kit, refund=COMPENSATION_RETRY))
    paid_then_shipping_failed(run)
    run.feed(transient(), refund_id(1))
    run.fire("retry:payment")
    parked = run.feed(transient("TimeoutError", "bank down"), refund_id(2))
    assert kinds(parked) == [Kind.INPUT_ACCEPTED, Kind.COMPENSATION_FAILED, Kind.SAGA_PARKED]
    assert run.instance.reason == "compensation failed: payment: TimeoutError: bank down"
    assert run.instance.status is Status.NEEDS_ATTENTION


def test_a_compensation_timeout_is_retried_then_parks(kit: Kit) -> None:
    refund = {"timeout": 20, "retry": RetryPolicy(max_attempts=2, interval=1.0)}
    run = Run(declare(kit, refund=refund))
    run.feed(ORDER)
    run.feed(PAID, cid("payment"))
    failed = run.feed(NOT_SHIPPED, cid("shipping"))
    assert kinds(failed)[-2:] == [Kind.COMPENSATION_SENT, Kind.TIMER_SCHEDULED]
    assert run.instance.timers == {"timeout:payment": Timer(run.now_ms + 20_000, "payment", 1)}

    timed_out = run.fire("timeout:payment")
    assert kinds(timed_out) == [Kind.TIMER_FIRED, Kind.ATTEMPT_FAILED, Kind.TIMER_SCHEDULED]
    assert run.instance.steps["payment"].status is StepStatus.COMPENSATION_RETRYING
    retried = run.fire("retry:payment")
    assert kinds(retried) == [Kind.TIMER_FIRED, Kind.COMPENSATION_SENT, Kind.TIMER_SCHEDULED]
    parked = run.fire("timeout:payment")
    assert kinds(parked) == [Kind.TIMER_FIRED, Kind.COMPENSATION_FAILED, Kind.SAGA_PARKED]
    assert run.instance.reason == "compensation failed: payment: no reply in time"

    resumed = run.feed(operator("retry"))
    assert kinds(resumed) == [
        Kind.OPERATOR_ACTION,
        Kind.SAGA_RESUMED,
        Kind.COMPENSATION_SENT,
        Kind.TIMER_SCHEDULED,
    ]
    done = run.feed(REFUNDED, refund_id(3))
    assert kinds(done) == [
        Kind.INPUT_ACCEPTED,
        Kind.TIMER_CANCELLED,
        Kind.COMPENSATION_SUCCEEDED,
        Kind.SAGA_COMPENSATED,
    ]
    assert run.instance.timers == {}


def test_resolve_ends_a_parked_instance(kit: Kit) -> None:
    run = Run(declare(kit))
    paid_then_shipping_failed(run)
    run.feed(kit.refund_failed(order_id="o-1", reason="card closed"), refund_id(1))
    assert run.instance.status is Status.NEEDS_ATTENTION

    resolved = run.feed(operator("resolve", "bob", "refunded by hand"))
    assert kinds(resolved) == [Kind.OPERATOR_ACTION, Kind.SAGA_RESOLVED]
    assert resolved.commands == []
    assert resolved.entries[0].reason == "resolve by bob: refunded by hand"
    state = run.instance
    assert state.status is Status.RESOLVED
    assert state.status.finished
    assert state.reason == "resolve by bob: refunded by hand"
    assert state.steps["payment"].status is StepStatus.COMPENSATION_FAILED

    assert run.feed(operator("retry")).ignored == "operator-retry-not-applicable"
    assert run.feed(operator("resolve")).ignored == "operator-resolve-not-applicable"
    assert run.feed(REFUNDED, refund_id(1)).ignored == "duplicate"


def test_cancel_compensates_a_running_saga_once_the_step_in_flight_answers(kit: Kit) -> None:
    run = Run(declare(kit))
    run.feed(ORDER)
    run.feed(PAID, cid("payment"))
    cancelled = run.feed(operator("cancel", "bob", "customer called"))
    assert kinds(cancelled) == [Kind.OPERATOR_ACTION, Kind.SAGA_COMPENSATING]
    assert cancelled.entries[0].reason == "cancel by bob: customer called"
    assert run.instance.status is Status.COMPENSATING
    assert run.instance.reason == "cancelled by bob: customer called"

    shipped = run.feed(SHIPPED, cid("shipping"))
    assert kinds(shipped) == [Kind.INPUT_ACCEPTED, Kind.STEP_SUCCEEDED, Kind.COMPENSATION_SENT]
    assert only_command(shipped)[1] == REFUND
    run.feed(REFUNDED, refund_id(1))
    assert run.instance.status is Status.COMPENSATED
    assert run.instance.reason == "cancelled by bob: customer called"


def test_cancel_while_a_step_waits_to_retry_stops_the_retry(kit: Kit) -> None:
    run = Run(declare(kit))
    run.feed(ORDER)
    run.feed(transient(), cid("payment"))
    due = run.due("retry:payment")
    cancelled = run.feed(operator("cancel"), at_ms=due - 1)
    assert kinds(cancelled) == [
        Kind.OPERATOR_ACTION,
        Kind.SAGA_COMPENSATING,
        Kind.TIMER_CANCELLED,
        Kind.STEP_FAILED,
        Kind.SAGA_FAILED,
    ]
    assert cancelled.entries[2].timer == "retry:payment"
    assert run.instance.status is Status.FAILED
    assert run.instance.timers == {}
    assert run.fire("retry:payment", at_ms=due).ignored == "stale-timer"
    assert len(run.sent) == 1


@pytest.mark.parametrize(
    ("where", "action"),
    [
        ("running", "resolve"),
        ("running", "retry"),
        ("compensating", "cancel"),
        ("compensating", "retry"),
        ("compensating", "resolve"),
        ("parked", "cancel"),
        ("completed", "cancel"),
        ("completed", "retry"),
        ("completed", "resolve"),
        ("running", "restart"),
        ("parked", ""),
    ],
)
def test_operator_actions_that_do_not_apply_are_ignored(kit: Kit, where: str, action: str) -> None:
    run = Run(declare(kit))
    run.feed(ORDER)
    if where == "completed":
        run.feed(PAID, cid("payment"))
        run.feed(SHIPPED, cid("shipping"))
    elif where in ("compensating", "parked"):
        paid_then_shipping_failed(run)
        if where == "parked":
            run.feed(kit.refund_failed(order_id="o-1", reason="no"), refund_id(1))
    before = run.instance
    decision = run.feed(operator(action))
    named = action if action in ("cancel", "retry", "resolve") else "unknown"
    assert decision.ignored == f"operator-{named}-not-applicable"
    assert run.instance is before


# --- the saga deadline -------------------------------------------------------------------------


def test_the_deadline_is_scheduled_at_start_and_cancelled_on_completion(kit: Kit) -> None:
    definition = declare(kit, deadline=600)
    assert definition.deadline_ms == 600_000
    run = Run(definition)
    started = run.feed(ORDER)
    assert kinds(started) == [Kind.SAGA_STARTED, Kind.TIMER_SCHEDULED, Kind.COMMAND_SENT]
    scheduled = started.entries[1]
    due = run.now_ms + 600_000
    assert (scheduled.timer, scheduled.due_ms, scheduled.step, scheduled.attempt) == (
        DEADLINE,
        due,
        None,
        0,
    )
    assert run.instance.timers == {DEADLINE: Timer(due, None, 0)}
    assert run.fire(DEADLINE, at_ms=due - 1).ignored == "stale-timer"

    run.feed(PAID, cid("payment"))
    done = run.feed(SHIPPED, cid("shipping"))
    assert kinds(done) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_SUCCEEDED,
        Kind.TIMER_CANCELLED,
        Kind.SAGA_COMPLETED,
    ]
    assert done.entries[2].timer == DEADLINE
    assert run.instance.timers == {}
    assert run.fire(DEADLINE).ignored == "stale-timer"
    assert run.instance.status is Status.COMPLETED


def test_the_deadline_compensates_a_running_saga(kit: Kit) -> None:
    run = Run(declare(kit, deadline=600))
    run.feed(ORDER)
    run.feed(PAID, cid("payment"))
    expired = run.fire(DEADLINE)
    assert kinds(expired) == [Kind.TIMER_FIRED, Kind.SAGA_COMPENSATING]
    assert run.instance.status is Status.COMPENSATING
    assert run.instance.reason == "deadline exceeded"
    assert run.instance.timers == {}
    # The shipment in flight is compensated when it answers, then the payment is refunded.
    shipped = run.feed(SHIPPED, cid("shipping"))
    assert kinds(shipped)[-1] is Kind.COMPENSATION_SENT
    run.feed(REFUNDED, refund_id(1))
    assert run.instance.status is Status.COMPENSATED
    assert run.instance.reason == "deadline exceeded"


def test_the_deadline_stops_a_step_waiting_to_retry(kit: Kit) -> None:
    run = Run(declare(kit, deadline=600))
    run.feed(ORDER)
    run.feed(PAID, cid("payment"))
    run.feed(transient(), cid("shipping"))
    expired = run.fire(DEADLINE, at_ms=run.due(DEADLINE) + 5_000)  # fired late: still fires
    assert kinds(expired) == [
        Kind.TIMER_FIRED,
        Kind.SAGA_COMPENSATING,
        Kind.TIMER_CANCELLED,
        Kind.STEP_FAILED,
        Kind.COMPENSATION_SENT,
    ]
    assert expired.entries[2].timer == "retry:shipping"
    assert run.instance.steps["shipping"].status is StepStatus.FAILED
    assert only_command(expired)[1] == REFUND


@pytest.mark.parametrize("how", ["failure", "complete"])
def test_ending_early_cancels_the_deadline(kit: Kit, how: str) -> None:
    run = Run(declare(kit, deadline=600))
    run.feed(ORDER)
    if how == "failure":
        ended = run.feed(DECLINED, cid("payment"))
        assert kinds(ended) == [
            Kind.INPUT_ACCEPTED,
            Kind.STEP_FAILED,
            Kind.TIMER_CANCELLED,
            Kind.SAGA_COMPENSATING,
            Kind.SAGA_FAILED,
        ]
    else:
        ended = run.feed(kit.collected(order_id="o-1"))
        assert kinds(ended) == [Kind.INPUT_ACCEPTED, Kind.TIMER_CANCELLED, Kind.SAGA_COMPLETED]
    assert DEADLINE not in run.instance.timers
    assert run.fire(DEADLINE, at_ms=T0 + 700_000).ignored == "stale-timer"


def test_a_step_timeout_and_the_deadline_each_fire_once(kit: Kit) -> None:
    run = Run(declare(kit, deadline=60, shipping={"timeout": 30, "retry": NO_RETRY}))
    run.feed(ORDER)
    run.feed(PAID, cid("payment"))
    assert set(run.instance.timers) == {DEADLINE, "timeout:shipping"}
    timed_out = run.fire("timeout:shipping")
    assert kinds(timed_out) == [
        Kind.TIMER_FIRED,
        Kind.STEP_FAILED,
        Kind.TIMER_CANCELLED,
        Kind.SAGA_COMPENSATING,
        Kind.COMPENSATION_SENT,
    ]
    assert run.instance.timers == {}
    assert run.fire(DEADLINE, at_ms=T0 + 120_000).ignored == "stale-timer"


# --- wait steps --------------------------------------------------------------------------------


def test_a_wait_step_sends_nothing_and_the_awaited_event_completes_it(kit: Kit) -> None:
    definition = declare(kit, wait={})
    assert definition.source_topics() == {"orders.events", "approvals"}
    assert definition.command_topics() == {"payments.commands", "shipping.commands"}
    approval = definition.tasks["approval"].action
    assert (approval.command, approval.timeout_ms, approval.retry) == (None, 3_600_000, NO_RETRY)

    run = Run(definition)
    run.feed(ORDER)
    paid = run.feed(PAID, cid("payment"))
    assert kinds(paid) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_SUCCEEDED,
        Kind.WAIT_STARTED,
        Kind.TIMER_SCHEDULED,
    ]
    assert paid.commands == []
    started = paid.entries[2]
    assert (started.step, started.command_id, started.attempt, started.record) == (
        "approval",
        cid("approval"),
        1,
        None,
    )
    assert run.instance.steps["approval"].status is StepStatus.PENDING
    assert run.instance.active == ("approval",)
    assert run.instance.timers == {"timeout:approval": Timer(run.now_ms + 3_600_000, "approval", 1)}

    approved = run.feed(kit.approved(order_id="o-1", approver="carol"))  # no command id
    assert kinds(approved) == [
        Kind.INPUT_ACCEPTED,
        Kind.TIMER_CANCELLED,
        Kind.STEP_SUCCEEDED,
        Kind.COMMAND_SENT,
    ]
    assert approved.entries[0].step == "approval"
    assert approved.commands[0].command_id == cid("shipping")
    # An awaited event no wait takes any more is journaled as unmatched: visible, not dropped.
    again = run.feed(kit.approved(order_id="o-1", approver="dan"))
    assert (again.ignored, kinds(again)) == (None, [Kind.EVENT_UNMATCHED])
    assert again.entries[0].step == "approval"
    run.feed(SHIPPED, cid("shipping"))
    assert run.instance.status is Status.COMPLETED
    assert run.instance.completed == ("payment", "approval", "shipping")
    assert run.instance.timers == {}


def test_a_wait_that_times_out_fails_without_retry_and_compensates(kit: Kit) -> None:
    run = Run(declare(kit, wait={}))
    run.feed(ORDER)
    run.feed(PAID, cid("payment"))
    assert run.fire("timeout:approval", at_ms=run.due("timeout:approval") - 1).ignored
    timed_out = run.fire("timeout:approval")
    assert kinds(timed_out) == [
        Kind.TIMER_FIRED,
        Kind.STEP_FAILED,
        Kind.SAGA_COMPENSATING,
        Kind.COMPENSATION_SENT,
    ]
    assert only_command(timed_out)[1] == REFUND
    assert run.instance.reason == "approval: no reply in time"
    assert run.instance.steps["approval"].status is StepStatus.FAILED
    # Approving after the timeout changes nothing, but shows in the history.
    late = run.feed(kit.approved(order_id="o-1", approver="carol"))
    assert kinds(late) == [Kind.EVENT_UNMATCHED]
    assert run.instance.steps["approval"].status is StepStatus.FAILED
    run.feed(REFUNDED, refund_id(1))
    assert run.instance.status is Status.COMPENSATED


def test_a_wait_failure_event_fails_the_step(kit: Kit) -> None:
    run = Run(declare(kit, wait={}))
    run.feed(ORDER)
    run.feed(PAID, cid("payment"))
    rejected = run.feed(kit.rejected(order_id="o-1", reason="fraud"))
    assert kinds(rejected) == [
        Kind.INPUT_ACCEPTED,
        Kind.TIMER_CANCELLED,
        Kind.STEP_FAILED,
        Kind.SAGA_COMPENSATING,
        Kind.COMPENSATION_SENT,
    ]
    assert run.instance.reason == "approval: OrderRejected"
    assert run.instance.timers == {}


def test_a_wait_timeout_follows_its_catch(kit: Kit) -> None:
    run = Run(declare(kit, wait={"catch": {TIMEOUT: "shipping"}}))  # approve by default
    run.feed(ORDER)
    run.feed(PAID, cid("payment"))
    timed_out = run.fire("timeout:approval")
    assert kinds(timed_out) == [Kind.TIMER_FIRED, Kind.STEP_FAILED, Kind.COMMAND_SENT]
    assert timed_out.commands[0].command_id == cid("shipping")
    run.feed(SHIPPED, cid("shipping"))
    assert run.instance.status is Status.COMPLETED
    assert run.instance.completed == ("payment", "shipping")


def test_the_awaited_event_before_the_wait_starts_is_kept_and_satisfies_it(kit: Kit) -> None:
    run = Run(declare(kit, wait={}))
    run.feed(ORDER)
    early = run.feed(kit.approved(order_id="o-1", approver="carol"))
    assert kinds(early) == [Kind.EVENT_KEPT]
    assert "approval" not in run.instance.steps
    assert len(run.instance.early) == 1
    paid = run.feed(PAID, cid("payment"))
    assert kinds(paid) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_SUCCEEDED,
        Kind.WAIT_STARTED,
        Kind.TIMER_SCHEDULED,
        Kind.INPUT_ACCEPTED,
        Kind.TIMER_CANCELLED,
        Kind.STEP_SUCCEEDED,
        Kind.COMMAND_SENT,
    ]
    assert paid.entries[4].step == "approval" and paid.entries[4].record == early.entries[0].record
    assert run.instance.early == ()
    assert paid.commands[0].command_id == cid("shipping")


def test_an_early_event_older_than_the_window_does_not_satisfy_the_wait(kit: Kit) -> None:
    run = Run(declare(kit, wait={"early": 60}))
    run.feed(ORDER)
    assert kinds(run.feed(kit.approved(order_id="o-1", approver="carol"))) == [Kind.EVENT_KEPT]
    run.advance(61)
    paid = run.feed(PAID, cid("payment"))
    assert kinds(paid)[-2:] == [Kind.WAIT_STARTED, Kind.TIMER_SCHEDULED]
    assert run.instance.steps["approval"].status is StepStatus.PENDING


def test_an_early_event_with_no_window_is_journaled_unmatched(kit: Kit) -> None:
    run = Run(declare(kit, wait={"early": 0}))
    run.feed(ORDER)
    early = run.feed(kit.approved(order_id="o-1", approver="carol"))
    assert kinds(early) == [Kind.EVENT_UNMATCHED]
    assert run.instance.early == ()


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_ending_a_saga_while_it_waits_compensates_at_once(kit: Kit, how: str) -> None:
    run = Run(declare(kit, wait={}, deadline=600 if how == "deadline" else None))
    run.feed(ORDER)
    run.feed(PAID, cid("payment"))
    ended = run.feed(operator("cancel")) if how == "cancel" else run.fire(DEADLINE)
    # Nothing is in flight for a wait: there is no reply to wait for before compensating.
    assert kinds(ended)[1:] == [
        Kind.SAGA_COMPENSATING,
        Kind.TIMER_CANCELLED,
        Kind.STEP_FAILED,
        Kind.COMPENSATION_SENT,
    ]
    assert ended.entries[2].timer == "timeout:approval"
    assert only_command(ended)[1] == REFUND
    assert run.instance.steps["approval"].status is StepStatus.FAILED
    late = run.feed(kit.approved(order_id="o-1", approver="carol"))
    assert kinds(late) == [Kind.EVENT_UNMATCHED]
    run.feed(REFUNDED, refund_id(1))
    assert run.instance.status is Status.COMPENSATED


def test_a_timeout_timer_of_an_earlier_attempt_does_not_fail_the_current_one(kit: Kit) -> None:
    """Defensive: decide never leaves such a timer (``Run`` checks it), but a state that had
    one must not fail the attempt in flight: the timer fires and is dropped."""
    run = Run(declare(kit, payment={"timeout": 30}))
    run.feed(ORDER)
    run.fire("timeout:payment")
    run.fire("retry:payment")
    state = run.instance
    stale = replace(state, timers={"timeout:payment": Timer(run.now_ms, "payment", 1)})
    decision = decide_timer(run.definition, stale, "timeout:payment", run.now_ms)
    assert kinds(decision) == [Kind.TIMER_FIRED]
    assert decision.commands == []
    assert decision.instance is not None
    assert decision.instance.steps["payment"] == state.steps["payment"]
    assert decision.instance.timers == {}


# --- an early Complete -------------------------------------------------------------------------


def test_a_step_waiting_to_retry_is_not_retried_after_the_saga_completed(kit: Kit) -> None:
    run = Run(declare(kit))
    run.feed(ORDER)
    run.feed(transient(), cid("payment"))
    completed = run.feed(kit.collected(order_id="o-1"))
    assert kinds(completed) == [Kind.INPUT_ACCEPTED, Kind.SAGA_COMPLETED]
    assert run.instance.status is Status.COMPLETED
    fired = run.fire("retry:payment")
    assert fired.commands == []
    assert Kind.COMMAND_SENT not in kinds(fired)
    assert [c.command_id for c in run.sent] == [cid("payment")]
    assert run.instance.status is Status.COMPLETED


# --- declaration -------------------------------------------------------------------------------


def test_policies_timeouts_catches_and_deadline_compile_into_the_definition(kit: Kit) -> None:
    policy = RetryPolicy(max_attempts=5)
    definition = declare(
        kit,
        payment={"retry": policy, "timeout": 2.5, "catch": {PaymentFailed: "invoice"}},
        refund={"retry": NO_RETRY, "timeout": 0.25},
        with_invoice=True,
        deadline=90,
    )
    payment = definition.tasks["payment"]
    assert (payment.action.retry, payment.action.timeout_ms) == (policy, 2_500)
    assert payment.catch == {"PaymentFailed": "invoice"}
    assert payment.next == ("shipping",)
    assert payment.compensation is not None
    assert (payment.compensation.retry, payment.compensation.timeout_ms) == (NO_RETRY, 250)
    shipping = definition.tasks["shipping"]
    assert (shipping.action.retry, shipping.action.timeout_ms) == (DEFAULT_RETRY, None)
    assert shipping.catch == {}
    assert definition.deadline_ms == 90_000
    assert declare(kit).deadline_ms is None


def test_validate_refuses_a_wait_step_without_a_timeout(kit: Kit) -> None:
    definition = declare(kit, wait={})
    validate(definition)
    task = definition.tasks["approval"]
    no_timeout = replace(task, action=replace(task.action, timeout_ms=None))
    broken = replace(definition, tasks={**definition.tasks, "approval": no_timeout})
    with pytest.raises(DeclarationError, match="wait step 'approval' needs a timeout"):
        validate(broken)
    # A step that sends a command needs no timeout.
    assert definition.tasks["payment"].action.timeout_ms is None


def test_validate_refuses_a_catch_to_an_unknown_step(kit: Kit) -> None:
    definition = declare(kit)
    payment = replace(definition.tasks["payment"], catch={"PaymentFailed": "nowhere"})
    broken = replace(definition, tasks={**definition.tasks, "payment": payment})
    with pytest.raises(
        DeclarationError, match="step 'payment' catches 'PaymentFailed' with unknown step"
    ):
        validate(broken)
    with pytest.raises(DeclarationError, match=r"catches 'sagalog\.Timeout' with unknown step 'x'"):
        declare(kit, payment={"catch": {TIMEOUT: "x"}})
    validate(
        replace(
            definition,
            tasks={
                **definition.tasks,
                "payment": replace(payment, catch={"PaymentFailed": COMPENSATE, ALL: "shipping"}),
            },
        )
    )


def test_a_wait_needs_an_event_to_wait_for(kit: Kit) -> None:
    with pytest.raises(DeclarationError, match="declares no event to wait for"):

        class NoEvent(Saga, name="no_event"):
            start = OrderPlaced
            state = OrderState
            begin = staticmethod(OrderFulfillment.definition.begin)
            approval = Wait(success=(), timeout=60)


def test_a_hand_built_wait_spec_is_run_like_a_declared_one(kit: Kit) -> None:
    """The engine only sees the model: a wait built by hand behaves like ``Wait``."""
    declared = declare(kit, wait={})
    spec = CommandSpec(None, None, None, (kit.approved,), (kit.rejected,), NO_RETRY, 1_000)
    tasks = {**declared.tasks, "approval": Task("approval", spec, next=("shipping",))}
    definition = replace(declared, tasks=tasks)
    validate(definition)
    run = Run(definition)
    run.feed(ORDER)
    run.feed(PAID, cid("payment"))
    assert run.due("timeout:approval") == run.now_ms + 1_000
    assert kinds(run.fire("timeout:approval"))[1] is Kind.STEP_FAILED
