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

#: The journal each outcome implies, as (kind, step): what ``decide`` emits for this saga.
EXPECTED_HISTORY: dict[str, list[tuple[str, str | None]]] = {
    "completed": [
        ("SagaStarted", None),
        ("CommandSent", "payment"),
        ("InputAccepted", "payment"),
        ("StepSucceeded", "payment"),
        ("CommandSent", "shipping"),
        ("InputAccepted", "shipping"),
        ("StepSucceeded", "shipping"),
        ("SagaCompleted", None),
    ],
    # A failed payment leaves nothing to undo: the saga enters compensation, finds nothing, fails.
    "failed": [
        ("SagaStarted", None),
        ("CommandSent", "payment"),
        ("InputAccepted", "payment"),
        ("StepFailed", "payment"),
        ("SagaCompensating", None),
        ("SagaFailed", None),
    ],
    "compensated": [
        ("SagaStarted", None),
        ("CommandSent", "payment"),
        ("InputAccepted", "payment"),
        ("StepSucceeded", "payment"),
        ("CommandSent", "shipping"),
        ("InputAccepted", "shipping"),
        ("StepFailed", "shipping"),
        ("SagaCompensating", None),
        ("CompensationSent", "payment"),
        ("InputAccepted", "payment"),
        ("CompensationSucceeded", "payment"),
        ("SagaCompensated", None),
    ],
}

#: Commands one saga sends, by its terminal state: pay + ship; pay; pay + ship + refund.
COMMANDS_PER_OUTCOME = {
    state: sum(k.endswith("Sent") for k, _ in h) for state, h in EXPECTED_HISTORY.items()
}


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
