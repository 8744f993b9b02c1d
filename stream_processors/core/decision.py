"""What ``decide`` takes and returns, and the ids it makes. Pure data.

``Input`` is one decoded inbox record; ``Decision`` is what the saga does with it: journal
entries, records to send (``OutgoingCommand``), or a short stable reason it was ignored or
rejected. Command ids are deterministic (``command_id``): a replayed decision makes the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stream_processors.codecs.frozen import fast_init
from stream_processors.codecs.records import Record
from stream_processors.core.instance import Instance
from stream_processors.core.journal import JournalEntry
from stream_processors.core.model import ReplyRole, SagaDefinition

#: ``OutgoingCommand.kind`` values.
COMMAND = "command"
CHILD_START = "child-start"
CHILD_END = "child-end"
CHILD_CANCEL = "child-cancel"


@fast_init
@dataclass(frozen=True, slots=True)
class Input:
    """A decoded inbox record. ``raw`` is its framed Avro, journaled as is (never re-encoded).

    ``note`` says who sent it and why, when an operator did (``sagas signal``).
    """

    record: Record
    raw: bytes
    command_id: str | None = None
    note: str | None = None
    #: A child saga's start from its parent: the parent's inbox and instance id.
    reply_to: str | None = None
    reply_key: str | None = None
    #: The W3C trace context it came with, as journaled (``JournalEntry.trace``): read only
    #: while tracing is on, and only for a start.
    trace: str | None = None
    #: An operator's request id (``sagalog.operator_id``): it asks for a verdict, so a decision
    #: that does not apply the input journals why (``Decision.refusal``).
    operator_id: str | None = None
    #: The instance id the record was keyed by: a refusal names it, also when there is no
    #: instance (set by the processor; ``decide`` reads it only for a refusal).
    key: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class OutgoingCommand:
    """A record a decision sends: a step's command (``COMMAND``), a child saga's start
    (``CHILD_START``: to the child's inbox, naming the parent to report to), a child's end to
    its parent (``CHILD_END``: a reply) or a parent's cancel of a child (``CHILD_CANCEL``)."""

    topic: str
    key: str
    command_id: str
    value: bytes
    kind: str = COMMAND
    #: A child's start: the instance id of the parent that sends it.
    parent: str = ""


@dataclass(slots=True)
class Decision:
    """The outcome of one input. ``ignored`` and ``rejected`` carry a short, stable reason."""

    instance: Instance | None
    entries: list[JournalEntry] = field(default_factory=list)
    commands: list[OutgoingCommand] = field(default_factory=list)
    ignored: str | None = None
    rejected: str | None = None
    #: An operator's input not applied (``ignored`` says the reason code): the
    #: ``OperatorRefused`` entry to journal, alone (no snapshot: it changes no state).
    refusal: JournalEntry | None = None


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


def sleep_timer(step: str) -> str:
    return f"sleep:{step}"


def heartbeat_timer(step: str) -> str:
    """The timer a task with a heartbeat interval fails by when no heartbeat came in time."""
    return f"heartbeat:{step}"


def step_timers(step: str) -> tuple[str, ...]:
    """Every timer a step may have set: all go when it stops."""
    return (retry_timer(step), timeout_timer(step), sleep_timer(step), heartbeat_timer(step))
