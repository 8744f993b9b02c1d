"""The order fulfilment example, tested with the public test kit ``sagas.testing``.

The saga runs in memory on a virtual clock (``SagaTest``): the happy path, a declined payment,
a failed shipment compensated by a refund, retries of transient failures fired by advancing the
clock, and the operator's cancel, retry and resolve. The services' handlers are unit-tested
with ``command_context`` and ``handle``. Also: the kit's own errors say what they expected.
"""

from __future__ import annotations

import pytest

from examples.order_fulfillment import services
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
from sagas import BusinessError, CommandContext, Saga, Step, TransientError, Worker
from sagas.testing import START_MS, SagaTest, command_context, handle
from stream_processors.core.journal import Kind
from stream_processors.core.model import CommandFailed

ORDER = OrderPlaced(
    order_id="o-1", customer_id="c-1", amount_cents=4_200, card_token="tok", postcode="N1 9GU"
)


def started() -> SagaTest:
    test = SagaTest(OrderFulfillment)
    test.start(ORDER)
    return test


# --- the saga -----------------------------------------------------------------------------------


def test_happy_path() -> None:
    test = started()
    payment = test.expect_command(MakePayment)
    assert payment.command == MakePayment(
        order_id="o-1", customer_id="c-1", amount_cents=4_200, card_token="tok"
    )
    assert (payment.step, payment.attempt, payment.compensation) == ("payment", 1, False)
    assert payment.command_id == "order_fulfillment/o-1/payment/1"
    assert (payment.topic, payment.key) == ("payments.commands", "o-1")

    test.reply(payment, PaymentCompleted(order_id="o-1", payment_id="pay-1"))
    label = test.expect_command(CreateShippingLabel)
    assert label.command == CreateShippingLabel(order_id="o-1", postcode="N1 9GU")
    test.reply(label, ShippingLabelCreated(order_id="o-1", tracking_number="trk-1"))

    assert test.status == "completed"
    assert test.state == OrderState(
        order_id="o-1",
        customer_id="c-1",
        amount_cents=4_200,
        card_token="tok",
        postcode="N1 9GU",
        payment_id="pay-1",
        tracking_number="trk-1",
    )
    assert [sent.step for sent in test.sent] == ["payment", "shipping"]
    assert test.outstanding == []
    assert [entry.at_ms for entry in test.journal] == [START_MS] * 8  # the clock did not move


def test_a_declined_payment_fails_the_saga_with_nothing_to_undo() -> None:
    test = started()
    test.reply(test.expect_command(MakePayment), PaymentFailed(order_id="o-1", reason="declined"))
    assert test.status == "failed"
    assert test.instance.reason == "payment: PaymentFailed"
    assert len(test.sent) == 1
    assert test.outstanding == []


def test_a_failed_shipment_refunds_the_payment() -> None:
    test = started()
    test.reply(test.expect_command(MakePayment), PaymentCompleted(order_id="o-1", payment_id="p"))
    test.reply(test.expect_command(CreateShippingLabel), ShippingFailed(order_id="o-1", reason="x"))

    assert test.status == "compensating"
    refund = test.expect_command(RefundPayment)
    assert refund.command == RefundPayment(order_id="o-1", payment_id="p", amount_cents=4_200)
    assert (refund.step, refund.attempt, refund.compensation) == ("payment", 1, True)
    assert refund.idempotency_key == "order_fulfillment/o-1/payment.compensation"
    test.reply(refund, PaymentRefunded(order_id="o-1", payment_id="p"))
    assert test.status == "compensated"


def test_a_transient_failure_is_retried_when_its_timer_comes_due() -> None:
    test = started()
    test.fail_transiently(test.expect_command(MakePayment), "ConnectionError", "no route")
    assert test.outstanding == []
    assert test.due("retry:payment") == START_MS + 1_000  # the default policy: 1 s, then 2 s

    assert test.advance(seconds=0.5) == []  # not due yet
    (fired,) = test.advance(seconds=0.5)
    assert [Kind(entry.kind) for entry in fired.entries] == [Kind.TIMER_FIRED, Kind.COMMAND_SENT]
    retried = test.expect_command(MakePayment)
    assert (retried.attempt, retried.at_ms) == (2, START_MS + 1_000)
    assert retried.command_id == "order_fulfillment/o-1/payment/2"
    assert retried.value == test.sent[0].value  # the same command, under a new id

    test.handle(retried, services.payments)  # the real handler answers, in memory
    test.handle(test.expect_command(CreateShippingLabel), services.shipping)
    assert test.status == "completed"


class OrderWithTimeouts(Saga, name="order_with_timeouts"):
    """The order saga with a 5 s timeout on each payment attempt."""

    start = OrderPlaced
    state = OrderState
    begin = OrderFulfillment.begin
    payment = Step(
        MakePayment,
        success=PaymentCompleted,
        failure=PaymentFailed,
        timeout=5,
    )
    shipping = Step(CreateShippingLabel, success=ShippingLabelCreated, failure=ShippingFailed)


def test_advance_fires_each_timer_due_in_the_window_at_its_due_time_in_order() -> None:
    test = SagaTest(OrderWithTimeouts)
    test.start(ORDER)
    fired = test.advance(minutes=1)
    # Timed out at 5 s, retried 1 s later, timed out at 11 s, retried 2 s later, timed out at 18 s.
    timers = [(d.entries[0].timer, d.entries[0].at_ms - START_MS) for d in fired]
    assert timers == [
        ("timeout:payment", 5_000),
        ("retry:payment", 6_000),
        ("timeout:payment", 11_000),
        ("retry:payment", 13_000),
        ("timeout:payment", 18_000),
    ]
    assert test.status == "failed"
    assert test.instance.reason == "payment: no reply in time"
    assert test.now_ms == START_MS + 60_000
    assert [sent.attempt for sent in test.sent] == [1, 2, 3]


def test_cancel_while_the_payment_is_in_flight_refunds_it_once_it_completes() -> None:
    test = started()
    test.cancel(by="alice", reason="customer called")
    assert test.status == "compensating"
    action = test.journal[2]
    assert (action.kind, action.reason) == ("OperatorAction", "cancel by alice: customer called")
    test.reply(test.expect_command(MakePayment), PaymentCompleted(order_id="o-1", payment_id="p"))
    test.reply(test.expect_command(RefundPayment), PaymentRefunded(order_id="o-1", payment_id="p"))
    assert test.status == "compensated"


def parked() -> SagaTest:
    """An instance whose refund failed three times: it needs an operator."""
    test = started()
    test.reply(test.expect_command(MakePayment), PaymentCompleted(order_id="o-1", payment_id="p"))
    test.reply(test.expect_command(CreateShippingLabel), ShippingFailed(order_id="o-1", reason="x"))
    for _ in range(3):
        test.fail_transiently(test.expect_command(RefundPayment), "TimeoutError")
        test.advance(seconds=10)
    assert test.status == "needs_attention"
    return test


def test_an_operator_retries_a_parked_refund() -> None:
    test = parked()
    test.retry(by="bob", reason="the bank is back")
    refund = test.expect_command(RefundPayment)
    assert refund.attempt == 4
    test.reply(refund, PaymentRefunded(order_id="o-1", payment_id="p"))
    assert test.status == "compensated"


def test_an_operator_resolves_a_parked_instance() -> None:
    test = parked()
    test.resolve(by="bob", reason="refunded by hand")
    assert test.status == "resolved"


# --- the kit's errors say what they expected and what they saw ----------------------------------


def test_expect_command_lists_the_outstanding_commands() -> None:
    test = started()
    with pytest.raises(AssertionError, match="expected one outstanding CreateShippingLabel") as e:
        test.expect_command(CreateShippingLabel)
    assert "MakePayment(order_id='o-1'" in str(e.value)
    assert "step 'payment', attempt 1" in str(e.value)


def test_a_reply_the_saga_ignores_fails_the_test_with_the_reason() -> None:
    test = started()
    payment = test.expect_command(MakePayment)
    test.reply(payment, PaymentCompleted(order_id="o-1", payment_id="p"))
    with pytest.raises(AssertionError, match=r"ignored \(duplicate\) the PaymentCompleted"):
        test.reply(payment, PaymentCompleted(order_id="o-1", payment_id="p"))
    # The lenient, low-level form returns what the saga decided instead.
    again = test.feed(PaymentCompleted(order_id="o-1", payment_id="p"), payment.command_id)
    assert again.ignored == "duplicate"


def test_an_operator_action_that_does_not_apply_fails_the_test() -> None:
    test = started()
    with pytest.raises(AssertionError, match=r"ignored \(operator-retry-not-applicable\)"):
        test.retry()


def test_the_instance_before_the_start() -> None:
    test = SagaTest(OrderFulfillment)
    assert test.outstanding == []
    with pytest.raises(AssertionError, match="has not started"):
        _ = test.status
    with pytest.raises(AssertionError, match=r"rejected \(unknown-instance\)"):
        test.reply(
            "order_fulfillment/o-1/payment/1", PaymentCompleted(order_id="o-1", payment_id="p")
        )


# --- the services' handlers ---------------------------------------------------------------------


def test_payment_handler_answers_with_a_reference_stable_across_attempts() -> None:
    command = MakePayment(order_id="o-1", customer_id="c", amount_cents=1, card_token="tok")
    first = handle(services.payments, command, command_context(command, attempt=1))
    again = handle(services.payments, command, command_context(command, attempt=2))
    assert isinstance(first, PaymentCompleted)
    assert first == again  # the idempotency key is the same for every attempt of a step


def test_a_declined_card_answers_payment_failed() -> None:
    command = MakePayment(
        order_id="o-1", customer_id="c", amount_cents=1, card_token="tok_declined"
    )
    assert handle(services.payments, command) == PaymentFailed(
        order_id="o-1", reason="card declined"
    )


def test_shipping_and_refund_handlers() -> None:
    unshippable = CreateShippingLabel(order_id="o-1", postcode=services.UNSHIPPABLE_POSTCODE)
    assert isinstance(handle(services.shipping, unshippable), ShippingFailed)
    label = handle(services.shipping, CreateShippingLabel(order_id="o-1", postcode="N1"))
    assert isinstance(label, ShippingLabelCreated)
    refund = RefundPayment(order_id="o-1", payment_id="p", amount_cents=1)
    assert handle(services.payments, refund) == PaymentRefunded(order_id="o-1", payment_id="p")


def test_command_context_fields() -> None:
    command = MakePayment(order_id="o-1", customer_id="c", amount_cents=1, card_token="tok")
    context = command_context(
        command, saga="order_fulfillment", instance_id="o-1", step="payment", attempt=3
    )
    assert context == CommandContext(
        idempotency_key="order_fulfillment/o-1/payment",
        instance_id="o-1",
        saga="order_fulfillment",
        topic="payments.commands",
        partition=0,
        offset=0,
        command_id="order_fulfillment/o-1/payment/3",
        attempt=3,
    )
    # From a command a SagaTest sent: its own saga, instance, step, attempt and id.
    sent = started().expect_command(MakePayment)
    from_sent = command_context(sent)
    assert (from_sent.command_id, from_sent.attempt) == (sent.command_id, 1)
    assert from_sent.idempotency_key == "order_fulfillment/o-1/payment"


def test_handle_turns_transient_errors_into_command_failed_and_lets_bugs_through() -> None:
    flaky = Worker("flaky")

    @flaky.handles(MakePayment)
    def pay(command: MakePayment, context: CommandContext) -> PaymentCompleted:
        if command.card_token == "bug":
            raise KeyError("card")
        if command.card_token == "down":
            raise TransientError("bank down")
        if command.card_token == "no":
            raise BusinessError(PaymentFailed(order_id=command.order_id, reason="no"))
        raise ConnectionError("reset")

    def payment(token: str) -> MakePayment:
        return MakePayment(order_id="o-1", customer_id="c", amount_cents=1, card_token=token)

    assert handle(flaky, payment("down")) == CommandFailed(
        error="TransientError", message="bank down"
    )
    assert handle(flaky, payment("x")) == CommandFailed(error="ConnectionError", message="reset")
    assert handle(flaky, payment("no")) == PaymentFailed(order_id="o-1", reason="no")
    with pytest.raises(KeyError):
        handle(flaky, payment("bug"))
    with pytest.raises(LookupError, match="no handler for CreateShippingLabel"):
        handle(flaky, CreateShippingLabel(order_id="o-1", postcode="N1"))
