"""``SagaTest``: one saga instance run in memory on a virtual clock, checked at every step.

It drives the pure core (``decide``, ``decide_timer``, ``fold``) exactly as the processor does:
the instance is read back from its snapshot before each input, inputs are journaled as they
arrived, and timers fire inside the same loop. After every input or timer the saga accepts, it
checks the event-sourcing invariants (see ``_accept`` and ``sagas.testing._invariants``); an
input or timer the saga ignores or rejects must write nothing and change nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from sagas.saga import Saga
from sagas.testing._invariants import assert_replays, assert_timers_consistent, expect
from sagas.testing._workers import command_context, handle
from sagas.worker import Worker
from stream_processors.codecs.records import Command, Event, Record, decode_record
from stream_processors.core.decide import Decision, Input, decide, decide_timer, signal_command_id
from stream_processors.core.decide import idempotency_key as step_key
from stream_processors.core.decision import CHILD_START, COMMAND
from stream_processors.core.fold import fold
from stream_processors.core.instance import (
    Instance,
    Status,
    StepStatus,
    Timer,
    decode_snapshot,
    encode_snapshot,
)
from stream_processors.core.journal import JournalEntry, Kind
from stream_processors.core.model import CommandFailed, OperatorAction, SagaDefinition

#: Where a ``SagaTest``'s virtual clock starts: 2023-11-14T22:13:20Z, in epoch milliseconds.
START_MS = 1_700_000_000_000

C = TypeVar("C", bound=Command)
_SENT = (Kind.COMMAND_SENT, Kind.COMPENSATION_SENT)
# A cancelled step (a failed sibling branch) still awaits its in-flight command's reply.
_WAITING = (StepStatus.PENDING, StepStatus.COMPENSATING, StepStatus.CANCELLED)


def definition_of(saga: type[Saga] | SagaDefinition) -> SagaDefinition:
    """The compiled definition of a declared saga class (or the definition itself)."""
    if isinstance(saga, SagaDefinition):
        return saga
    definition = getattr(saga, "definition", None)
    if not isinstance(definition, SagaDefinition):
        raise TypeError(f"{saga!r} is neither a Saga class nor a SagaDefinition")
    return definition


@dataclass(frozen=True)
class SentCommand(Generic[C]):
    """A command the saga sent: the typed record, the step and attempt it is for, and its id.

    ``step`` is None for a handler's fire-and-forget command; ``compensation`` says it undoes
    its step. ``command_id`` is the id the worker sees (``saga/instance/step/attempt``), which
    the reply carries back; ``value`` the command's bytes as sent to ``topic`` with ``key``.
    """

    command: C
    saga: str
    instance_id: str
    step: str | None
    attempt: int
    compensation: bool
    command_id: str
    topic: str
    key: str
    value: bytes
    at_ms: int

    @property
    def idempotency_key(self) -> str:
        """The id without its attempt (``saga/instance/step``): the same for every attempt."""
        return step_key(self.command_id)[0]

    def __str__(self) -> str:
        what = "compensation of " if self.compensation else ""
        step = "no step" if self.step is None else f"{what}step {self.step!r}"
        return f"{self.command} ({step}, attempt {self.attempt}, id {self.command_id})"


class SagaTest:
    """One instance of ``saga``, run in memory on a virtual clock that starts at ``start_ms``.

    The clock moves only when told: ``advance`` fires every timer due in the window, each at
    its due time; ``tick`` (seconds) moves it that much before each input as well.
    ``start``, ``reply``, ``send`` and the operator actions insist that the saga accepts what
    they give it and raise ``AssertionError`` otherwise; ``feed`` and ``fire`` are the lenient,
    low-level forms that return whatever ``decide`` answered (an ignored or rejected input too).
    """

    def __init__(
        self,
        saga: type[Saga] | SagaDefinition,
        *,
        start_ms: int = START_MS,
        tick: float = 0.0,
    ) -> None:
        self.definition = definition_of(saga)
        self.now_ms = start_ms
        self.tick_ms = round(tick * 1000)
        self.journal: list[JournalEntry] = []
        self.sent: list[SentCommand[Command]] = []
        self._instance: Instance | None = None

    # -- what the instance is now ----------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._instance is not None

    @property
    def instance(self) -> Instance:
        """The engine's view of the instance: status, steps, timers, the saga's state."""
        expect(self._instance is not None, "the saga has not started: call start(event) first")
        assert self._instance is not None
        return self._instance

    @property
    def status(self) -> Status:
        """``running``, ``completed``, ``compensated``, ... (compares equal to those strings)."""
        return self.instance.status

    @property
    def state(self) -> Any:
        """The saga's own typed state (its ``state`` class), as folded so far."""
        return self.instance.data

    @property
    def timers(self) -> Mapping[str, Timer]:
        return self.instance.timers

    def due(self, name: str) -> int:
        """When timer ``name`` is due (epoch milliseconds)."""
        timer = self.instance.timers.get(name)
        expect(timer is not None, f"no timer {name!r}; timers set: {sorted(self.instance.timers)}")
        assert timer is not None
        return timer.due_ms

    @property
    def outstanding(self) -> list[SentCommand[Command]]:
        """The commands a step still waits a reply for, oldest first."""
        if self._instance is None:
            return []
        steps = self._instance.steps
        return [
            sent
            for sent in self.sent
            if sent.step is not None
            and steps[sent.step].command_id == sent.command_id
            and steps[sent.step].status in _WAITING
        ]

    def expect_command(self, command_type: type[C], *, step: str | None = None) -> SentCommand[C]:
        """The one outstanding command of ``command_type`` (for ``step``, if given)."""
        found = [
            sent
            for sent in self.outstanding
            if isinstance(sent.command, command_type) and step in (None, sent.step)
        ]
        if len(found) != 1:
            wanted = command_type.__name__ + ("" if step is None else f" for step {step!r}")
            listed = "".join(f"\n  {sent}" for sent in self.outstanding) or " none"
            raise AssertionError(
                f"expected one outstanding {wanted}, found {len(found)}; "
                f"outstanding commands:{listed}"
            )
        return found[0]  # type: ignore[return-value]  # its command is a C, checked above

    # -- inputs the saga must accept -------------------------------------------------------------

    def start(self, event: Event) -> Decision:
        """Start the instance with the saga's start event."""
        return self._accepted(self.feed(event), f"start event {type(event).__name__}")

    def reply(self, command: SentCommand[Any] | str, reply: Event) -> Decision:
        """Answer ``command`` (a sent command, or its id) with a worker's ``reply``."""
        command_id = command if isinstance(command, str) else command.command_id
        what = f"{type(reply).__name__} in reply to {command_id}"
        return self._accepted(self.feed(reply, command_id), what)

    def fail_transiently(
        self, command: SentCommand[Any] | str, error: str = "TransientError", message: str = ""
    ) -> Decision:
        """Answer ``command`` as a worker does when its handler raised a transient ``error``."""
        command_id = command if isinstance(command, str) else command.command_id
        failed = CommandFailed(error=error, message=message)
        return self._accepted(self.feed(failed, command_id), f"{error} in reply to {command_id}")

    def handle(self, command: SentCommand[Any], worker: Worker) -> Decision:
        """Let ``worker``'s handler answer ``command`` in memory, and feed its reply back."""
        reply = handle(worker, command.command, command_context(command))
        return self.reply(command, reply)

    def send(self, event: Event) -> Decision:
        """Send an event the saga takes (a wait's event, or one it has a handler for)."""
        return self._accepted(self.feed(event), f"event {type(event).__name__}")

    def signal(
        self,
        event: Event,
        *,
        by: str = "tester",
        reason: str = "test",
        command_id: str | None = None,
    ) -> Decision:
        """``sagas signal``: send ``event`` as an operator, journaled with who and why.

        As ``sagas.operator.signal`` does, a step's reply carries ``command_id`` if given, else
        the step's id (``signal_command_id``), which matches the attempt in flight.
        """
        note = f"signal by {by}: {reason}"
        if command_id is None and self._instance is not None:
            instance_id = self._instance.instance_id
            command_id = signal_command_id(self.definition, instance_id, type(event))
        decision = self.feed(event, command_id, note=note)
        return self._accepted(decision, f"signal {type(event).__name__}")

    def retry(self, *, by: str = "tester", reason: str = "test") -> Decision:
        """``sagas retry``: re-run the failed compensation of a parked instance."""
        return self._operator("retry", by, reason)

    def cancel(self, *, by: str = "tester", reason: str = "test") -> Decision:
        """``sagas cancel``: fail a running instance now, compensating its steps."""
        return self._operator("cancel", by, reason)

    def resolve(self, *, by: str = "tester", reason: str = "test") -> Decision:
        """``sagas resolve``: mark a parked instance handled."""
        return self._operator("resolve", by, reason)

    def _operator(self, action: str, by: str, reason: str) -> Decision:
        record = OperatorAction(action=action, by=by, reason=reason)
        decision = self.feed(record, note=f"{action} by {by}: {reason}")
        return self._accepted(decision, f"operator {action}")

    def _accepted(self, decision: Decision, what: str) -> Decision:
        outcome = decision.rejected and f"rejected ({decision.rejected})"
        outcome = outcome or (decision.ignored and f"ignored ({decision.ignored})")
        if outcome:
            status = self._instance.status if self._instance else "not started"
            listed = "".join(f"\n  {sent}" for sent in self.outstanding) or " none"
            raise AssertionError(
                f"the saga {outcome} the {what}; the instance is {status}, "
                f"outstanding commands:{listed}"
            )
        return decision

    # -- time --------------------------------------------------------------------------------------

    def advance(
        self, seconds: float = 0.0, *, minutes: float = 0.0, hours: float = 0.0, days: float = 0.0
    ) -> list[Decision]:
        """Move the clock forward, firing every timer due by then in due order, each at its time.

        Timers set by a timer that fires (a retry's timeout, say) fire too if due in the window.
        Returns the decisions of the timers that fired.
        """
        span_ms = round((seconds + 60 * minutes + 3600 * hours + 86400 * days) * 1000)
        expect(span_ms >= 0, f"the clock does not go back (advance by {span_ms} ms)")
        until = self.now_ms + span_ms
        fired: list[Decision] = []
        waiting: set[str] = set()  # due but ignored (a parked instance's timers wait)
        while self._instance is not None:
            timers = self._instance.timers.items()
            due = sorted((t.due_ms, name) for name, t in timers if name not in waiting)
            if not due or due[0][0] > until:
                break
            due_ms, name = due[0]
            decision = self.fire(name, at_ms=max(due_ms, self.now_ms))
            if decision.ignored:
                waiting.add(name)
            else:
                fired.append(decision)
        self.now_ms = until
        return fired

    def deploy(self, saga: type[Saga] | SagaDefinition) -> None:
        """Run the instance on from here under another definition (a new version)."""
        self.definition = definition_of(saga)

    # -- the low-level drive ---------------------------------------------------------------------

    def feed(
        self,
        record: Record,
        command_id: str | None = None,
        *,
        note: str | None = None,
        at_ms: int | None = None,
    ) -> Decision:
        """Give ``record`` to the saga as its inbox would, ``tick`` later (or at ``at_ms``).

        ``command_id`` is the id a reply carries; ``note`` who sent it and why. Returns the
        decision whatever it is; an accepted one has passed every invariant check.
        """
        self._tick(at_ms)
        raw = record.encode()
        received = Input(record, raw, command_id, note)
        decision = decide(self.definition, self._restored(), received, self.now_ms)
        if self._unchanged(decision):
            return decision
        expect(
            decision.entries[0].record is raw,
            "an input is journaled exactly as it arrived, never re-encoded",
        )
        self._accept(decision)
        return decision

    def fire(self, name: str, at_ms: int | None = None) -> Decision:
        """Fire timer ``name``: at its due time, or at ``at_ms`` (early: it is ignored)."""
        timer = None if self._instance is None else self._instance.timers.get(name)
        if at_ms is None:
            at_ms = self.now_ms + self.tick_ms if timer is None else max(timer.due_ms, self.now_ms)
        self._tick(at_ms)
        decision = decide_timer(self.definition, self._restored(), name, self.now_ms)
        if self._unchanged(decision):
            expect(decision.rejected is None, f"timer {name!r} was rejected: never dead-lettered")
            return decision
        expect(
            timer is not None and timer.due_ms <= self.now_ms,
            f"timer {name!r} ({timer}) fired at {self.now_ms}",
        )
        assert timer is not None
        first = decision.entries[0]
        if Kind(first.kind) is Kind.SAGA_PARKED:  # parked instead of firing: the timer stays set
            expect(len(decision.entries) == 1, f"parking wrote more: {decision.entries}")
            self._accept(decision)
            expect(self.instance.timers.get(name) == timer, f"timer {name!r} lost when parked")
            return decision
        expect(Kind(first.kind) is Kind.TIMER_FIRED, f"a timer's first entry is {first.kind}")
        expect(
            (first.timer, first.step, first.attempt) == (name, timer.step, timer.attempt),
            f"timer {name!r} ({timer}) journaled as {first}",
        )
        expect(first.record is None, f"TimerFired carries a record: {first}")
        self._accept(decision)
        rescheduled = any(Kind(e.kind) is Kind.TIMER_SCHEDULED for e in decision.entries)
        expect(
            name not in self.instance.timers or rescheduled,
            f"timer {name!r} is still set after it fired",
        )
        return decision

    def _tick(self, at_ms: int | None) -> None:
        if at_ms is None:
            self.now_ms += self.tick_ms
        else:
            expect(at_ms >= self.now_ms, f"the clock does not go back ({at_ms} < {self.now_ms})")
            self.now_ms = at_ms

    def _restored(self) -> Instance | None:
        """The processor reads the instance back from its snapshot store."""
        if self._instance is None:
            return None
        restored = decode_snapshot(encode_snapshot(self._instance))
        expect(
            restored == self._instance,
            f"the snapshot reads back as\n  {restored}\nnot\n  {self._instance}",
        )
        return restored

    def _unchanged(self, decision: Decision) -> bool:
        """Whether the saga ignored or rejected the input; if so it wrote and changed nothing."""
        if not (decision.ignored or decision.rejected):
            return False
        expect(
            not (decision.ignored and decision.rejected),
            f"both ignored ({decision.ignored}) and rejected ({decision.rejected})",
        )
        expect(decision.entries == [], f"an ignored input wrote {decision.entries}")
        expect(decision.commands == [], f"an ignored input sent {decision.commands}")
        expect(decision.instance == self._instance, "an ignored input changed the instance")
        return True

    def _accept(self, decision: Decision) -> None:
        """Check an accepted decision against the invariants, then take it."""
        before = self._instance
        expect(bool(decision.entries), "an accepted input always writes to the journal")
        after = decision.instance
        expect(after is not None, "an accepted input leaves an instance")
        assert after is not None
        for entry in decision.entries:
            expect(entry.at_ms == self.now_ms, f"{entry} not stamped with now ({self.now_ms})")
            expect(entry.instance == after.instance_id, f"{entry} of another instance")
            expect(
                entry.saga_version == self.definition.version,
                f"{entry} not stamped with version {self.definition.version}",
            )
        # Every command sent is journaled first, with the same id and bytes.
        sent_entries = [e for e in decision.entries if Kind(e.kind) in _SENT]
        journaled = [(e.command_id, e.record) for e in sent_entries]
        # A child saga's end (to its parent) and a parent's cancel of a child are consequences
        # of journaled entries (the end, the cancel), not sends journaled on their own.
        outgoing_sent = [c for c in decision.commands if c.kind in (COMMAND, CHILD_START)]
        commands = [(c.command_id, c.value) for c in outgoing_sent]
        expect(journaled == commands, f"commands sent {commands} but journaled {journaled}")
        # Each attempt has its own command id (the step's idempotency key is shared by all).
        ids = [c.command_id for c in self.sent] + [c.command_id for c in decision.commands]
        expect(len(ids) == len(set(ids)), f"a command id is reused: {ids}")
        if before is not None:
            incremental = fold(self.definition, before, decision.entries)
            expect(
                incremental == after,
                f"the previous state folded with the new entries gives\n  {incremental}\n"
                f"not the decision's\n  {after}",
            )
        for entry, outgoing in zip(sent_entries, outgoing_sent, strict=True):
            command = decode_record(outgoing.value)
            # A child step sends the child saga's start event (to its inbox) as its command.
            child_start = outgoing.kind == CHILD_START
            expect(isinstance(command, Command) or child_start, f"{command} sent as a command")
            self.sent.append(
                SentCommand(
                    command=cast(Command, command),
                    saga=self.definition.name,
                    instance_id=after.instance_id,
                    step=entry.step,
                    attempt=entry.attempt,
                    compensation=Kind(entry.kind) is Kind.COMPENSATION_SENT,
                    command_id=outgoing.command_id,
                    topic=outgoing.topic,
                    key=outgoing.key,
                    value=outgoing.value,
                    at_ms=entry.at_ms,
                )
            )
        self.journal += decision.entries
        self._instance = after
        assert_replays(self.definition, self.journal, after)
        assert_timers_consistent(after)
