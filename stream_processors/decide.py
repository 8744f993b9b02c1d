"""``decide``: what a saga does with one input. Pure.

``decide(definition, instance, input, now_ms)`` returns a ``Decision``: the journal entries to
append, the commands to send, and the instance after those entries. It never changes state
itself: every entry it emits is applied with ``fold.apply`` as it goes, so the state a decision
returns is, by construction, the fold of the journal it wrote.

An input is one of:

- the start event: starts an instance (or is a duplicate start, ignored);
- a reply claimed by a step: completes or fails the step, or its compensation. A reply whose
  command id is not the one the step waits for is *stale*; one for a step that already has its
  answer is a *duplicate*. Both are ignored and counted, never applied twice;
- an event the saga has a handler for;
- anything else is *rejected*: the processor sends it to the dead-letter topic with the reason.

Command ids are deterministic (saga, instance, step, attempt), so a worker can use them as
idempotency keys and a replayed decision produces the same id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stream_processors.fold import apply
from stream_processors.instance import Instance, Status, StepStatus
from stream_processors.journal import JournalEntry, Kind
from stream_processors.model import CommandSpec, Complete, Fail, ReplyRole, SagaDefinition
from stream_processors.records import Command, Record


@dataclass(frozen=True, slots=True)
class Input:
    """A decoded inbox record. ``raw`` is its framed Avro, journaled as is (never re-encoded)."""

    record: Record
    raw: bytes
    command_id: str | None = None


@dataclass(frozen=True, slots=True)
class OutgoingCommand:
    topic: str
    key: str
    command_id: str
    value: bytes


@dataclass(slots=True)
class Decision:
    """The outcome of one input. ``ignored`` and ``rejected`` carry a short, stable reason."""

    instance: Instance | None
    entries: list[JournalEntry] = field(default_factory=list)
    commands: list[OutgoingCommand] = field(default_factory=list)
    ignored: str | None = None
    rejected: str | None = None


def command_id(saga: str, instance_id: str, step: str, attempt: int) -> str:
    return f"{saga}/{instance_id}/{step}/{attempt}"


class _Decider:
    """Accumulates entries, folding each one at once so later choices see the new state."""

    def __init__(self, definition: SagaDefinition, instance: Instance | None, now_ms: int) -> None:
        self.definition = definition
        self.decision = Decision(instance)
        self.now_ms = now_ms

    @property
    def instance(self) -> Instance:
        assert self.decision.instance is not None
        return self.decision.instance

    def emit(
        self, instance_id: str, kind: Kind, decoded: Record | None = None, **fields: object
    ) -> None:
        seq = 0 if self.decision.instance is None else self.decision.instance.seq
        entry = JournalEntry(
            instance=instance_id,
            seq=seq,
            kind=kind.value,
            at_ms=self.now_ms,
            saga_version=self.definition.version,
            **fields,  # type: ignore[arg-type]
        )
        self.decision.instance = apply(self.definition, self.decision.instance, entry, decoded)
        self.decision.entries.append(entry)

    def send(self, step: str, spec: CommandSpec, kind: Kind, attempt: int = 1) -> None:
        instance = self.instance
        suffix = step if kind is Kind.COMMAND_SENT else f"{step}.compensation"
        cid = command_id(self.definition.name, instance.instance_id, suffix, attempt)
        value = spec.build(instance.data).encode()
        self.emit(
            instance.instance_id, kind, step=step, command_id=cid, attempt=attempt, record=value
        )
        self.decision.commands.append(OutgoingCommand(spec.topic, instance.instance_id, cid, value))

    def send_unbound(self, command: Command) -> None:
        """A handler's command: journaled and sent, but no step waits for its reply."""
        instance = self.instance
        topic = command.__topic__
        if topic is None:
            raise ValueError(f"{type(command).__qualname__} declares no topic")
        cid = command_id(self.definition.name, instance.instance_id, f"#{instance.seq}", 1)
        value = command.encode()
        self.emit(instance.instance_id, Kind.COMMAND_SENT, command_id=cid, attempt=1, record=value)
        self.decision.commands.append(OutgoingCommand(topic, instance.instance_id, cid, value))

    def start_steps(self, names: tuple[str, ...]) -> None:
        for name in names:
            self.send(name, self.definition.tasks[name].action, Kind.COMMAND_SENT)

    def finish_if_idle(self) -> None:
        instance = self.instance
        if instance.status is Status.RUNNING and not instance.active:
            self.emit(instance.instance_id, Kind.SAGA_COMPLETED)

    def fail(self, reason: str) -> None:
        """Fail the saga: compensate completed steps in reverse, or fail outright if none."""
        instance = self.instance
        if instance.status is not Status.RUNNING:
            return
        self.emit(instance.instance_id, Kind.SAGA_COMPENSATING, reason=reason)
        self.continue_compensation()

    def continue_compensation(self) -> None:
        """Start the next compensation, or end the saga when none is left and none in flight."""
        instance = self.instance
        if instance.active:
            return  # one compensation at a time; in-flight steps are compensated when they reply
        for name in reversed(instance.completed):
            task = self.definition.tasks[name]
            if instance.steps[name].status is StepStatus.SUCCEEDED and task.compensation:
                self.send(name, task.compensation, Kind.COMPENSATION_SENT)
                return
        compensated = any(s.status is StepStatus.COMPENSATED for s in instance.steps.values())
        ending = Kind.SAGA_COMPENSATED if compensated else Kind.SAGA_FAILED
        self.emit(instance.instance_id, ending, reason=instance.reason)


def decide(
    definition: SagaDefinition, instance: Instance | None, received: Input, now_ms: int
) -> Decision:
    """What the saga does with ``received``, given the instance's current state (None if new)."""
    record = received.record
    kind_of_input = type(record)
    decider = _Decider(definition, instance, now_ms)
    decision = decider.decision

    if kind_of_input not in definition.inputs:
        decision.rejected = "unexpected-type"
        return decision
    if instance is None:
        if kind_of_input is not definition.start:
            decision.rejected = "unknown-instance"
            return decision
        instance_id = str(getattr(record, definition.key))
        decider.emit(instance_id, Kind.SAGA_STARTED, record, record=received.raw)
        decider.start_steps(definition.first)
        decider.finish_if_idle()
        return decision
    if kind_of_input is definition.start:
        decision.ignored = "duplicate-start"
        return decision

    claim = definition.replies.get(kind_of_input)
    if claim is None:
        return _handle(definition, decider, received)
    step, role = claim
    current = instance.steps.get(step)
    waiting_for = (
        StepStatus.PENDING
        if role in (ReplyRole.SUCCEEDED, ReplyRole.FAILED)
        else StepStatus.COMPENSATING
    )
    if current is None or current.status is not waiting_for:
        same = current is not None and received.command_id in (None, current.command_id)
        decision.ignored = "duplicate" if same else "stale"
        return decision
    if received.command_id is not None and received.command_id != current.command_id:
        decision.ignored = "stale"
        return decision

    iid = instance.instance_id
    decider.emit(
        iid,
        Kind.INPUT_ACCEPTED,
        record,
        step=step,
        command_id=current.command_id,
        attempt=current.attempt,
        record=received.raw,
    )
    reason = f"{step}: {kind_of_input.__name__}"
    if role is ReplyRole.SUCCEEDED:
        decider.emit(iid, Kind.STEP_SUCCEEDED, step=step, command_id=current.command_id)
        if decider.instance.status is Status.RUNNING:
            decider.start_steps(definition.tasks[step].next)
            decider.finish_if_idle()
        elif decider.instance.status is Status.COMPENSATING:  # it finished late: undo it too
            decider.continue_compensation()
        # Otherwise the saga already ended (a handler's Complete): record the reply, do nothing.
    elif role is ReplyRole.FAILED:
        decider.emit(iid, Kind.STEP_FAILED, step=step, command_id=current.command_id, reason=reason)
        if decider.instance.status is Status.RUNNING:
            decider.fail(reason)
        elif decider.instance.status is Status.COMPENSATING:
            decider.continue_compensation()
    elif role is ReplyRole.COMPENSATED:
        decider.emit(iid, Kind.COMPENSATION_SUCCEEDED, step=step, command_id=current.command_id)
        decider.continue_compensation()
    else:
        decider.emit(
            iid, Kind.COMPENSATION_FAILED, step=step, command_id=current.command_id, reason=reason
        )
        decider.emit(iid, Kind.SAGA_PARKED, reason=f"compensation failed: {reason}")
    return decision


def _handle(definition: SagaDefinition, decider: _Decider, received: Input) -> Decision:
    instance = decider.instance
    if instance.status.finished:
        decider.decision.ignored = "finished"
        return decider.decision
    handler = definition.handlers[type(received.record)]
    decider.emit(instance.instance_id, Kind.INPUT_ACCEPTED, received.record, record=received.raw)
    for directive in handler(decider.instance.data, received.record, decider.now_ms):
        if isinstance(directive, Fail):
            decider.fail(directive.reason)
        elif isinstance(directive, Complete):
            if decider.instance.status is Status.RUNNING:
                decider.emit(instance.instance_id, Kind.SAGA_COMPLETED)
        else:
            decider.send_unbound(directive)
    return decider.decision
