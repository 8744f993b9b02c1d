"""The order fulfilment saga: pay, then ship; a failed shipment refunds the payment.

    OrderPlaced -> MakePayment -> PaymentCompleted -> CreateShippingLabel -> ShippingLabelCreated
                                  PaymentFailed: the saga fails (nothing to undo)
                                                    ShippingFailed: RefundPayment, ends compensated

Run it with ``sagas run examples.order_fulfillment.saga:OrderFulfillment``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

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
from sagas import Compensate, Saga, Step, evolve


def _refund(state: OrderState) -> RefundPayment:
    assert state.payment_id is not None, "a payment that completed has an id"
    return RefundPayment(
        order_id=state.order_id, payment_id=state.payment_id, amount_cents=state.amount_cents
    )


#: An order should be paid and labelled (or refunded) within five minutes: the metrics count the
#: orders finished within and over it, and those still running past it (docs/observability.md).
class OrderFulfillment(Saga, name="order_fulfillment", sla=timedelta(minutes=5)):
    start = OrderPlaced
    state = OrderState

    @staticmethod
    def begin(event: OrderPlaced) -> OrderState:
        return OrderState(
            order_id=event.order_id,
            customer_id=event.customer_id,
            amount_cents=event.amount_cents,
            card_token=event.card_token,
            postcode=event.postcode,
        )

    payment = Step(
        MakePayment,
        success=PaymentCompleted,
        failure=PaymentFailed,
        compensate=Compensate(RefundPayment, build=_refund, success=PaymentRefunded),
    )
    shipping = Step(CreateShippingLabel, success=ShippingLabelCreated, failure=ShippingFailed)

    @evolve(PaymentCompleted)
    def paid(state: OrderState, event: PaymentCompleted) -> OrderState:
        return replace(state, payment_id=event.payment_id)

    @evolve(ShippingLabelCreated)
    def labelled(state: OrderState, event: ShippingLabelCreated) -> OrderState:
        return replace(state, tracking_number=event.tracking_number)
