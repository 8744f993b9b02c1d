"""Orders with injected outcomes, and the terminal state each outcome implies.

Failures are injected through the order's own data, the way the example services decide
(``services.py``): a declined card makes the payment fail, and the saga fails with nothing to
undo; an unshippable postcode makes shipping fail, and the saga refunds and ends compensated.
Which orders fail is drawn from a seeded random generator, so a run is reproducible.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from examples.order_fulfillment.messages import OrderPlaced
from examples.order_fulfillment.services import DECLINED_CARD, UNSHIPPABLE_POSTCODE


@dataclass(frozen=True)
class PlannedOrder:
    event: OrderPlaced
    expected: str  # the terminal state: completed, failed or compensated


def plan_orders(
    count: int,
    payment_failure_rate: float = 0.03,
    shipping_failure_rate: float = 0.03,
    seed: int | None = None,
    run_id: str | None = None,
) -> list[PlannedOrder]:
    """``count`` orders; each fails payment or shipping with the given probabilities."""
    rng = random.Random(seed)
    run = run_id or uuid.uuid4().hex[:8]
    orders = []
    for number in range(count):
        draw = rng.random()
        if draw < payment_failure_rate:
            card, postcode, expected = DECLINED_CARD, "10115", "failed"
        elif draw < payment_failure_rate + shipping_failure_rate:
            card, postcode, expected = "tok_visa", UNSHIPPABLE_POSTCODE, "compensated"
        else:
            card, postcode, expected = "tok_visa", "10115", "completed"
        event = OrderPlaced(
            order_id=f"order-{run}-{number:07d}",
            customer_id=f"customer-{rng.randrange(10_000):05d}",
            amount_cents=rng.randrange(500, 50_000),
            card_token=card,
            postcode=postcode,
        )
        orders.append(PlannedOrder(event, expected))
    return orders
