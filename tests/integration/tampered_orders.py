"""The order saga with a deliberately changed fold, for ``sagas replay --verify`` to catch.

Same name (so the same topics), same steps, but its evolver records a different payment id than
the one the live processor folded: every paid order's snapshot differs from this fold.
"""

from __future__ import annotations

from dataclasses import replace

from examples.order_fulfillment.messages import OrderState, PaymentCompleted
from examples.order_fulfillment.saga import OrderFulfillment
from sagas import Saga, evolve


class TamperedFulfillment(Saga, name="order_fulfillment"):
    start = OrderFulfillment.start
    state = OrderFulfillment.state
    begin = OrderFulfillment.begin
    payment = OrderFulfillment.payment
    shipping = OrderFulfillment.shipping
    labelled = OrderFulfillment.labelled

    @evolve(PaymentCompleted)
    @staticmethod
    def paid(state: OrderState, event: PaymentCompleted) -> OrderState:
        return replace(state, payment_id=event.payment_id.upper())
