"""Shorthands for the pure core's unit tests, around the public test kit ``sagas.testing``.

``Run`` is a ``SagaTest`` (which checks the event-sourcing invariants after every input and
timer) of the example saga by default, whose clock moves one second before each input, so that
every decision in a journal has its own time.
"""

from __future__ import annotations

from examples.order_fulfillment.saga import OrderFulfillment
from sagas.testing import START_MS, SagaTest
from stream_processors.codecs.records import Record, decode_record
from stream_processors.core.decide import Decision, OutgoingCommand
from stream_processors.core.journal import Kind
from stream_processors.core.model import SagaDefinition

SAGA = OrderFulfillment.definition
T0 = START_MS


def Run(definition: SagaDefinition = SAGA, start_ms: int = T0) -> SagaTest:
    """A ``SagaTest`` of ``definition`` whose inputs arrive a second apart."""
    return SagaTest(definition, start_ms=start_ms, tick=1)


def kinds(decision: Decision) -> list[Kind]:
    return [Kind(entry.kind) for entry in decision.entries]


def only_command(decision: Decision) -> tuple[OutgoingCommand, Record]:
    assert len(decision.commands) == 1, decision.commands
    command = decision.commands[0]
    return command, decode_record(command.value)
