"""The payment and shipping services of the example, as Sagalog workers.

Outcomes follow the order's own data, as a real service's would: the payment service declines
the card token ``tok_declined`` and the shipping service cannot ship to postcode ``00000``. The
demo injects failures by placing orders with those values.

    sagas worker examples.order_fulfillment.services:payments
    sagas worker examples.order_fulfillment.services:shipping
"""

from __future__ import annotations

import hashlib

from examples.order_fulfillment.messages import (
    CreateShippingLabel,
    MakePayment,
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    RefundPayment,
    ShippingFailed,
    ShippingLabelCreated,
)
from sagas.worker import BusinessError, CommandContext, Worker

DECLINED_CARD = "tok_declined"
UNSHIPPABLE_POSTCODE = "00000"

payments = Worker("payments")
shipping = Worker("shipping")


def _reference(prefix: str, key: str) -> str:
    """A stable reference derived from the step's idempotency key: every attempt gets the same."""
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@payments.handles(MakePayment)
def pay(command: MakePayment, context: CommandContext) -> PaymentCompleted:
    if command.card_token == DECLINED_CARD:
        raise BusinessError(PaymentFailed(order_id=command.order_id, reason="card declined"))
    return PaymentCompleted(
        order_id=command.order_id, payment_id=_reference("pay", context.idempotency_key)
    )


@payments.handles(RefundPayment)
def refund(command: RefundPayment, context: CommandContext) -> PaymentRefunded:
    return PaymentRefunded(order_id=command.order_id, payment_id=command.payment_id)


@shipping.handles(CreateShippingLabel)
def label(command: CreateShippingLabel, context: CommandContext) -> ShippingLabelCreated:
    if command.postcode == UNSHIPPABLE_POSTCODE:
        raise BusinessError(ShippingFailed(order_id=command.order_id, reason="cannot ship there"))
    return ShippingLabelCreated(
        order_id=command.order_id, tracking_number=_reference("trk", context.idempotency_key)
    )
