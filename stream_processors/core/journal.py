"""Journal entries: the event-sourced history of a saga instance, and their kinds.

Every decision a saga takes and every input it accepts becomes one ``JournalEntry`` on the
journal topic, keyed by instance id. The journal is the source of truth: ``fold`` over an
instance's entries, in order, rebuilds its state exactly (see ``stream_processors.core.fold``).

Entries are Avro records of the schema ``sagalog.JournalEntry`` (in the package's
``schemas/sagalog/``), so tools in any language can read a journal.
"""

from __future__ import annotations

from enum import StrEnum

from stream_processors.codecs.peek import LeadingString
from stream_processors.codecs.records import Record


class Kind(StrEnum):
    """What a journal entry records. The values are stored: never rename one."""

    SAGA_STARTED = "SagaStarted"
    INPUT_ACCEPTED = "InputAccepted"
    COMMAND_SENT = "CommandSent"
    WAIT_STARTED = "WaitStarted"
    STEP_SUCCEEDED = "StepSucceeded"
    ATTEMPT_FAILED = "AttemptFailed"
    STEP_FAILED = "StepFailed"
    COMPENSATION_SENT = "CompensationSent"
    COMPENSATION_SUCCEEDED = "CompensationSucceeded"
    COMPENSATION_FAILED = "CompensationFailed"
    TIMER_SCHEDULED = "TimerScheduled"
    TIMER_FIRED = "TimerFired"
    TIMER_CANCELLED = "TimerCancelled"
    OPERATOR_ACTION = "OperatorAction"
    SAGA_COMPLETED = "SagaCompleted"
    SAGA_COMPENSATING = "SagaCompensating"
    SAGA_COMPENSATED = "SagaCompensated"
    SAGA_FAILED = "SagaFailed"
    SAGA_PARKED = "SagaParked"
    SAGA_RESUMED = "SagaResumed"
    SAGA_RESOLVED = "SagaResolved"
    #: Control flow: a choice or a terminal node passed; its ``reason`` says where to, or why.
    NODE_PASSED = "NodePassed"
    #: A parallel or map block, and its branches (map items), by index in ``branch``.
    BLOCK_STARTED = "BlockStarted"
    BRANCH_STARTED = "BranchStarted"
    BRANCH_SUCCEEDED = "BranchSucceeded"
    BRANCH_FAILED = "BranchFailed"
    BRANCH_CANCELLED = "BranchCancelled"
    BLOCK_SUCCEEDED = "BlockSucceeded"
    BLOCK_FAILED = "BlockFailed"
    BLOCK_CANCELLED = "BlockCancelled"
    #: A step in flight that a failed sibling branch cancelled: its reply is still awaited, and
    #: undone if it succeeded.
    STEP_CANCELLED = "StepCancelled"
    #: An awaited event that came before its wait started, kept for it; or that nobody awaits.
    EVENT_KEPT = "EventKept"
    EVENT_UNMATCHED = "EventUnmatched"
    #: A document-flow definition's path document changed (``stream_processors.core.documents``).
    DOCUMENT_SET = "DocumentSet"
    #: An operator's action or signal that was not applied, and why (``reason``). It is no part
    #: of the instance's state: ``seq`` is ``REFUSAL_SEQ``, ``fold`` skips it, and it may name an
    #: instance that does not exist (it then creates none).
    OPERATOR_REFUSED = "OperatorRefused"


#: Each kind by its stored value, and back: ``Kind(value)`` and ``kind.value`` without the enum
#: machinery (about 0.9 µs per journal entry that ``decide`` emits and ``fold`` applies).
KIND_BY_VALUE: dict[str, Kind] = {kind.value: kind for kind in Kind}
VALUE_OF_KIND: dict[Kind, str] = {kind: kind.value for kind in Kind}


class JournalEntry(Record, schema="sagalog.JournalEntry"):
    """One entry of an instance's journal. ``record`` holds the input or command as framed Avro."""

    instance: str
    seq: int
    kind: str
    at_ms: int
    saga_version: int
    step: str | None = None
    command_id: str | None = None
    attempt: int = 0
    record: bytes | None = None
    reason: str | None = None
    timer: str | None = None
    due_ms: int | None = None
    node: str | None = None
    block: str | None = None
    branch: int | None = None
    reply_to: str | None = None
    reply_key: str | None = None
    #: SagaStarted: the W3C trace context of the event that started the instance, as one string:
    #: its ``traceparent``, then a space and its ``tracestate`` if it had one (plain text: the
    #: core knows nothing of tracing; ``stream_processors.engine.tracing`` reads and writes it).
    #: One field, not two: every field costs each entry, instance and snapshot made.
    trace: str | None = None
    #: The id of the operator's request (the ``sagalog.operator_id`` header of an action or a
    #: signal) this entry answers: on the first entry of the decision that applied it, or on its
    #: ``OperatorRefused``. The ``sagas`` CLI finds its verdict in the journal by it.
    operator_id: str | None = None


#: The ``seq`` of an ``OperatorRefused`` entry: not a position in the instance's history.
REFUSAL_SEQ = -1
_REFUSED = Kind.OPERATOR_REFUSED.value


def stateless(entry: JournalEntry) -> bool:
    """Whether ``entry`` is no part of the instance's state (an operator's refusal): folding,
    replaying and counting an instance's entries skip it."""
    return entry.kind == _REFUSED


#: An entry's control-flow, child-saga, trace-context and operator-request fields: ``history
#: --json`` writes them as they are (and ``sagas.testing.load_histories`` reads them back).
FLOW_FIELDS = ("node", "block", "branch", "reply_to", "reply_key", "trace", "operator_id")


#: An entry's kind, read off its first fields without decoding the rest.
_KIND = LeadingString(
    "sagalog.JournalEntry", (("instance", "string"), ("seq", "long"), ("kind", "string"))
)


def entry_kind(data: bytes) -> str | None:
    """The kind of the journal entry ``data``, read off its first bytes: about a sixteenth of a
    decode, for readers that want only some kinds (the outcomes of a run, say). None when it
    cannot be read that way (see ``stream_processors.codecs.peek``): decode the entry then."""
    return _KIND.read(data)
