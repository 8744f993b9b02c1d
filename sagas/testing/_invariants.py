"""The event-sourcing invariants ``SagaTest`` checks after every input and timer.

They raise ``AssertionError`` with a message saying what was expected and what was found, and
never use ``assert`` statements, so they hold under ``python -O`` too.
"""

from __future__ import annotations

from collections.abc import Sequence

from stream_processors.core.decide import DEADLINE, retry_timer, timeout_timer
from stream_processors.core.decision import heartbeat_timer, sleep_timer
from stream_processors.core.fold import fold
from stream_processors.core.instance import Instance, StepStatus, decode_snapshot, encode_snapshot
from stream_processors.core.journal import JournalEntry
from stream_processors.core.model import SagaDefinition

_RETRYING = (StepStatus.RETRYING, StepStatus.COMPENSATION_RETRYING)
#: A cancelled step's command is still in flight: its timeout still bounds the wait for it.
_IN_FLIGHT = (StepStatus.PENDING, StepStatus.COMPENSATING, StepStatus.CANCELLED)


def expect(condition: bool, message: str) -> None:
    """Raise ``AssertionError(message)`` unless ``condition`` holds."""
    if not condition:
        raise AssertionError(message)


def assert_replays(
    definition: SagaDefinition, journal: Sequence[JournalEntry], state: Instance
) -> None:
    """The journal alone rebuilds ``state``, byte for byte, also after an Avro round trip.

    Checks that the positions run 0, 1, 2, ... up to the state's ``seq``; that ``fold`` of the
    journal equals ``state`` with the same snapshot bytes; that every entry round-trips through
    ``JournalEntry.encode``/``decode``; that the decoded entries fold, from their embedded
    ``record`` bytes alone, to the same snapshot bytes; and that the snapshot round-trips.
    """
    positions = [entry.seq for entry in journal]
    expect(
        positions == list(range(len(journal))),
        f"journal positions should run 0..{len(journal) - 1}, found {positions}",
    )
    expect(
        state.seq == len(journal),
        f"the state is at position {state.seq}, the journal has {len(journal)} entries",
    )
    folded = fold(definition, None, journal)
    expect(folded == state, f"fold of the journal\n  {folded}\ndiffers from the state\n  {state}")
    snapshot = encode_snapshot(state)
    expect(
        folded is not None and encode_snapshot(folded) == snapshot,
        "fold of the journal gives other snapshot bytes than the state",
    )
    decoded = [JournalEntry.decode(entry.encode()) for entry in journal]
    for before, after in zip(journal, decoded, strict=True):
        expect(before == after, f"entry does not survive Avro: {before} became {after}")
    # fold decodes each entry's embedded ``record`` bytes itself: nothing else is passed in.
    refolded = fold(definition, None, decoded)
    expect(
        refolded is not None and encode_snapshot(refolded) == snapshot,
        "the journal read back from Avro folds to other snapshot bytes than the state",
    )
    restored = decode_snapshot(snapshot)
    expect(restored == state, f"the snapshot reads back as\n  {restored}\nnot\n  {state}")
    expect(encode_snapshot(restored) == snapshot, "the snapshot read back encodes differently")


def assert_timers_consistent(state: Instance) -> None:
    """Every timer belongs to something that waits for it, and every retry has its timer.

    A ``retry:<step>`` timer belongs to a step waiting to retry, for its next attempt; a
    ``timeout:<step>`` or ``heartbeat:<step>`` timer to the step's attempt in flight; a
    ``sleep:<step>`` timer to a sleep that has not woken; the ``deadline`` only to a saga that
    has not finished; and a step waiting to retry has its retry timer (unless the saga ended).
    """
    where = f"instance {state.instance_id!r} ({state.status})"
    for name, timer in state.timers.items():
        if name == DEADLINE:
            expect(timer.step is None, f"{where}: the deadline names step {timer.step!r}")
            expect(not state.status.finished, f"{where}: deadline left set on a finished saga")
            continue
        expect(timer.step is not None, f"{where}: timer {name!r} names no step")
        assert timer.step is not None  # for the type checker; checked just above
        step = state.steps.get(timer.step)
        expect(step is not None, f"{where}: timer {name!r} for step {timer.step!r}, never started")
        assert step is not None
        if name == retry_timer(timer.step):
            expect(step.status in _RETRYING, f"{where}: {name!r} set, but the step is {step}")
            expect(
                timer.attempt == step.attempt + 1,
                f"{where}: {name!r} is for attempt {timer.attempt}, the step is at {step.attempt}",
            )
        elif name in (timeout_timer(timer.step), heartbeat_timer(timer.step)):
            expect(step.status in _IN_FLIGHT, f"{where}: {name!r} set, but the step is {step}")
            expect(
                timer.attempt == step.attempt,
                f"{where}: {name!r} is for attempt {timer.attempt}, the step is at {step.attempt}",
            )
        elif name == sleep_timer(timer.step):
            expect(
                step.status is StepStatus.PENDING and timer.attempt == step.attempt,
                f"{where}: {name!r} set, but the sleep is {step}",
            )
        else:
            raise AssertionError(f"{where}: unknown timer {name!r}")
    if not state.status.finished:
        for name, step in state.steps.items():
            if step.status in _RETRYING:
                expect(
                    retry_timer(name) in state.timers,
                    f"{where}: step {name!r} waits for a retry that is never due",
                )
