"""Orders with injected outcomes, and what each one implies: its end, its commands, its child.

Failures are injected through the order's own data, the way the services decide
(``services.py``). ``expected`` derives, from an order alone, the terminal state of its
fulfilment saga, how many commands the saga sends to its services' topics (compensations
included, the child's start not), and how its invoicing child saga ends (None: not started).
``plan_orders`` draws a reproducible mix of every path from a seeded generator.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from examples.control_flow.messages import FulfilmentRequested
from examples.control_flow.saga import PACKERS, TOLERATED_DAMAGED
from examples.control_flow.services import (
    BLOCKED_CUSTOMER,
    DAMAGED_PREFIX,
    DECLINED_CARD,
    MISSING_PREFIX,
    UNREACHABLE_POSTCODE,
)


@dataclass(frozen=True)
class Expected:
    outcome: str  # completed, failed or compensated
    commands: int  # commands to the services' topics, compensations included
    child: str | None  # the invoicing saga's end, None when the order never gets there


def _undone(sent: int, undone: int, child: str | None = None) -> Expected:
    """A failed order: compensated if anything was undone, else failed (nothing to undo)."""
    return Expected("compensated" if undone else "failed", sent + undone, child)


def expected(order: FulfilmentRequested) -> Expected:
    """What ``order`` implies, step by step as the saga runs it.

    A map that fails beyond its tolerance is determined by the data only if every line was in
    flight before the failure (at most ``PACKERS`` lines): otherwise which queued lines were
    ever packed depends on the order replies came in, and this raises ``ValueError``.
    """
    if not order.lines:
        return Expected("failed", 0, None)  # the Fail node: nothing was sent
    sent = undone = 0
    if order.express:
        sent += 1
        if order.postcode == UNREACHABLE_POSTCODE:
            return Expected("failed", sent, None)
        undone += 1  # the courier booking is cancelled if the order fails later
    sent += 2  # reserve and charge, side by side: a failed one does not stop the other's send
    stocked = not any(sku.startswith(MISSING_PREFIX) for sku in order.lines)
    paid = order.card_token != DECLINED_CARD
    if not (stocked and paid):
        return _undone(sent, undone + stocked + paid)  # the one that succeeded is undone
    undone += 2
    damaged = sum(sku.startswith(DAMAGED_PREFIX) for sku in order.lines)
    packed = len(order.lines) - damaged
    if damaged > TOLERATED_DAMAGED:
        if len(order.lines) > PACKERS:
            raise ValueError(f"{order.order_id}: which lines get packed depends on timing")
        return _undone(sent + len(order.lines), undone + packed)
    sent += len(order.lines)
    if order.customer_id == BLOCKED_CUSTOMER:
        return _undone(sent, undone + packed, "failed")
    return Expected("completed", sent, "completed")


@dataclass(frozen=True)
class PlannedOrder:
    event: FulfilmentRequested
    path: str  # which path the plan drew, for reports
    expected: Expected


#: The paths a plan draws, with their weights.
PATHS: dict[str, float] = {
    "standard": 0.28,
    "express": 0.15,
    "one-damaged": 0.10,
    "no-lines": 0.04,
    "no-courier": 0.05,
    "out-of-stock": 0.08,
    "declined": 0.08,
    "two-damaged": 0.10,
    "invoice-refused": 0.12,
}


def _order(rng: random.Random, order_id: str, path: str) -> FulfilmentRequested:
    lines = [f"SKU-{rng.randrange(10_000):04d}" for _ in range(rng.randint(1, 5))]
    express = rng.random() < 0.4
    card, postcode, customer = "tok_visa", "10115", f"cust-{rng.randrange(10_000):04d}"
    if path == "express":
        express = True
    elif path == "standard":
        express = False
    elif path == "one-damaged":
        lines[rng.randrange(len(lines))] = f"{DAMAGED_PREFIX}{rng.randrange(100):02d}"
    elif path == "no-lines":
        lines = []
    elif path == "no-courier":
        express, postcode = True, UNREACHABLE_POSTCODE
    elif path == "out-of-stock":
        lines[-1] = f"{MISSING_PREFIX}{rng.randrange(100):02d}"
    elif path == "declined":
        card = DECLINED_CARD
    elif path == "two-damaged":  # at most PACKERS lines: all in flight before the failure
        lines = [f"{DAMAGED_PREFIX}1", f"{DAMAGED_PREFIX}2", *lines[: rng.randint(0, 1)]]
        rng.shuffle(lines)
    elif path == "invoice-refused":
        customer = BLOCKED_CUSTOMER
    return FulfilmentRequested(
        order_id=order_id,
        customer_id=customer,
        amount_cents=rng.randrange(500, 50_000),
        card_token=card,
        postcode=postcode,
        express=express,
        lines=lines,
    )


def plan_orders(
    count: int, seed: int | None = None, run_id: str | None = None
) -> list[PlannedOrder]:
    """``count`` orders over every path of ``PATHS``, each with what it implies."""
    rng = random.Random(seed)
    run = run_id or uuid.uuid4().hex[:8]
    names, weights = list(PATHS), list(PATHS.values())
    orders = []
    for number in range(count):
        path = rng.choices(names, weights)[0]
        event = _order(rng, f"fo-{run}-{number:05d}", path)
        orders.append(PlannedOrder(event, path, expected(event)))
    return orders
