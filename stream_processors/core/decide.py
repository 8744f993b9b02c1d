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
  matches whichever attempt of that step is in flight (of a node run more than once, a loop's
  visits or a map's items, the first run in flight). Ignored inputs change nothing and are
  not journaled; the processor counts them by reason;
- an event the saga has a handler for;
- an ``OperatorAction``: retry a parked instance's compensation, cancel (compensate now),
  resolve a parked instance, or prioritize (a new priority for its commands queued behind a
  limit: journaled only, the processor applies it to the partition's queue: ``prioritized``);
  journaled with who and why. One that does not apply is ignored
  as ``operator-<action>-not-applicable`` (``operator-unknown-not-applicable`` for an action
  that is none of ``OPERATOR_ACTIONS``: reasons are a fixed set, they become metric labels);
- anything else is *rejected*: the processor sends it to the dead-letter topic with the reason.

An operator's action or signal that carries a request id (``Input.operator_id``, the
``sagalog.operator_id`` header the ``sagas`` CLI sets) gets a verdict in the journal
(``_verdict``): applied, the first entry of the decision carries the id; not applied (ignored
or rejected, an unknown instance included), ``Decision.refusal`` is an ``OperatorRefused`` entry
with the reason, which the processor journals alone and which changes no state (``fold`` skips
it). Such an input is never dead-lettered by ``decide``: the operator hears why at once.

Timers are kept in the instance (``TimerScheduled``/``TimerFired``): a step's timeout, the wait
before a retry, the saga's deadline. Command ids are deterministic (saga, instance, step,
attempt), so a replayed decision produces the same id; the step's idempotency key is the id
without the attempt (``idempotency_key``), stable across retries, for the services' side effects.
"""

from __future__ import annotations

import re
from dataclasses import replace

from stream_processors.codecs.records import CATALOG, Record
from stream_processors.core.decider import DEADLINE, MAX_EARLY_EVENTS, ROOT, Decider
from stream_processors.core.decision import (
    Decision,
    Input,
    OutgoingCommand,
    command_id,
    heartbeat_timer,
    idempotency_key,
    retry_timer,
    signal_command_id,
    sleep_timer,
    timeout_timer,
)
from stream_processors.core.instance import Instance, Status, StepState, StepStatus
from stream_processors.core.journal import REFUSAL_SEQ, JournalEntry, Kind
from stream_processors.core.model import (
    CHILD_FAILED,
    OPERATOR_ACTIONS,
    ChildEnded,
    CommandFailed,
    Complete,
    Fail,
    OperatorAction,
    ReplyRole,
    SagaDefinition,
)
from stream_processors.core.policy import HEARTBEAT_TIMEOUT, TIMEOUT, TRANSIENT
from stream_processors.core.tasks import TASK_FAILED, TaskFailed, TaskHeartbeat, TaskSucceeded
from stream_processors.core.throttle import PRIORITIZE, priority_in

__all__ = [
    "DEADLINE",
    "Decision",
    "Input",
    "OutgoingCommand",
    "command_id",
    "decide",
    "decide_timer",
    "idempotency_key",
    "prioritized",
    "refusal_parts",
    "refusal_reason",
    "retry_timer",
    "signal_command_id",
    "timeout_timer",
]


def decide(
    definition: SagaDefinition, instance: Instance | None, received: Input, now_ms: int
) -> Decision:
    """What the saga does with ``received``, given the instance's current state (None if new)."""
    # Commands are encoded here; with a schema registry configured, encoding must not call it.
    with CATALOG.offline():
        decision = _decide(definition, instance, received, now_ms)
    if received.operator_id is not None:
        _verdict(definition, instance, received, decision, now_ms)
    return decision


def _decide(
    definition: SagaDefinition, instance: Instance | None, received: Input, now_ms: int
) -> Decision:
    record = received.record
    kind_of_input = type(record)
    decider = Decider(definition, instance, now_ms)
    decision = decider.decision

    if kind_of_input not in definition.inputs:
        decision.rejected = "unexpected-type"
        return decision
    if instance is None:
        if kind_of_input is not definition.start:
            decision.rejected = "unknown-instance"
            return decision
        _start(decider, received)
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
    if isinstance(record, _MATCHED_BY_ID):
        if received.command_id is None:
            decision.ignored = "no-command-id"
            return decision
        step = _key_in(definition, instance, received.command_id)
        if step is None or step not in instance.steps or received.note is not None:
            step = _matched(instance, received, list(instance.steps))
        if step is None:
            decision.ignored = "stale"
            return decision
        return _reply(decider, received, step, None)
    claim = definition.replies.get(kind_of_input)
    if claim is None:
        return _handle(definition, decider, received)
    node, role = claim
    key = _activation(definition, instance, received, node, role)
    if key is None:
        return _early(decider, received, node, role)
    return _reply(decider, received, key, role)


#: Replies any step may take: matched to their step by command id alone (``_reply``).
_MATCHED_BY_ID = (CommandFailed, ChildEnded, TaskSucceeded, TaskFailed, TaskHeartbeat)


def _start(decider: Decider, received: Input) -> None:
    """Start an instance; a child saga's start names its parent (``reply_to``/``reply_key``)."""
    definition, record = decider.definition, received.record
    instance_id = str(getattr(record, definition.key))
    child = received.reply_to is not None
    decider.emit(
        instance_id,
        Kind.SAGA_STARTED,
        record,
        record=received.raw,
        reply_to=received.reply_to,
        reply_key=received.reply_key if child else None,
        command_id=received.command_id if child else None,
        trace=received.trace,
    )
    if definition.deadline_ms is not None:
        decider.schedule(DEADLINE, definition.deadline_ms)
    for name in definition.first:
        decider.enter(name, ROOT)
    decider.finish_if_idle()


def _activation(
    definition: SagaDefinition, instance: Instance, received: Input, node: str, role: ReplyRole
) -> str | None:
    """The step (activation of ``node``) a claimed reply answers: the one its command id names,
    else (an awaited event: no id) the one waiting for it; None if no activation of the node
    is there to take it."""
    given = received.command_id
    if given is not None and received.note is None:
        # A worker's reply names its attempt: the step's key is in the id (the common case,
        # found without scanning every step of the instance: a map's items may be thousands).
        key = _key_in(definition, instance, given)
        step = None if key is None else instance.steps.get(key)
        if step is not None and step.node == node and step.command_id == given:
            return key
    keys = [k for k, s in instance.steps.items() if s.node == node]
    if given is not None:
        matched = _matched(instance, received, keys)
        if matched is not None:
            return matched
        return keys[-1] if keys else None  # ``_reply`` says why it does not match
    waiting = _WAITING[role]
    open_ = [k for k in keys if instance.steps[k].status is waiting]
    if open_:
        return open_[0]
    if keys and not _waited(definition, keys[-1], instance, role):
        return keys[-1]  # a command's reply without an id: ``_reply`` ignores it as such
    return None


def _key_in(definition: SagaDefinition, instance: Instance, given: str) -> str | None:
    """The step key a command id of this instance names (``saga/instance/key/attempt``; a
    compensation's key ends in ``.compensation``, which is not a step's); None otherwise."""
    prefix = f"{definition.name}/{instance.instance_id}/"
    stem = idempotency_key(given)[0]
    if not stem.startswith(prefix):
        return None
    key = stem[len(prefix) :]
    return key.removesuffix(".compensation")


def _matched(instance: Instance, received: Input, keys: list[str]) -> str | None:
    """The step of ``keys`` whose attempt ``received``'s command id names, if any.

    An operator's signal that names a node matches each of its runs (a loop's visits, a map's
    items): it answers one in flight, not an earlier run that already has its answer."""
    matched = [k for k in keys if _unmatched(received, instance.steps[k], False, k) is None]
    in_flight = [k for k in matched if instance.steps[k].status in _IN_FLIGHT]
    first = in_flight or matched
    return first[0] if first else None


def _early(decider: Decider, received: Input, node: str, role: ReplyRole) -> Decision:
    """An awaited event whose wait is not running: kept for the wait, or journaled unmatched.

    Kept when the wait may still start (the instance runs, and the wait has not run yet or may
    run again in a loop) and declares a window for early events; otherwise it is journaled as
    unmatched, so that it shows in the history."""
    decision = decider.decision
    instance = decider.instance
    task = decider.definition.tasks[node]
    compensation = role in (ReplyRole.COMPENSATED, ReplyRole.COMPENSATION_FAILED)
    spec = task.compensation if compensation else task.action
    if spec is None or spec.command is not None:  # a worker's reply for a step never started
        decision.ignored = "unexpected-reply"
        return decision
    if instance.status.finished:
        decision.ignored = "finished"
        return decision
    room = len(instance.early) < MAX_EARLY_EVENTS
    runs = sum(1 for step in instance.steps.values() if step.node == node)
    may_start = runs == 0 or (task.max_visits is not None and runs < task.max_visits)
    keep = (
        not compensation
        and spec.early_ms > 0
        and room
        and may_start
        and instance.status is Status.RUNNING
    )
    decider.emit(
        instance.instance_id,
        Kind.EVENT_KEPT if keep else Kind.EVENT_UNMATCHED,
        received.record,
        step=node,
        record=received.raw,
        reason=received.note,
    )
    return decision


_WAITING = {
    ReplyRole.SUCCEEDED: StepStatus.PENDING,
    ReplyRole.FAILED: StepStatus.PENDING,
    ReplyRole.COMPENSATED: StepStatus.COMPENSATING,
    ReplyRole.COMPENSATION_FAILED: StepStatus.COMPENSATING,
}
#: A cancelled step's command is still in flight: its reply is taken like a pending one's.
_IN_FLIGHT = (StepStatus.PENDING, StepStatus.COMPENSATING, StepStatus.CANCELLED)


def _reply(decider: Decider, received: Input, step: str, role: ReplyRole | None) -> Decision:
    """A reply for ``step``; ``role`` None is matched by command id alone: a worker's
    ``CommandFailed`` (a transient error) or a child saga's ``ChildEnded``."""
    instance = decider.instance
    decision = decider.decision
    current = instance.steps.get(step)
    if current is None:  # the step has not started: nothing of it is in flight
        decision.ignored = "unexpected-reply"
        return decision
    waited = _waited(decider.definition, step, instance, role)
    unmatched = _unmatched(received, current, waited, step)
    if unmatched is not None:
        decision.ignored = unmatched
        return decision
    if current.status not in _IN_FLIGHT:
        decision.ignored = "duplicate"  # this attempt has had its answer
        return decision
    expected = current.status if current.status is not StepStatus.CANCELLED else StepStatus.PENDING
    if role is not None and expected is not _WAITING[role]:
        decision.ignored = "unexpected-reply"  # e.g. a compensation's reply to the action
        return decision

    record = received.record
    heartbeat = _heartbeat_interval(decider.definition, current, record)
    if isinstance(record, TaskHeartbeat) and heartbeat is None:
        decision.ignored = "no-heartbeat-expected"
        return decision
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
    if heartbeat is not None:  # the attempt lives on: its heartbeat timer starts again
        decider.schedule(heartbeat_timer(step), heartbeat, step, current.attempt)
    elif role in (ReplyRole.SUCCEEDED, ReplyRole.COMPENSATED) or isinstance(record, TaskSucceeded):
        decider.succeeded(step, current, received.raw)
    elif isinstance(record, TaskFailed):
        why = f"{step}: {record.error}" + (f": {record.cause}" if record.cause else "")
        errors = [record.error, TASK_FAILED]
        decider.attempt_failed(step, current, errors, why, record.cause or "")
    elif isinstance(record, ChildEnded):
        if record.status == Status.COMPLETED.value:
            decider.succeeded(step, current, received.raw)
        else:
            why = f"{step}: child saga {record.saga} {record.instance} {record.status}"
            reason = f": {record.reason}" if record.reason else ""
            decider.attempt_failed(step, current, [CHILD_FAILED], why + reason)
    elif isinstance(record, CommandFailed):
        why = f"{step}: {record.error}: {record.message}"
        decider.attempt_failed(step, current, [record.error, TRANSIENT], why, record.message)
    else:
        name = type(record).__name__
        decider.attempt_failed(step, current, [name], f"{step}: {name}")
    return decision


def _heartbeat_interval(
    definition: SagaDefinition, current: StepState, record: Record
) -> int | None:
    """The heartbeat interval a ``TaskHeartbeat`` restarts: its task's, while its attempt is
    in flight; None for any other input, or a heartbeat nothing expects."""
    if not isinstance(record, TaskHeartbeat) or current.status is not StepStatus.PENDING:
        return None
    task = definition.tasks.get(current.node)
    return None if task is None else task.action.heartbeat_ms


def _unmatched(received: Input, current: StepState, waited: bool, step: str) -> str | None:
    """Why ``received`` does not answer the attempt ``current`` (of ``step``) is at, or None.

    A reply names its attempt by ``sagalog.command_id``; only the event a wait step waits for
    (``waited``: it comes from a service's topic, not from a worker) may come without one. An
    operator's input (it has a note) may name the step instead: its idempotency key, or the
    node it is a run of (``signal_command_id``: ``saga/instance/b`` for the visit ``b~2``).
    """
    given = received.command_id
    if given is None:
        return None if waited else "no-command-id"
    if given == current.command_id:
        return None
    if received.note is not None and given in _step_ids(current, step):
        return None
    return "stale"


def _step_ids(current: StepState, step: str) -> tuple[str, str]:
    """The ids an operator's signal may name the step by: its idempotency key, and the one of
    the node it runs (the same on the main path's first visit)."""
    key = idempotency_key(current.command_id)[0]
    suffix = ".compensation" if key.endswith(".compensation") else ""
    base = key.removesuffix(suffix)
    if not base.endswith(step):  # not an id ``command_id`` made for this step
        return key, key
    return key, f"{base[: len(base) - len(step)]}{current.node}{suffix}"


def _waited(
    definition: SagaDefinition, step: str, instance: Instance, role: ReplyRole | None
) -> bool:
    """Whether ``role`` (None: matched by id) answers a wait rather than a command."""
    if role is None:
        return False
    current = instance.steps.get(step)
    task = definition.tasks.get(current.node if current is not None else step)
    if task is None:
        return False
    compensation = role in (ReplyRole.COMPENSATED, ReplyRole.COMPENSATION_FAILED)
    spec = task.compensation if compensation else task.action
    return spec is not None and spec.command is None


def _mismatch(definition: SagaDefinition, instance: Instance) -> str | None:
    """Why this definition cannot run ``instance`` (it lacks a step the instance used), if so.

    An instance keeps working under a new version of its saga as long as every step it has
    started still exists; see "Changing a saga" in the README for what is safe to change.
    """
    used = [s.node for s in instance.steps.values()] + [b.node for b in instance.blocks.values()]
    unknown = [n for n in used if n not in definition.tasks and n not in definition.flow]
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
    decider = Decider(definition, instance, now_ms)
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
    _fired(decider, name, timer.step, timer.attempt)
    return decider.decision


def _fired(decider: Decider, name: str, step: str | None, attempt: int) -> None:
    """Do what a due timer was set for: fail at the deadline, retry, wake, or time out."""
    current = None if step is None else decider.instance.steps.get(step)
    if name == DEADLINE:
        decider.fail("deadline exceeded")
        return
    if step is None or current is None:
        return
    if name == retry_timer(step):
        compensation = current.status.compensation
        if compensation or decider.instance.status is Status.RUNNING:  # not after a Complete
            decider.resend(step, compensation, attempt)
    elif name == sleep_timer(step):
        if current.status is StepStatus.PENDING and decider.instance.status is Status.RUNNING:
            decider.succeeded(step, current, None)
    elif current.attempt != attempt or current.status not in _IN_FLIGHT:
        return
    elif name == heartbeat_timer(step):
        why = f"{step}: no heartbeat in time"
        decider.attempt_failed(step, current, [HEARTBEAT_TIMEOUT], why)
    else:
        decider.attempt_failed(step, current, [TIMEOUT], f"{step}: no reply in time")


def _operator(decider: Decider, action: OperatorAction, received: Input) -> Decision:
    instance = decider.instance
    status = instance.status
    allowed = {
        "cancel": status is Status.RUNNING,
        "retry": status is Status.NEEDS_ATTENTION,
        "resolve": status is Status.NEEDS_ATTENTION,
        # Journaled and nothing more: the processor orders the partition's queue by it.
        PRIORITIZE: _prioritizable(decider.definition, instance, action),
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
    if action.action == PRIORITIZE:
        pass  # ``priority_of_action`` reads the priority back from the entry's record
    elif action.action == "cancel":
        decider.fail(f"cancelled by {action.by}: {action.reason}")
    elif action.action == "resolve":
        for timer in list(decider.instance.timers):  # a resolved instance has nothing to wait for
            decider.cancel(timer)
        decider.note(Kind.SAGA_RESOLVED, reason=why)
    else:
        decider.note(Kind.SAGA_RESUMED, reason=why)
        _resume(decider)
    return decider.decision


def _prioritizable(definition: SagaDefinition, instance: Instance, action: OperatorAction) -> bool:
    """A ``prioritize`` applies to an instance not finished of a saga with limits, and must
    name the priority (``prioritize_reason``)."""
    named = priority_in(action.reason) is not None
    return definition.throttle is not None and not instance.status.finished and named


def prioritized(decision: Decision, record: object) -> int | None:
    """The priority an applied ``prioritize`` sets (None: not one, or not applied)."""
    if not (isinstance(record, OperatorAction) and record.action == PRIORITIZE):
        return None
    return priority_in(record.reason) if decision.entries else None


def _resume(decider: Decider) -> None:
    """Pick up where parking stopped the instance (``SagaResumed`` restored its status).

    A compensation that finally failed is tried again. Timers the instance kept while parked
    fire on their own. A step left waiting for a retry whose timer is gone (an earlier release
    used the timer up when it parked) is sent again now, and a compensating saga with nothing
    in flight moves on to its next compensation or ends: a retry never strands an instance.
    """
    parked = decider.instance
    for name, step in parked.steps.items():
        if step.status is StepStatus.COMPENSATION_FAILED:
            decider.resend(name, compensation=True, attempt=step.attempt + 1)
            return
    for name, step in parked.steps.items():
        retrying = step.status in (StepStatus.RETRYING, StepStatus.COMPENSATION_RETRYING)
        if retrying and retry_timer(name) not in parked.timers:
            decider.resend(name, step.status.compensation, step.attempt + 1)
    if decider.instance.status is Status.COMPENSATING:
        decider.continue_compensation()


def _handle(definition: SagaDefinition, decider: Decider, received: Input) -> Decision:
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


# -- operator verdicts ------------------------------------------------------------------------


def _verdict(
    definition: SagaDefinition,
    before: Instance | None,
    received: Input,
    decision: Decision,
    now_ms: int,
) -> None:
    """Answer an operator's request: applied, its first entry carries the request id; not
    applied, the decision is ignored with its reason code and ``refusal`` says why."""
    if decision.entries:
        decision.entries[0] = replace(decision.entries[0], operator_id=received.operator_id)
        return
    code = decision.ignored or decision.rejected or "not-applied"
    # Refused, never dead-lettered: the operator is told now, and may send it again later.
    decision.rejected, decision.ignored = None, code
    instance_id = before.instance_id if before is not None else received.key or ""
    why = _refusal_why(definition, before, received, code)
    decision.refusal = JournalEntry(
        instance=instance_id,
        seq=REFUSAL_SEQ,
        kind=Kind.OPERATOR_REFUSED.value,
        at_ms=now_ms,
        saga_version=definition.version,
        command_id=received.command_id,
        record=received.raw,
        reason=refusal_reason(_note(received), code, why),
        operator_id=received.operator_id,
    )


def _note(received: Input) -> str:
    """Who asked for what, and why: an action's own fields, or a signal's note."""
    record = received.record
    if isinstance(record, OperatorAction):
        return f"{record.action} by {record.by}: {record.reason}"
    return received.note or f"signal {type(record).__name__}"


#: What an action needs the instance to be, by action.
_APPLIES_TO = {
    "retry": "a parked instance (needs_attention)",
    "resolve": "a parked instance (needs_attention)",
    "cancel": "a running instance",
    PRIORITIZE: "a running or parked instance of a saga that declares limits, with the priority "
    "first in its reason",
}
#: Why an input was not applied, by ``Decision.ignored``/``rejected`` reason code.
_WHY = {
    "duplicate-start": "the instance exists already",
    "stale": "it answers no attempt the instance waits for",
    "duplicate": "the attempt it answers has had its answer",
    "unexpected-reply": "the step does not expect this reply in its state",
    "no-command-id": "a step's reply needs the command id of the attempt it answers",
    "unexpected-type": "the saga does not take this type of record",
}


def _refusal_why(
    definition: SagaDefinition, before: Instance | None, received: Input, code: str
) -> str:
    if before is None:
        return (
            f"there is no instance {received.key!r} of {definition.name} (never started, or "
            "expired some time after it finished)"
        )
    status = before.status.value
    record = received.record
    if code == "definition-mismatch":
        return _mismatch(definition, before) or code
    if isinstance(record, OperatorAction):
        needs = _APPLIES_TO.get(record.action)
        if needs is None:
            return f"unknown action {record.action!r}: one of {', '.join(OPERATOR_ACTIONS)}"
        return f"{record.action} applies to {needs}; this one is {status}"
    if code == "finished":
        return f"the instance is {status}: it takes no more events"
    return _WHY.get(code, code)


_REFUSAL = re.compile(r"(?s)(.*); refused \(([^)]*)\): (.*)")


def refusal_reason(note: str, code: str, why: str) -> str:
    """An ``OperatorRefused`` entry's reason: who asked for what and why, the reason code
    (as counted in ``sagalog_inputs_ignored_total``), and why it was refused."""
    return f"{note}; refused ({code}): {why}"


def refusal_parts(reason: str) -> tuple[str, str, str]:
    """(note, code, why) of an ``OperatorRefused`` entry's reason (``refusal_reason``)."""
    found = _REFUSAL.fullmatch(reason)
    if found is None:
        return "", "", reason
    note, code, why = found.groups()
    return note, code, why
