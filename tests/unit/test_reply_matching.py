"""A reply changes an instance only if it answers the attempt the saga waits for (issue 19).

``decide`` ignores, with a reason and without journaling anything, a reply with no
``sagalog.command_id`` (``no-command-id``), one naming another attempt (``stale``), one of a type
the step does not expect in its current state (``unexpected-reply``) and one for an attempt that
already has its answer (``duplicate``). An operator's signal (``sagas signal``) names the step
(``signal_command_id``) and is matched to whichever attempt of it is in flight.
"""

from __future__ import annotations

import pytest

from examples.order_fulfillment.messages import (
    MakePayment,
    OrderPlaced,
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    ShippingFailed,
    ShippingLabelCreated,
)
from examples.order_fulfillment.saga import OrderFulfillment
from sagas.testing import SagaTest
from stream_processors.core.decide import Decision, signal_command_id
from stream_processors.core.instance import Status, StepStatus
from stream_processors.core.journal import Kind
from stream_processors.core.model import CommandFailed

ORDER = OrderPlaced(
    order_id="o-1", customer_id="c-1", amount_cents=4_200, card_token="tok", postcode="N1 9GU"
)
PAID = PaymentCompleted(order_id="o-1", payment_id="pay-1")
REFUNDED = PaymentRefunded(order_id="o-1", payment_id="pay-1")
PAY_ID = "order_fulfillment/o-1/payment/1"
SHIP_ID = "order_fulfillment/o-1/shipping/1"
REFUND_ID = "order_fulfillment/o-1/payment.compensation/1"


def started() -> SagaTest:
    test = SagaTest(OrderFulfillment)
    test.start(ORDER)
    return test


def assert_ignored(decision: Decision, reason: str) -> None:
    assert decision.ignored == reason
    assert decision.rejected is None
    assert decision.entries == [] and decision.commands == []


@pytest.mark.parametrize(
    ("command_id", "reason"),
    [
        (None, "no-command-id"),
        ("order_fulfillment/o-1/payment/2", "stale"),  # an attempt not (yet) sent
        ("order_fulfillment/o-2/payment/1", "stale"),  # another instance's
        (SHIP_ID, "stale"),  # another step's
        ("order_fulfillment/o-1/payment", "stale"),  # the step's id: only for an operator
        ("", "stale"),
    ],
)
def test_a_reply_that_does_not_name_the_attempt_in_flight_changes_nothing(
    command_id: str | None, reason: str
) -> None:
    test = started()
    before, journal = test.instance, list(test.journal)
    for reply in (PAID, PaymentFailed(order_id="o-1", reason="forged")):
        assert_ignored(test.feed(reply, command_id), reason)
    assert test.instance is before and test.journal == journal
    test.reply(test.expect_command(MakePayment), PAID)  # the real answer still completes it
    assert test.instance.steps["payment"].status is StepStatus.SUCCEEDED


def test_a_reply_of_a_type_the_step_does_not_expect_now_is_unexpected() -> None:
    test = started()
    # The payment is in flight: a refund (its compensation's reply) is not what it waits for,
    # even with the payment's command id.
    assert_ignored(test.feed(REFUNDED, PAY_ID), "unexpected-reply")
    # Shipping has not started: nothing of it can be answered.
    shipped = ShippingLabelCreated(order_id="o-1", tracking_number="t")
    assert_ignored(test.feed(shipped, SHIP_ID), "unexpected-reply")
    test.reply(PAY_ID, PAID)
    test.reply(SHIP_ID, ShippingFailed(order_id="o-1", reason="no courier"))
    assert test.instance.status is Status.COMPENSATING
    # Compensating the payment: its own success reply, with the refund's id, is unexpected.
    assert_ignored(test.feed(PAID, REFUND_ID), "unexpected-reply")
    assert_ignored(test.feed(REFUNDED), "no-command-id")
    test.reply(REFUND_ID, REFUNDED)
    assert test.instance.status is Status.COMPENSATED


def test_a_transient_failure_must_name_its_attempt() -> None:
    test = started()
    failed = CommandFailed(error="TransientError", message="?")
    assert_ignored(test.feed(failed), "no-command-id")
    assert_ignored(test.feed(failed, "order_fulfillment/o-1/payment/7"), "stale")
    assert_ignored(test.feed(failed, "order_fulfillment/o-1/payment"), "stale")
    test.fail_transiently(PAY_ID)
    assert test.instance.steps["payment"].status is StepStatus.RETRYING


def test_an_operator_signal_names_the_step_and_answers_the_attempt_in_flight() -> None:
    test = started()
    assert signal_command_id(test.definition, "o-1", PaymentCompleted) == (
        "order_fulfillment/o-1/payment"
    )
    assert signal_command_id(test.definition, "o-1", PaymentRefunded) == (
        "order_fulfillment/o-1/payment.compensation"
    )
    assert signal_command_id(test.definition, "o-1", OrderPlaced) is None
    test.fail_transiently(PAY_ID)
    test.advance(minutes=1)  # the retry: attempt 2 is in flight
    assert test.instance.steps["payment"].attempt == 2

    decision = test.signal(PAID, by="alice", reason="paid by phone")
    accepted = decision.entries[0]
    assert Kind(accepted.kind) is Kind.INPUT_ACCEPTED
    # Journaled with the attempt it answered, and who sent it and why.
    assert accepted.command_id == "order_fulfillment/o-1/payment/2"
    assert accepted.reason == "signal by alice: paid by phone"
    assert test.instance.steps["payment"].status is StepStatus.SUCCEEDED
    # Signalled again, the step has had its answer: a duplicate.
    assert test.feed(PAID, "order_fulfillment/o-1/payment", note="again").ignored == "duplicate"


def test_an_operator_signal_may_name_the_attempt_and_a_stale_one_is_ignored() -> None:
    test = started()
    note = "signal by bob: test"
    assert test.feed(PAID, "order_fulfillment/o-1/payment/3", note=note).ignored == "stale"
    test.signal(PAID, command_id=PAY_ID)
    assert test.instance.steps["payment"].status is StepStatus.SUCCEEDED


def test_an_operator_can_fail_the_attempt_in_flight_by_its_step() -> None:
    test = started()
    failed = CommandFailed(error="TransientError", message="gateway down")
    test.feed(failed, "order_fulfillment/o-1/payment", note="signal by carol: down")
    assert test.instance.steps["payment"].status is StepStatus.RETRYING
