"""``Run``: drives ``decide`` and ``decide_timer`` like the processor does, checking invariants.

Shared by the unit tests of the pure core (``test_decide_fold``, ``test_failure_handling``).
After every input or timer the engine accepts, ``Run`` checks the event-sourcing invariants:

- the state ``decide`` returned equals ``fold`` of the whole journal written so far (and of the
  previous state plus the new entries), with byte-identical snapshots;
- the previous state came back from its snapshot unchanged (timers included): the processor
  reads it from the snapshot store;
- the journal entries round-trip through ``JournalEntry.encode``/``decode`` and fold, from their
  embedded ``record`` bytes alone, to the same snapshot bytes;
- every command sent is journaled first with the same id and bytes, and no command id is reused;
- the timers agree with the steps: a ``retry:<step>`` timer belongs to a step waiting to retry,
  for its next attempt; a ``timeout:<step>`` timer to the step's attempt in flight; the
  ``deadline`` only to a running saga; a step waiting to retry has its retry timer (unless the
  saga has ended).

An ignored or rejected input (or timer) must write nothing and change nothing.
"""

from __future__ import annotations

from examples.order_fulfillment.saga import OrderFulfillment
from stream_processors.decide import (
    DEADLINE,
    Decision,
    Input,
    OutgoingCommand,
    decide,
    decide_timer,
    retry_timer,
    timeout_timer,
)
from stream_processors.fold import fold
from stream_processors.instance import Instance, StepStatus, decode_snapshot, encode_snapshot
from stream_processors.journal import JournalEntry, Kind
from stream_processors.model import SagaDefinition
from stream_processors.records import Record, decode_record

SAGA = OrderFulfillment.definition
T0 = 1_700_000_000_000

_RETRYING = (StepStatus.RETRYING, StepStatus.COMPENSATION_RETRYING)
_IN_FLIGHT = (StepStatus.PENDING, StepStatus.COMPENSATING)


def kinds(decision: Decision) -> list[Kind]:
    return [Kind(entry.kind) for entry in decision.entries]


def only_command(decision: Decision) -> tuple[OutgoingCommand, Record]:
    assert len(decision.commands) == 1, decision.commands
    command = decision.commands[0]
    return command, decode_record(command.value)


def assert_replays(
    definition: SagaDefinition, journal: list[JournalEntry], state: Instance
) -> None:
    """The journal alone rebuilds ``state``, byte for byte, also after an Avro round trip."""
    assert [entry.seq for entry in journal] == list(range(len(journal)))
    assert state.seq == len(journal)

    folded = fold(definition, None, journal)
    assert folded == state
    assert folded is not None
    assert encode_snapshot(folded) == encode_snapshot(state)

    wire = [entry.encode() for entry in journal]
    decoded = [JournalEntry.decode(data) for data in wire]
    assert decoded == journal
    # fold decodes each entry's embedded ``record`` bytes itself: nothing else is passed in.
    refolded = fold(definition, None, decoded)
    assert refolded is not None
    assert encode_snapshot(refolded) == encode_snapshot(state)
    snapshot = encode_snapshot(state)
    assert decode_snapshot(snapshot) == state
    assert encode_snapshot(decode_snapshot(snapshot)) == snapshot


def assert_timers_consistent(state: Instance) -> None:
    """Every timer belongs to something that waits for it, and every retry has its timer."""
    for name, timer in state.timers.items():
        if name == DEADLINE:
            assert timer.step is None
            assert not state.status.finished, f"deadline left set on a {state.status} saga"
            continue
        assert timer.step is not None, name
        step = state.steps.get(timer.step)
        assert step is not None, f"timer {name} for a step that never started"
        if name == retry_timer(timer.step):
            assert step.status in _RETRYING, (name, step)
            assert timer.attempt == step.attempt + 1, (name, timer, step)
        elif name == timeout_timer(timer.step):
            assert step.status in _IN_FLIGHT, (name, step)
            assert timer.attempt == step.attempt, (name, timer, step)
        else:
            raise AssertionError(f"unknown timer {name!r}")
    if not state.status.finished:
        for name, step in state.steps.items():
            if step.status in _RETRYING:
                assert retry_timer(name) in state.timers, f"{name} waits for a retry never due"


class Run:
    """Feeds inputs and due timers to the pure core, checking the invariants each time.

    ``feed`` advances the clock by one second unless given ``at_ms``; ``fire`` fires a timer at
    its due time unless given ``at_ms``.
    """

    def __init__(self, definition: SagaDefinition = SAGA, start_ms: int = T0) -> None:
        self.definition = definition
        self.now_ms = start_ms
        self.instance: Instance | None = None
        self.journal: list[JournalEntry] = []
        self.sent: list[OutgoingCommand] = []

    def _restored(self) -> Instance | None:
        """The processor reads the instance back from its snapshot store."""
        if self.instance is None:
            return None
        restored = decode_snapshot(encode_snapshot(self.instance))
        assert restored == self.instance
        return restored

    def _tick(self, at_ms: int | None) -> None:
        if at_ms is None:
            self.now_ms += 1_000
        else:
            assert at_ms >= self.now_ms, "the clock does not go back"
            self.now_ms = at_ms

    def feed(
        self,
        record: Record,
        command_id: str | None = None,
        *,
        note: str | None = None,
        at_ms: int | None = None,
    ) -> Decision:
        self._tick(at_ms)
        raw = record.encode()
        received = Input(record, raw, command_id, note)
        decision = decide(self.definition, self._restored(), received, self.now_ms)
        if self._unchanged(decision):
            return decision
        # The input is journaled exactly as it arrived, never re-encoded.
        assert decision.entries[0].record is raw
        self._accept(decision)
        return decision

    def fire(self, name: str, at_ms: int | None = None) -> Decision:
        """Fire timer ``name``: at its due time, or at ``at_ms`` (early: it is ignored)."""
        timer = None if self.instance is None else self.instance.timers.get(name)
        if at_ms is None:
            at_ms = timer.due_ms if timer is not None else self.now_ms + 1_000
        self._tick(at_ms)
        decision = decide_timer(self.definition, self._restored(), name, self.now_ms)
        if self._unchanged(decision):
            assert decision.rejected is None  # a timer is never dead-lettered
            return decision
        assert timer is not None and timer.due_ms <= self.now_ms
        first = decision.entries[0]
        assert Kind(first.kind) is Kind.TIMER_FIRED
        assert (first.timer, first.step, first.attempt) == (name, timer.step, timer.attempt)
        assert first.record is None
        self._accept(decision)
        assert name not in self.state.timers or Kind.TIMER_SCHEDULED in kinds(decision)
        return decision

    def due(self, name: str) -> int:
        """When timer ``name`` of the instance is due."""
        return self.state.timers[name].due_ms

    def _unchanged(self, decision: Decision) -> bool:
        if not (decision.ignored or decision.rejected):
            return False
        assert not (decision.ignored and decision.rejected)
        assert decision.entries == []
        assert decision.commands == []
        assert decision.instance == self.instance
        return True

    def _accept(self, decision: Decision) -> None:
        before = self.instance
        assert decision.entries, "an accepted input always writes to the journal"
        assert decision.instance is not None
        for entry in decision.entries:
            assert entry.at_ms == self.now_ms
            assert entry.instance == decision.instance.instance_id
            assert entry.saga_version == self.definition.version
        # Every command sent is journaled first, with the same id and bytes.
        sent_entries = [
            e
            for e in decision.entries
            if Kind(e.kind) in (Kind.COMMAND_SENT, Kind.COMPENSATION_SENT)
        ]
        assert [(e.command_id, e.record) for e in sent_entries] == [
            (c.command_id, c.value) for c in decision.commands
        ]
        # Each attempt has its own command id (the step's idempotency key is shared by all).
        ids = [c.command_id for c in [*self.sent, *decision.commands]]
        assert len(ids) == len(set(ids)), ids

        if before is not None:
            incremental = fold(self.definition, before, decision.entries)
            assert incremental == decision.instance
        self.journal += decision.entries
        self.sent += decision.commands
        self.instance = decision.instance
        assert_replays(self.definition, self.journal, self.instance)
        assert_timers_consistent(self.instance)

    @property
    def state(self) -> Instance:
        assert self.instance is not None
        return self.instance
