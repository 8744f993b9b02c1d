"""``decide``: what a saga does with one input or one due timer. Pure.

``decide(definition, instance, input, now_ms)`` and ``decide_timer(definition, instance, name,
now_ms)`` return a ``Decision``: the journal entries to append, the commands to send, and the
instance after those entries. They never change state themselves: every entry is applied with
``fold.apply`` as it is emitted, so the state a decision returns is, by construction, the fold
of the journal it wrote.

An input is one of:

- the start event: starts an instance (or is a duplicate start, ignored);
- a reply claimed by a step (or a worker's ``CommandFailed``, matched by command id): completes
  the step or its compensation, or fails the attempt. A failed attempt is retried on a timer if
  the step's ``RetryPolicy`` says so; a step that finally fails goes where its ``catch`` says
  (another step, or compensation), and otherwise fails the saga: the compensations of the
  completed steps then run in reverse order. A compensation that finally fails parks the
  instance in ``needs_attention`` for an operator.

  A reply is applied only if it matches what the saga waits for (``_unmatched``): it carries the
  ``sagalog.command_id`` of the attempt in flight (ignored as ``no-command-id`` without one, as
  ``stale`` with another), and its type is one the step expects in its current state (a
  compensation's reply while the step itself is in flight, say, is ``unexpected-reply``); a
  reply for an attempt that already has its answer is a ``duplicate``. The event a *wait* step
  waits for comes from a service's topic and carries no command id: it needs none. An
  operator's signal (``sagas signal``, an input with a ``note``) may name the step instead of
  the attempt: ``signal_command_id`` (``saga/instance/step``, the step's idempotency key)
  matches whichever attempt of that step is in flight. Ignored inputs change nothing and are
  not journaled; the processor counts them by reason;
- an event the saga has a handler for;
- an ``OperatorAction``: retry a parked instance's compensation, cancel (compensate now), or
  resolve a parked instance; journaled with who and why. One that does not apply is ignored
  as ``operator-<action>-not-applicable`` (``operator-unknown-not-applicable`` for an action
  that is none of ``OPERATOR_ACTIONS``: reasons are a fixed set, they become metric labels);
- anything else is *rejected*: the processor sends it to the dead-letter topic with the reason.

Timers are kept in the instance (``TimerScheduled``/``TimerFired``): a step's timeout, the wait
before a retry, the saga's deadline. Command ids are deterministic (saga, instance, step,
attempt), so a replayed decision produces the same id; the step's idempotency key is the id
without the attempt (``idempotency_key``), stable across retries, for the services' side effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stream_processors.codecs.records import CATALOG, Command, Record
from stream_processors.core.fold import apply
from stream_processors.core.instance import Instance, Status, StepState, StepStatus
from stream_processors.core.journal import VALUE_OF_KIND, JournalEntry, Kind
from stream_processors.core.model import (
    COMPENSATE,
    OPERATOR_ACTIONS,
    CommandFailed,
    Complete,
    Fail,
    OperatorAction,
    ReplyRole,
    SagaDefinition,
)
from stream_processors.core.policy import ALL, TIMEOUT, TRANSIENT


@dataclass(frozen=True, slots=True)
class Input:
    """A decoded inbox record. ``raw`` is its framed Avro, journaled as is (never re-encoded).

    ``note`` says who sent it and why, when an operator did (``sagas signal``).
    """

    record: Record
    raw: bytes
    command_id: str | None = None
    note: str | None = None


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


def idempotency_key(command_id: str) -> tuple[str, int]:
    """(the step's idempotency key, the attempt) of a ``command_id``: its inverse, but one.

    The key is the command id without its attempt (``saga/instance/step``; a compensation's
    step is ``step.compensation``), so every attempt of a step shares it and a compensation has
    its own. An id that does not end in an attempt number (not made by ``command_id``) is its
    own key, attempt 1.
    """
    key, _, attempt = command_id.rpartition("/")
    if not key or not attempt.isdigit():
        return command_id, 1
    return key, int(attempt)


def signal_command_id(
    definition: SagaDefinition, instance_id: str, reply: type[Record]
) -> str | None:
    """The command id an operator's signal of a ``reply`` type carries, if a step claims it.

    It names the step, not an attempt: ``saga/instance/step`` (``step.compensation`` for a
    compensation's reply), the step's idempotency key. With a note on the input (the operator
    path), ``decide`` matches it to whichever attempt of that step is in flight; a worker's
    reply always carries the full id of its attempt. None for a type no step claims.
    """
    claim = definition.replies.get(reply)
    if claim is None:
        return None
    step, role = claim
    compensation = role in (ReplyRole.COMPENSATED, ReplyRole.COMPENSATION_FAILED)
    suffix = f"{step}.compensation" if compensation else step
    return idempotency_key(command_id(definition.name, instance_id, suffix, 1))[0]


def timeout_timer(step: str) -> str:
    return f"timeout:{step}"


def retry_timer(step: str) -> str:
    return f"retry:{step}"


DEADLINE = "deadline"


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
            kind=VALUE_OF_KIND[kind],
            at_ms=self.now_ms,
            saga_version=self.definition.version,
            **fields,  # type: ignore[arg-type]
        )
        self.decision.instance = apply(self.definition, self.decision.instance, entry, decoded)
        self.decision.entries.append(entry)

    def note(self, kind: Kind, **fields: object) -> None:
        self.emit(self.instance.instance_id, kind, None, **fields)

    # -- timers --------------------------------------------------------------------------------

    def schedule(self, name: str, delay_ms: int, step: str | None = None, attempt: int = 0) -> None:
        due = self.now_ms + delay_ms
        self.note(Kind.TIMER_SCHEDULED, timer=name, due_ms=due, step=step, attempt=attempt)

    def cancel(self, name: str) -> None:
        if name in self.instance.timers:
            self.note(Kind.TIMER_CANCELLED, timer=name)

    # -- commands ------------------------------------------------------------------------------

    def send(self, step: str, compensation: bool = False, attempt: int = 1) -> None:
        """Start an attempt of a step (or of its compensation), with its timeout timer."""
        task = self.definition.tasks[step]
        spec = task.compensation if compensation else task.action
        assert spec is not None
        instance = self.instance
        suffix = f"{step}.compensation" if compensation else step
        cid = command_id(self.definition.name, instance.instance_id, suffix, attempt)
        if spec.command is None:  # a wait: nothing to send, only a timeout to keep
            self.note(Kind.WAIT_STARTED, step=step, command_id=cid, attempt=attempt)
        else:
            assert spec.build is not None and spec.topic is not None
            value = spec.build(instance.data).encode()
            kind = Kind.COMPENSATION_SENT if compensation else Kind.COMMAND_SENT
            self.note(kind, step=step, command_id=cid, attempt=attempt, record=value)
            self.decision.commands.append(
                OutgoingCommand(spec.topic, instance.instance_id, cid, value)
            )
        if spec.timeout_ms is not None:
            self.schedule(timeout_timer(step), spec.timeout_ms, step, attempt)

    def send_unbound(self, command: Command) -> None:
        """A handler's command: journaled and sent, but no step waits for its reply."""
        instance = self.instance
        topic = command.__topic__
        if topic is None:
            raise ValueError(f"{type(command).__qualname__} declares no topic")
        cid = command_id(self.definition.name, instance.instance_id, f"#{instance.seq}", 1)
        value = command.encode()
        self.note(Kind.COMMAND_SENT, command_id=cid, attempt=1, record=value)
        self.decision.commands.append(OutgoingCommand(topic, instance.instance_id, cid, value))

    def start_steps(self, names: tuple[str, ...]) -> None:
        for name in names:
            self.send(name)

    def finish_if_idle(self) -> None:
        if self.instance.status is Status.RUNNING and not self.instance.active:
            self.cancel(DEADLINE)
            self.note(Kind.SAGA_COMPLETED)

    # -- outcomes of an attempt ----------------------------------------------------------------

    def succeeded(self, step: str, current: StepState) -> None:
        self.cancel(timeout_timer(step))
        if current.status.compensation:
            self.note(Kind.COMPENSATION_SUCCEEDED, step=step, command_id=current.command_id)
            self.continue_compensation()
            return
        self.note(Kind.STEP_SUCCEEDED, step=step, command_id=current.command_id)
        if self.instance.status is Status.RUNNING:
            self.start_steps(self.definition.tasks[step].next)
            self.finish_if_idle()
        elif self.instance.status is Status.COMPENSATING:  # done while compensating: undo it too
            self.continue_compensation()

    def attempt_failed(self, step: str, current: StepState, errors: list[str], why: str) -> None:
        """An attempt failed with ``errors`` (names): retry, catch, compensate or park."""
        self.cancel(timeout_timer(step))
        task = self.definition.tasks[step]
        compensation = current.status.compensation
        spec = task.compensation if compensation else task.action
        assert spec is not None
        forward_while_compensating = not compensation and self.instance.status is not Status.RUNNING
        if not forward_while_compensating and spec.retry.retries(errors, current.attempt):
            delay = spec.retry.delay_ms(current.attempt, current.command_id)
            self.note(
                Kind.ATTEMPT_FAILED,
                step=step,
                command_id=current.command_id,
                attempt=current.attempt,
                reason=why,
            )
            self.schedule(retry_timer(step), delay, step, current.attempt + 1)
            return
        if compensation:
            self.note(
                Kind.COMPENSATION_FAILED, step=step, command_id=current.command_id, reason=why
            )
            self.note(Kind.SAGA_PARKED, reason=f"compensation failed: {why}")
            return
        self.note(Kind.STEP_FAILED, step=step, command_id=current.command_id, reason=why)
        if forward_while_compensating:  # or after the saga ended: nothing more to start
            if self.instance.status is Status.COMPENSATING:
                self.continue_compensation()
            return
        target = next((task.catch[e] for e in (*errors, ALL) if e in task.catch), COMPENSATE)
        if target == COMPENSATE:
            self.fail(why)
        else:
            self.send(target)

    def fail(self, reason: str) -> None:
        """Fail the saga: compensate completed steps in reverse, or fail outright if none."""
        if self.instance.status is not Status.RUNNING:
            return
        self.cancel(DEADLINE)
        self.note(Kind.SAGA_COMPENSATING, reason=reason)
        # Steps waiting to retry will not be retried now, and a wait has nothing in flight whose
        # reply must come first: both fail at once. Commands in flight are awaited.
        for name in self.instance.active:
            step = self.instance.steps[name]
            waits = self.definition.tasks[name].action.command is None
            if step.status is StepStatus.RETRYING or (waits and step.status is StepStatus.PENDING):
                self.cancel(retry_timer(name))
                self.cancel(timeout_timer(name))
                self.note(Kind.STEP_FAILED, step=name, reason=reason)
        self.continue_compensation()

    def continue_compensation(self) -> None:
        """Start the next compensation, or end the saga when none is left and none in flight."""
        instance = self.instance
        if instance.active:
            return  # one compensation at a time; in-flight steps are compensated when they reply
        for name in reversed(instance.completed):
            task = self.definition.tasks[name]
            if instance.steps[name].status is StepStatus.SUCCEEDED and task.compensation:
                self.send(name, compensation=True)
                return
        compensated = any(s.status is StepStatus.COMPENSATED for s in instance.steps.values())
        self.note(
            Kind.SAGA_COMPENSATED if compensated else Kind.SAGA_FAILED, reason=instance.reason
        )


def decide(
    definition: SagaDefinition, instance: Instance | None, received: Input, now_ms: int
) -> Decision:
    """What the saga does with ``received``, given the instance's current state (None if new)."""
    # Commands are encoded here; with a schema registry configured, encoding must not call it.
    with CATALOG.offline():
        return _decide(definition, instance, received, now_ms)


def _decide(
    definition: SagaDefinition, instance: Instance | None, received: Input, now_ms: int
) -> Decision:
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
        if definition.deadline_ms is not None:
            decider.schedule(DEADLINE, definition.deadline_ms)
        decider.start_steps(definition.first)
        decider.finish_if_idle()
        return decision
    if kind_of_input is definition.start:
        decision.ignored = "duplicate-start"
        return decision
    mismatch = _mismatch(definition, instance)
    resolving = isinstance(record, OperatorAction) and record.action == "resolve"
    if mismatch is not None and not resolving:
        decision.rejected = "definition-mismatch"  # to the DLQ: redrive once a fit version runs
        return decision
    if isinstance(record, OperatorAction):
        return _operator(decider, record, received)
    if isinstance(record, CommandFailed):
        if received.command_id is None:
            decision.ignored = "no-command-id"
            return decision
        step = next(
            (n for n, s in instance.steps.items() if _unmatched(received, s, False) is None),
            None,
        )
        if step is None:
            decision.ignored = "stale"
            return decision
        return _reply(decider, received, step, None)
    claim = definition.replies.get(kind_of_input)
    if claim is None:
        return _handle(definition, decider, received)
    return _reply(decider, received, claim[0], claim[1])


_WAITING = {
    ReplyRole.SUCCEEDED: StepStatus.PENDING,
    ReplyRole.FAILED: StepStatus.PENDING,
    ReplyRole.COMPENSATED: StepStatus.COMPENSATING,
    ReplyRole.COMPENSATION_FAILED: StepStatus.COMPENSATING,
}


def _reply(decider: _Decider, received: Input, step: str, role: ReplyRole | None) -> Decision:
    """A reply for ``step``; ``role`` None is a worker's CommandFailed (a transient error)."""
    instance = decider.instance
    decision = decider.decision
    current = instance.steps.get(step)
    if current is None:  # the step has not started: nothing of it is in flight
        decision.ignored = "unexpected-reply"
        return decision
    unmatched = _unmatched(received, current, _waited(decider.definition, step, role))
    if unmatched is not None:
        decision.ignored = unmatched
        return decision
    if current.status not in (StepStatus.PENDING, StepStatus.COMPENSATING):
        decision.ignored = "duplicate"  # this attempt has had its answer
        return decision
    if role is not None and current.status is not _WAITING[role]:
        decision.ignored = "unexpected-reply"  # e.g. a compensation's reply to the action
        return decision

    record = received.record
    decider.emit(
        instance.instance_id,
        Kind.INPUT_ACCEPTED,
        record,
        step=step,
        command_id=current.command_id,
        attempt=current.attempt,
        record=received.raw,
        reason=received.note,
    )
    if role in (ReplyRole.SUCCEEDED, ReplyRole.COMPENSATED):
        decider.succeeded(step, current)
    elif isinstance(record, CommandFailed):
        why = f"{step}: {record.error}: {record.message}"
        decider.attempt_failed(step, current, [record.error, TRANSIENT], why)
    else:
        name = type(record).__name__
        decider.attempt_failed(step, current, [name], f"{step}: {name}")
    return decision


def _unmatched(received: Input, current: StepState, waited: bool) -> str | None:
    """Why ``received`` does not answer the attempt ``current`` is at, or None if it does.

    A reply names its attempt by ``sagalog.command_id``; only the event a wait step waits for
    (``waited``: it comes from a service's topic, not from a worker) may come without one. An
    operator's input (it has a note) may name the step instead: its idempotency key.
    """
    given = received.command_id
    if given is None:
        return None if waited else "no-command-id"
    if given == current.command_id:
        return None
    if received.note is not None and given == idempotency_key(current.command_id)[0]:
        return None
    return "stale"


def _waited(definition: SagaDefinition, step: str, role: ReplyRole | None) -> bool:
    """Whether ``role`` (None: a ``CommandFailed``) answers a wait rather than a command."""
    if role is None:
        return False
    task = definition.tasks[step]
    compensation = role in (ReplyRole.COMPENSATED, ReplyRole.COMPENSATION_FAILED)
    spec = task.compensation if compensation else task.action
    return spec is not None and spec.command is None


def _mismatch(definition: SagaDefinition, instance: Instance) -> str | None:
    """Why this definition cannot run ``instance`` (it lacks a step the instance used), if so.

    An instance keeps working under a new version of its saga as long as every step it has
    started still exists; see "Changing a saga" in the README for what is safe to change.
    """
    unknown = [name for name in instance.steps if name not in definition.tasks]
    if not unknown:
        return None
    return (
        f"saga {definition.name} v{definition.version} has no step {unknown[0]!r}, which this "
        f"instance (started under v{instance.saga_version}) used"
    )


def decide_timer(
    definition: SagaDefinition, instance: Instance | None, name: str, now_ms: int
) -> Decision:
    """Fire timer ``name`` of ``instance`` if it is still set and due; otherwise ignore it."""
    with CATALOG.offline():
        return _decide_timer(definition, instance, name, now_ms)


def _decide_timer(
    definition: SagaDefinition, instance: Instance | None, name: str, now_ms: int
) -> Decision:
    decider = _Decider(definition, instance, now_ms)
    timer = None if instance is None else instance.timers.get(name)
    if timer is None or timer.due_ms > now_ms:
        decider.decision.ignored = "stale-timer"
        return decider.decision
    status = decider.instance.status
    if status is Status.NEEDS_ATTENTION:
        # Nothing moves while an operator decides: the timer stays set, and fires after a retry.
        decider.decision.ignored = "parked"
        return decider.decision
    mismatch = _mismatch(definition, decider.instance)
    if mismatch is not None and not status.finished:
        # Parked with the timer still set: what it was due to do is done once a version that
        # fits the instance runs and an operator retries (or is dropped by a resolve).
        decider.note(Kind.SAGA_PARKED, reason=mismatch)
        return decider.decision
    decider.note(Kind.TIMER_FIRED, timer=name, step=timer.step, attempt=timer.attempt)
    if mismatch is not None:
        return decider.decision
    step = timer.step
    current = None if step is None else decider.instance.steps.get(step)
    if name == DEADLINE:
        decider.fail("deadline exceeded")
    elif step is not None and current is not None and name == retry_timer(step):
        compensation = current.status.compensation
        if compensation or decider.instance.status is Status.RUNNING:  # not after a Complete
            decider.send(step, compensation=compensation, attempt=timer.attempt)
    elif (
        step is not None
        and current is not None
        and current.attempt == timer.attempt
        and current.status in (StepStatus.PENDING, StepStatus.COMPENSATING)
    ):
        decider.attempt_failed(step, current, [TIMEOUT], f"{step}: no reply in time")
    return decider.decision


def _operator(decider: _Decider, action: OperatorAction, received: Input) -> Decision:
    instance = decider.instance
    status = instance.status
    allowed = {
        "cancel": status is Status.RUNNING,
        "retry": status is Status.NEEDS_ATTENTION,
        "resolve": status is Status.NEEDS_ATTENTION,
    }
    if not allowed.get(action.action, False):
        # The action's name comes from the record: an unknown one must not make a new reason.
        name = action.action if action.action in OPERATOR_ACTIONS else "unknown"
        decider.decision.ignored = f"operator-{name}-not-applicable"
        return decider.decision
    why = f"{action.action} by {action.by}: {action.reason}"
    decider.emit(
        instance.instance_id, Kind.OPERATOR_ACTION, action, record=received.raw, reason=why
    )
    if action.action == "cancel":
        decider.fail(f"cancelled by {action.by}: {action.reason}")
    elif action.action == "resolve":
        for timer in list(decider.instance.timers):  # a resolved instance has nothing to wait for
            decider.cancel(timer)
        decider.note(Kind.SAGA_RESOLVED, reason=why)
    else:
        decider.note(Kind.SAGA_RESUMED, reason=why)
        _resume(decider)
    return decider.decision


def _resume(decider: _Decider) -> None:
    """Pick up where parking stopped the instance (``SagaResumed`` restored its status).

    A compensation that finally failed is tried again. Timers the instance kept while parked
    fire on their own. A step left waiting for a retry whose timer is gone (an earlier release
    used the timer up when it parked) is sent again now, and a compensating saga with nothing
    in flight moves on to its next compensation or ends: a retry never strands an instance.
    """
    parked = decider.instance
    for name, step in parked.steps.items():
        if step.status is StepStatus.COMPENSATION_FAILED:
            decider.send(name, compensation=True, attempt=step.attempt + 1)
            return
    for name, step in parked.steps.items():
        retrying = step.status in (StepStatus.RETRYING, StepStatus.COMPENSATION_RETRYING)
        if retrying and retry_timer(name) not in parked.timers:
            decider.send(name, compensation=step.status.compensation, attempt=step.attempt + 1)
    if decider.instance.status is Status.COMPENSATING:
        decider.continue_compensation()


def _handle(definition: SagaDefinition, decider: _Decider, received: Input) -> Decision:
    instance = decider.instance
    if instance.status.finished:
        decider.decision.ignored = "finished"
        return decider.decision
    handler = definition.handlers[type(received.record)]
    decider.emit(
        instance.instance_id,
        Kind.INPUT_ACCEPTED,
        received.record,
        record=received.raw,
        reason=received.note,
    )
    for directive in handler(decider.instance.data, received.record, decider.now_ms):
        if isinstance(directive, Fail):
            decider.fail(directive.reason)
        elif isinstance(directive, Complete):
            if decider.instance.status is Status.RUNNING:
                decider.cancel(DEADLINE)
                decider.note(Kind.SAGA_COMPLETED)
        else:
            decider.send_unbound(directive)
    return decider.decision
