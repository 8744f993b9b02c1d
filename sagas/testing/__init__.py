"""Sagalog's test kit: run sagas and worker handlers in memory, and verify recorded histories.

No broker, no pytest: plain functions and classes that raise ``AssertionError`` with a message
saying what was expected and what was found, usable from any test runner.

``SagaTest`` runs one saga instance on a virtual clock::

    from sagas.testing import SagaTest

    test = SagaTest(OrderFulfillment)               # the clock starts at START_MS
    test.start(OrderPlaced(order_id="o-1", ...))
    payment = test.expect_command(MakePayment)      # the one outstanding MakePayment
    test.reply(payment, PaymentCompleted(order_id="o-1", payment_id="p-1"))
    test.fail_transiently(test.expect_command(CreateShippingLabel), "ConnectionError")
    test.advance(seconds=1)                         # fires the retry timer, at its due time
    test.handle(test.expect_command(CreateShippingLabel), services.shipping)
    assert test.status == "completed"               # also: test.state, test.journal, test.sent

After every input and every timer the saga accepts, it checks the engine's invariants: the
state is the fold of the journal, byte for byte also after an Avro round trip of the journal
and of the snapshot; every command is journaled before it is sent, with a fresh id; every timer
belongs to a step waiting for it. ``retry``, ``cancel``, ``resolve`` and ``signal`` act as the
``sagas`` operator commands do. Child sagas: ``child_ended(sent, status)`` answers a child step
as its child would; ``start(event, parent=sent)`` runs the child side, whose report to its parent
is ``reported``; every record sent (a child's cancel and end too) is in ``outgoing``.

``command_context`` builds the ``CommandContext`` a worker's handler gets, and ``handle`` runs a
``Worker``'s handler as its runtime does (the reply, a ``BusinessError``'s reply, or
``CommandFailed`` for a transient error). ``task_command`` builds the ``TaskCommand`` a
declarative Task sends, so ``handle`` runs a worker's action handler (``Worker.action``).

``DefinitionTest`` runs one execution of a declarative definition (a file, a loaded States
Language document, or a compiled definition): ``start_execution(input)``, ``expect_task(state)``,
``succeed_task(state, output)``, ``fail_task(state, error, cause)``, ``task_input(task)``,
``document(scope)`` and ``output``; the clock and the checks are ``SagaTest``'s.

``LimitQueue`` keeps one declared limit's queue in one partition on a virtual clock, as the
processor does (flow control): which queued step goes next, by priority, age and ageing, and
when the rate lets it.

``verify_histories`` replays recorded journals (``SagaTest.journal``, entries read from the
journal topic, or files saved with ``sagas history --json`` and read by ``load_histories``)
against a new version of a saga, and reports every instance that would decide differently, with
the journal position of the first difference: a CI check before deploying a change.
"""

from sagas.testing._definitions import DefinitionTest
from sagas.testing._histories import (
    Difference,
    HistoriesDiffer,
    HistoryReport,
    describe,
    load_histories,
    verify_histories,
)
from sagas.testing._invariants import assert_replays, assert_timers_consistent
from sagas.testing._limits import LimitQueue
from sagas.testing._saga_test import START_MS, SagaTest, SentCommand
from sagas.testing._workers import command_context, handle, task_command

__all__ = [
    "START_MS",
    "DefinitionTest",
    "Difference",
    "HistoriesDiffer",
    "HistoryReport",
    "LimitQueue",
    "SagaTest",
    "SentCommand",
    "assert_replays",
    "assert_timers_consistent",
    "command_context",
    "describe",
    "handle",
    "load_histories",
    "task_command",
    "verify_histories",
]
