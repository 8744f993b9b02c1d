"""A worker's concurrency (one key at a time, K keys at once), its pace, and async handlers."""

from __future__ import annotations

import threading
import time

import pytest

from examples.order_fulfillment.messages import MakePayment, PaymentCompleted
from sagas import CommandContext, Worker
from sagas.testing import command_context, handle
from sagas.worker_pool import Pace, run_by_key


def test_one_keys_items_run_in_order_and_keys_side_by_side() -> None:
    items = [(key, n) for n in range(5) for key in "abcd"]
    seen: dict[str, list[int]] = {}
    running, most = 0, 0
    lock = threading.Lock()

    def run(item: tuple[str, int]) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
            seen.setdefault(item[0], []).append(item[1])

    run_by_key(items, lambda item: item[0], run, concurrency=3)
    assert seen == {key: [0, 1, 2, 3, 4] for key in "abcd"}
    assert 1 < most <= 3


def test_an_error_is_raised_once_the_batch_has_ended() -> None:
    done: list[int] = []

    def run(n: int) -> None:
        if n == 2:
            raise RuntimeError("boom")
        time.sleep(0.01)
        done.append(n)

    with pytest.raises(RuntimeError, match="boom"):
        run_by_key(list(range(6)), lambda n: n, run, concurrency=4)
    assert sorted(done) == [0, 1, 3, 4, 5]  # the others finished: nothing left running


def test_a_pace_spaces_starts_evenly() -> None:
    now = [100.0]
    waits: list[float] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(round(timeout or 0, 3))
            return False

    pace = Pace(4, clock=lambda: now[0])
    for _ in range(4):
        pace.wait(Stop())
    assert waits == [0.25, 0.5, 0.75]  # the first goes at once, then one every 1/4 s


def test_an_async_handler_is_awaited() -> None:
    worker = Worker("async-payments", concurrency=4)

    @worker.handles(MakePayment)
    async def pay(command: MakePayment, context: CommandContext) -> PaymentCompleted:
        return PaymentCompleted(order_id=command.order_id, payment_id="p-async")

    command = MakePayment(order_id="o", customer_id="c", amount_cents=1, card_token="t")
    reply = handle(worker, command, command_context(command))
    assert isinstance(reply, PaymentCompleted) and reply.payment_id == "p-async"
