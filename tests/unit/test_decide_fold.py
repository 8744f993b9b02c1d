"""Unit tests for ``decide`` and ``fold``: what a saga does with each input, and replaying it.

Drives ``decide`` with the example ``OrderFulfillment`` saga (and a stricter variant declared
here, whose refund can fail and which takes two non-reply events through handlers) through the
happy path, a failed payment, a failed shipment compensated by a refund, a failed compensation
(parked), a cancellation while a step is in flight, and an early ``Complete``; plus the inputs
that are ignored (duplicate, stale, duplicate-start, finished) or rejected (unknown-instance,
unexpected-type). Command ids are deterministic.

After every input, ``Run.feed`` (``sagas.testing.SagaTest``) checks the event-sourcing
invariants: the state ``decide`` returned equals ``fold`` of the whole journal written so far (and
of the previous state plus the new entries) with byte-identical snapshots; snapshots round-trip;
and the journal entries round-trip through ``JournalEntry.encode``/``decode`` and fold, from
their embedded ``record`` bytes alone, to the same snapshot bytes. ``fold`` refuses journals
that are out of order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
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
from sagas import Command, Compensate, Complete, Event, Fail, Saga, Step, evolve, on
from stream_processors.core.decide import Input, command_id, decide
from stream_processors.core.fold import FoldError, apply, fold
from stream_processors.core.instance import (
    Status,
    StepState,
    StepStatus,
    decode_snapshot,
    encode_snapshot,
)
from stream_processors.core.journal import JournalEntry, Kind
from stream_processors.core.model import SagaDefinition
from tests.unit.saga_run import SAGA, T0, Run, kinds, only_command

ORDER = OrderPlaced(
    order_id="o-1", customer_id="c-9", amount_cents=4_200, card_token="tok", postcode="N1 9GU"
)
PAY_ID = "order_fulfillment/o-1/payment/1"
SHIP_ID = "order_fulfillment/o-1/shipping/1"
REFUND_ID = "order_fulfillment/o-1/payment.compensation/1"
PAID = PaymentCompleted(order_id="o-1", payment_id="pay-1")
SHIPPED = ShippingLabelCreated(order_id="o-1", tracking_number="TRK-1")


# --- the example saga --------------------------------------------------------------------------


def test_happy_path() -> None:
    run = Run()

    started = run.feed(ORDER)
    assert kinds(started) == [Kind.SAGA_STARTED, Kind.COMMAND_SENT]
    sent, payment = only_command(started)
    assert sent.topic == "payments.commands"
    assert sent.key == "o-1"
    assert sent.command_id == PAY_ID
    assert payment == MakePayment(
        order_id="o-1", customer_id="c-9", amount_cents=4_200, card_token="tok"
    )
    state = run.instance
    assert state.instance_id == "o-1"
    assert state.status is Status.RUNNING
    assert state.steps == {
        "payment": StepState(StepStatus.PENDING, PAY_ID, 1, T0 + 1_000, "payment")
    }
    assert state.active == ("payment",)
    assert state.started_at_ms == T0 + 1_000
    assert state.data == SAGA.begin(ORDER)

    paid = run.feed(PAID, command_id=PAY_ID)
    assert kinds(paid) == [Kind.INPUT_ACCEPTED, Kind.STEP_SUCCEEDED, Kind.COMMAND_SENT]
    assert paid.entries[0].step == "payment"
    assert paid.entries[0].command_id == PAY_ID
    sent, label = only_command(paid)
    assert (sent.topic, sent.key, sent.command_id) == ("shipping.commands", "o-1", SHIP_ID)
    assert label == CreateShippingLabel(order_id="o-1", postcode="N1 9GU")
    state = run.instance
    assert state.data.payment_id == "pay-1"  # type: ignore[attr-defined]
    assert state.completed == ("payment",)
    assert state.steps["payment"].status is StepStatus.SUCCEEDED
    assert state.active == ("shipping",)

    shipped = run.feed(SHIPPED, command_id=SHIP_ID)
    assert kinds(shipped) == [Kind.INPUT_ACCEPTED, Kind.STEP_SUCCEEDED, Kind.SAGA_COMPLETED]
    assert shipped.commands == []
    state = run.instance
    assert state.status is Status.COMPLETED
    assert state.status.finished
    assert state.active == ()
    assert state.completed == ("payment", "shipping")
    assert state.data.tracking_number == "TRK-1"  # type: ignore[attr-defined]
    assert state.reason is None
    assert state.seq == 8
    assert state.updated_at_ms == T0 + 3_000


def test_a_reply_without_a_command_id_is_ignored_and_changes_nothing() -> None:
    run = Run()
    run.feed(ORDER)
    before, journal_length = run.instance, len(run.journal)
    for reply in (PAID, PaymentFailed(order_id="o-1", reason="forged")):
        decision = run.feed(reply)
        assert decision.ignored == "no-command-id"
        assert decision.entries == [] and decision.commands == []
    assert run.instance == before and len(run.journal) == journal_length
    # The reply that names the attempt is then taken as usual.
    assert kinds(run.feed(PAID, command_id=PAY_ID))[:2] == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_SUCCEEDED,
    ]


def test_payment_failed_fails_the_saga_with_nothing_to_undo() -> None:
    run = Run()
    run.feed(ORDER)
    failed = run.feed(PaymentFailed(order_id="o-1", reason="declined"), command_id=PAY_ID)
    assert kinds(failed) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_FAILED,
        Kind.SAGA_COMPENSATING,
        Kind.SAGA_FAILED,
    ]
    assert failed.commands == []
    state = run.instance
    assert state.status is Status.FAILED
    assert state.reason == "payment: PaymentFailed"
    assert state.steps["payment"].status is StepStatus.FAILED
    assert state.completed == ()
    assert run.sent[-1].command_id == PAY_ID  # no command after the payment


def test_shipping_failed_refunds_the_payment_then_ends_compensated() -> None:
    run = Run()
    run.feed(ORDER)
    run.feed(PAID, command_id=PAY_ID)

    failed = run.feed(ShippingFailed(order_id="o-1", reason="no such postcode"), command_id=SHIP_ID)
    assert kinds(failed) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_FAILED,
        Kind.SAGA_COMPENSATING,
        Kind.COMPENSATION_SENT,
    ]
    sent, refund = only_command(failed)
    assert (sent.topic, sent.key, sent.command_id) == ("payments.commands", "o-1", REFUND_ID)
    assert refund == RefundPayment(order_id="o-1", payment_id="pay-1", amount_cents=4_200)
    state = run.instance
    assert state.status is Status.COMPENSATING
    assert state.reason == "shipping: ShippingFailed"
    assert state.steps["payment"] == StepState(
        StepStatus.COMPENSATING, REFUND_ID, 1, run.now_ms, "payment"
    )
    assert state.steps["shipping"].status is StepStatus.FAILED
    assert state.active == ("payment",)

    refunded = run.feed(PaymentRefunded(order_id="o-1", payment_id="pay-1"), command_id=REFUND_ID)
    assert kinds(refunded) == [
        Kind.INPUT_ACCEPTED,
        Kind.COMPENSATION_SUCCEEDED,
        Kind.SAGA_COMPENSATED,
    ]
    assert refunded.commands == []
    state = run.instance
    assert state.status is Status.COMPENSATED
    assert state.status.finished
    assert state.reason == "shipping: ShippingFailed"
    assert state.steps["payment"].status is StepStatus.COMPENSATED
    assert state.active == ()


def test_refund_reply_carrying_the_payment_command_id_is_stale() -> None:
    run = Run()
    run.feed(ORDER)
    run.feed(PAID, command_id=PAY_ID)
    run.feed(ShippingFailed(order_id="o-1", reason="x"), command_id=SHIP_ID)
    refunded = PaymentRefunded(order_id="o-1", payment_id="pay-1")
    assert run.feed(refunded, command_id=PAY_ID).ignored == "stale"
    assert run.instance.status is Status.COMPENSATING


# --- ignored and rejected inputs ---------------------------------------------------------------


def test_duplicate_reply_after_the_step_finished_is_ignored() -> None:
    run = Run()
    run.feed(ORDER)
    run.feed(PAID, command_id=PAY_ID)
    journal_length = len(run.journal)

    again = run.feed(PAID, command_id=PAY_ID)
    assert again.ignored == "duplicate"
    assert again.rejected is None
    assert run.feed(PAID).ignored == "no-command-id"  # it names no attempt at all
    # A different answer to the same, finished command is a duplicate delivery too.
    failed = PaymentFailed(order_id="o-1", reason="late")
    assert run.feed(failed, command_id=PAY_ID).ignored == "duplicate"
    assert len(run.journal) == journal_length
    assert run.instance.status is Status.RUNNING
    assert run.instance.active == ("shipping",)

    run.feed(SHIPPED, command_id=SHIP_ID)
    assert run.feed(SHIPPED, command_id=SHIP_ID).ignored == "duplicate"
    assert run.instance.status is Status.COMPLETED


def test_reply_with_another_command_id_is_stale() -> None:
    run = Run()
    run.feed(ORDER)
    old_attempt = command_id("order_fulfillment", "o-1", "payment", 0)
    other_instance = "order_fulfillment/o-2/payment/1"
    assert run.feed(PAID, command_id=old_attempt).ignored == "stale"
    assert run.feed(PAID, command_id=other_instance).ignored == "stale"
    assert run.instance.steps["payment"].status is StepStatus.PENDING
    # The right answer is still taken afterwards.
    assert run.feed(PAID, command_id=PAY_ID).ignored is None
    # Once the step has its answer, a reply for another command is stale, not a duplicate.
    assert run.feed(PAID, command_id=old_attempt).ignored == "stale"


def test_reply_for_a_step_that_never_started_is_unexpected() -> None:
    run = Run()
    run.feed(ORDER)
    assert run.feed(SHIPPED, command_id=SHIP_ID).ignored == "unexpected-reply"
    assert "shipping" not in run.instance.steps


def test_reply_for_an_instance_that_does_not_exist_is_rejected() -> None:
    decision = decide(SAGA, None, Input(PAID, PAID.encode(), PAY_ID), T0)
    assert decision.rejected == "unknown-instance"
    assert decision.ignored is None
    assert decision.instance is None
    assert decision.entries == []
    assert decision.commands == []


@pytest.mark.parametrize("started", [False, True])
def test_record_of_a_type_the_saga_does_not_take_is_rejected(started: bool) -> None:
    run = Run()
    if started:
        run.feed(ORDER)
    payment = MakePayment(order_id="o-1", customer_id="c-9", amount_cents=1, card_token="t")
    decision = run.feed(payment)
    assert decision.rejected == "unexpected-type"
    assert decision.instance == (run.instance if started else None)


def test_duplicate_start_is_ignored() -> None:
    run = Run()
    run.feed(ORDER)
    assert run.feed(ORDER).ignored == "duplicate-start"
    # Even with different contents, and even after the saga finished.
    assert run.feed(replace(ORDER, amount_cents=1)).ignored == "duplicate-start"
    run.feed(PAID, command_id=PAY_ID)
    run.feed(SHIPPED, command_id=SHIP_ID)
    assert run.feed(ORDER).ignored == "duplicate-start"
    assert [s.command_id for s in run.sent] == [PAY_ID, SHIP_ID]


# --- determinism -------------------------------------------------------------------------------


def test_command_ids_are_deterministic() -> None:
    assert (
        command_id("order_fulfillment", "A-42", "payment", 1) == "order_fulfillment/A-42/payment/1"
    )
    order = replace(ORDER, order_id="A-42")
    first = Run(start_ms=T0)
    second = Run(start_ms=T0 + 86_400_000)  # a replay, a day later
    for run in (first, second):
        run.feed(order)
        run.feed(replace(PAID, order_id="A-42"), command_id="order_fulfillment/A-42/payment/1")
    ids = [c.command_id for c in first.sent]
    assert ids == ["order_fulfillment/A-42/payment/1", "order_fulfillment/A-42/shipping/1"]
    assert ids == [c.command_id for c in second.sent]
    assert [c.value for c in first.sent] == [c.value for c in second.sent]
    assert [c.key for c in first.sent] == ["A-42", "A-42"]


def test_same_inputs_at_the_same_times_give_identical_snapshots() -> None:
    runs = [Run(), Run()]
    for run in runs:
        run.feed(ORDER)
        run.feed(PAID, command_id=PAY_ID)
    assert encode_snapshot(runs[0].instance) == encode_snapshot(runs[1].instance)
    assert [e.encode() for e in runs[0].journal] == [e.encode() for e in runs[1].journal]


# --- fold on its own ---------------------------------------------------------------------------


@pytest.fixture
def journal() -> list[JournalEntry]:
    run = Run()
    run.feed(ORDER)
    run.feed(PAID, command_id=PAY_ID)
    return run.journal


def test_fold_of_nothing_is_nothing() -> None:
    assert fold(SAGA, None, []) is None


def test_fold_refuses_a_gap(journal: list[JournalEntry]) -> None:
    with pytest.raises(FoldError, match="position 2 follows 0"):
        fold(SAGA, None, [journal[0], *journal[2:]])


def test_fold_refuses_entries_out_of_order(journal: list[JournalEntry]) -> None:
    swapped = [journal[0], journal[2], journal[1], *journal[3:]]
    with pytest.raises(FoldError):
        fold(SAGA, None, swapped)


def test_fold_refuses_an_entry_applied_twice(journal: list[JournalEntry]) -> None:
    with pytest.raises(FoldError, match="position 1 follows 1"):
        fold(SAGA, None, [*journal[:2], journal[1]])


def test_fold_refuses_a_history_not_starting_with_saga_started(
    journal: list[JournalEntry],
) -> None:
    with pytest.raises(FoldError, match="not SagaStarted"):
        fold(SAGA, None, journal[1:])


def test_fold_refuses_saga_started_off_position_zero(journal: list[JournalEntry]) -> None:
    with pytest.raises(FoldError, match="SagaStarted at position 3"):
        fold(SAGA, None, [replace(journal[0], seq=3)])


def test_fold_refuses_a_second_saga_started(journal: list[JournalEntry]) -> None:
    state = fold(SAGA, None, journal)
    assert state is not None
    with pytest.raises(FoldError, match="cannot fold a SagaStarted"):
        apply(SAGA, state, replace(journal[0], seq=state.seq))


def test_fold_refuses_a_step_outcome_for_an_unknown_step(journal: list[JournalEntry]) -> None:
    state = fold(SAGA, None, journal)
    assert state is not None
    entry = replace(journal[-1], seq=state.seq, kind=Kind.STEP_SUCCEEDED.value, step="packing")
    with pytest.raises(FoldError, match="unknown step 'packing'"):
        apply(SAGA, state, entry)


def test_fold_refuses_an_input_without_its_record(journal: list[JournalEntry]) -> None:
    with pytest.raises(FoldError, match="carries no record"):
        fold(SAGA, None, [replace(journal[0], record=None)])


def test_snapshot_round_trip(journal: list[JournalEntry]) -> None:
    state = fold(SAGA, None, journal)
    assert state is not None
    snapshot = encode_snapshot(state)
    restored = decode_snapshot(snapshot)
    assert restored == state
    assert list(restored.steps) == list(state.steps)
    assert encode_snapshot(restored) == snapshot


# --- a stricter saga: failed compensation, handlers --------------------------------------------


@dataclasses.dataclass(frozen=True)
class Strict:
    definition: SagaDefinition
    refund_failed: type[Event]
    cancelled: type[Event]
    collected: type[Event]
    receipt: type[Command]


def _refund(state: OrderState) -> RefundPayment:
    assert state.payment_id is not None
    return RefundPayment(
        order_id=state.order_id, payment_id=state.payment_id, amount_cents=state.amount_cents
    )


@pytest.fixture(scope="module")
def strict(unit_schema_dir: Path) -> Iterator[Strict]:
    """Order fulfilment whose refund can fail, cancellable, and done early when collected."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAGALOG_SCHEMA_PATH", str(unit_schema_dir))

        class RefundFailed(Event, schema="tests.unit.orders.RefundFailed"):
            order_id: str
            reason: str

        class OrderCancelled(Event, schema="tests.unit.orders.OrderCancelled"):
            order_id: str
            reason: str

        class OrderCollected(Event, schema="tests.unit.orders.OrderCollected"):
            order_id: str

        class SendReceipt(Command, schema="tests.unit.orders.SendReceipt", topic="receipts"):
            order_id: str

    class StrictOrders(Saga, name="strict_orders", version=3):
        start = OrderPlaced
        state = OrderState
        begin = staticmethod(OrderFulfillment.definition.begin)

        payment = Step(
            MakePayment,
            success=PaymentCompleted,
            failure=PaymentFailed,
            compensate=Compensate(
                RefundPayment, build=_refund, success=PaymentRefunded, failure=RefundFailed
            ),
        )
        shipping = Step(CreateShippingLabel, success=ShippingLabelCreated, failure=ShippingFailed)

        @evolve(PaymentCompleted)
        @staticmethod
        def paid(state: OrderState, event: PaymentCompleted) -> OrderState:
            return replace(state, payment_id=event.payment_id)

        @on(OrderCancelled)
        @staticmethod
        def cancel(state: OrderState, event: Any, now_ms: int) -> list[Any]:
            return [Fail(f"cancelled: {event.reason}")]

        @on(OrderCollected)
        @staticmethod
        def collect(state: OrderState, event: Any, now_ms: int) -> list[Any]:
            return [SendReceipt(order_id=state.order_id), Complete()]

    yield Strict(StrictOrders.definition, RefundFailed, OrderCancelled, OrderCollected, SendReceipt)


S_PAY_ID = "strict_orders/o-1/payment/1"
S_SHIP_ID = "strict_orders/o-1/shipping/1"
S_REFUND_ID = "strict_orders/o-1/payment.compensation/1"


def test_failed_compensation_parks_the_instance(strict: Strict) -> None:
    run = Run(strict.definition)
    run.feed(ORDER)
    run.feed(PAID, command_id=S_PAY_ID)
    run.feed(ShippingFailed(order_id="o-1", reason="x"), command_id=S_SHIP_ID)
    assert run.sent[-1].command_id == S_REFUND_ID

    parked = run.feed(strict.refund_failed(order_id="o-1", reason="card closed"), S_REFUND_ID)
    assert kinds(parked) == [Kind.INPUT_ACCEPTED, Kind.COMPENSATION_FAILED, Kind.SAGA_PARKED]
    assert parked.commands == []
    assert parked.entries[-1].saga_version == 3
    state = run.instance
    assert state.status is Status.NEEDS_ATTENTION
    assert not state.status.finished
    assert state.reason == "compensation failed: payment: RefundFailed"
    assert state.steps["payment"].status is StepStatus.COMPENSATION_FAILED
    assert state.active == ()
    assert state.saga_version == 3

    # A late success for the same refund does not unpark it on its own.
    late = run.feed(PaymentRefunded(order_id="o-1", payment_id="pay-1"), command_id=S_REFUND_ID)
    assert late.ignored == "duplicate"
    assert run.instance.status is Status.NEEDS_ATTENTION


def test_cancel_while_a_step_is_in_flight_compensates_it_when_it_replies(strict: Strict) -> None:
    run = Run(strict.definition)
    run.feed(ORDER)

    cancelled = run.feed(strict.cancelled(order_id="o-1", reason="changed my mind"))
    assert kinds(cancelled) == [Kind.INPUT_ACCEPTED, Kind.SAGA_COMPENSATING]
    assert cancelled.commands == []  # the payment is in flight: wait for its answer
    assert run.instance.status is Status.COMPENSATING
    assert run.instance.reason == "cancelled: changed my mind"

    paid = run.feed(PAID, command_id=S_PAY_ID)
    assert kinds(paid) == [Kind.INPUT_ACCEPTED, Kind.STEP_SUCCEEDED, Kind.COMPENSATION_SENT]
    sent, refund = only_command(paid)
    assert sent.command_id == S_REFUND_ID
    assert refund == RefundPayment(order_id="o-1", payment_id="pay-1", amount_cents=4_200)
    assert "shipping" not in run.instance.steps  # the next step never starts

    done = run.feed(PaymentRefunded(order_id="o-1", payment_id="pay-1"), command_id=S_REFUND_ID)
    assert kinds(done)[-1] is Kind.SAGA_COMPENSATED
    assert run.instance.status is Status.COMPENSATED
    assert run.instance.reason == "cancelled: changed my mind"

    # A handled event after the end is ignored.
    assert run.feed(strict.cancelled(order_id="o-1", reason="again")).ignored == "finished"


def test_cancel_while_the_only_step_in_flight_fails_ends_failed(strict: Strict) -> None:
    run = Run(strict.definition)
    run.feed(ORDER)
    run.feed(strict.cancelled(order_id="o-1", reason="oops"))
    failed = run.feed(PaymentFailed(order_id="o-1", reason="declined"), command_id=S_PAY_ID)
    assert kinds(failed) == [Kind.INPUT_ACCEPTED, Kind.STEP_FAILED, Kind.SAGA_FAILED]
    assert run.instance.status is Status.FAILED
    assert run.instance.reason == "cancelled: oops"


def test_handler_commands_are_journaled_and_sent_and_complete_ends_the_saga(
    strict: Strict,
) -> None:
    run = Run(strict.definition)
    run.feed(ORDER)
    run.feed(PAID, command_id=S_PAY_ID)

    collected = run.feed(strict.collected(order_id="o-1"))
    assert kinds(collected) == [Kind.INPUT_ACCEPTED, Kind.COMMAND_SENT, Kind.SAGA_COMPLETED]
    sent, receipt = only_command(collected)
    assert sent.topic == "receipts"
    # Named after the journal position of its CommandSent entry, so a replay gives the same id.
    assert collected.entries[1].seq == 6
    assert sent.command_id == "strict_orders/o-1/#6/1"
    assert receipt == strict.receipt(order_id="o-1")
    assert collected.entries[1].step is None
    state = run.instance
    assert state.status is Status.COMPLETED
    assert state.steps["shipping"].status is StepStatus.PENDING  # left in flight


def test_late_reply_after_an_early_complete_changes_nothing_else(strict: Strict) -> None:
    run = Run(strict.definition)
    run.feed(ORDER)
    run.feed(PAID, command_id=S_PAY_ID)
    run.feed(strict.collected(order_id="o-1"))
    assert run.instance.status is Status.COMPLETED

    # The shipment that was in flight when the saga completed now succeeds: it is recorded,
    # but a completed saga neither compensates nor starts anything.
    late = run.feed(SHIPPED, command_id=S_SHIP_ID)
    assert kinds(late) == [Kind.INPUT_ACCEPTED, Kind.STEP_SUCCEEDED]
    assert late.commands == []
    assert run.instance.status is Status.COMPLETED
    assert run.instance.steps["payment"].status is StepStatus.SUCCEEDED


def test_late_failure_after_an_early_complete_does_not_fail_the_saga(strict: Strict) -> None:
    run = Run(strict.definition)
    run.feed(ORDER)
    run.feed(PAID, command_id=S_PAY_ID)
    run.feed(strict.collected(order_id="o-1"))

    late = run.feed(ShippingFailed(order_id="o-1", reason="x"), command_id=S_SHIP_ID)
    assert kinds(late) == [Kind.INPUT_ACCEPTED, Kind.STEP_FAILED]
    assert late.commands == []
    assert run.instance.status is Status.COMPLETED
    assert run.instance.reason is None
