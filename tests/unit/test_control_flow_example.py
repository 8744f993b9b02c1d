"""The control-flow example in memory: every path of its plan ends as ``scenario.expected`` says.

Each planned order runs through ``SagaTest`` with the example's own workers answering every
command (in the order sent, so a parallel's and a map's replies interleave as on a broker), its
invoicing child run as a ``SagaTest`` of its own whose end is fed back as the ``ChildEnded`` the
child's processor would send, and the sleep fired by the virtual clock. The end, the number of
commands sent to the services and the child's end are compared with what the data implies;
the integration test (``tests/integration/test_control_flow.py``) checks the same on a broker.
"""

from __future__ import annotations

from collections import Counter

import pytest

from examples.control_flow import services
from examples.control_flow.messages import INVOICES, PAYMENTS, WAREHOUSE, InvoiceRequested
from examples.control_flow.saga import Fulfilment, Invoicing
from examples.control_flow.scenario import PATHS, Expected, PlannedOrder, plan_orders
from sagas.testing import SagaTest
from sagas.worker import Worker
from stream_processors.core.model import ChildEnded

WORKERS: dict[str, Worker] = {
    WAREHOUSE: services.warehouse,
    PAYMENTS: services.payments,
    INVOICES: services.invoicing,
}


def _child(test: SagaTest, start: InvoiceRequested) -> str:
    """Run the invoicing saga for ``start`` to its end; its status."""
    child = SagaTest(Invoicing)
    child.start(start)
    while child.outstanding:
        command = child.outstanding[0]
        child.handle(command, WORKERS[command.topic])
    return str(child.status.value)


def run(order: PlannedOrder) -> Expected:
    """Run one order to its end in memory; what it did, in ``Expected``'s terms."""
    test = SagaTest(Fulfilment)
    test.start(order.event)
    child: str | None = None
    for _ in range(200):
        if test.outstanding:
            command = test.outstanding[0]
            if isinstance(command.command, InvoiceRequested):
                child = _child(test, command.command)
                ended = ChildEnded("invoicing", command.key, child, None)
                test.reply(command, ended)
            else:
                test.handle(command, WORKERS[command.topic])
        elif test.timers:
            test.advance(seconds=2)
        else:
            break
    services_sent = sum(1 for s in test.sent if s.topic in WORKERS)
    return Expected(str(test.status.value), services_sent, child)


def test_the_plan_draws_every_path_and_every_outcome() -> None:
    orders = plan_orders(300, seed=7)
    assert set(Counter(o.path for o in orders)) == set(PATHS)
    assert set(Counter(o.expected.outcome for o in orders)) == {
        "completed",
        "failed",
        "compensated",
    }


@pytest.mark.parametrize("order", plan_orders(120, seed=11), ids=lambda o: o.path)
def test_each_order_ends_as_its_data_implies(order: PlannedOrder) -> None:
    assert run(order) == order.expected
