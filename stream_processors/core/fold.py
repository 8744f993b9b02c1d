"""``fold``: the only way an instance's state changes. Pure.

``apply(definition, instance, entry)`` returns the instance after one journal entry; ``fold``
applies many. Neither reads the clock, the network or randomness: times come from the entries
(``at_ms``, stamped by ``decide``), so replaying a journal rebuilds byte-identical snapshots.

The saga's own state changes in exactly two places: ``SagaStarted`` (the saga's ``begin`` builds
it from the start event) and ``InputAccepted`` (the saga's evolver for that input type, if any).

An operator's refusal (``OperatorRefused``) is journaled but is no part of the state: ``apply``
returns the instance as it was (not even ``seq`` moves), and ``fold`` skips it, also where it is
all an id has (a refused action to an instance that does not exist creates none).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum

from stream_processors.codecs.records import Record, decode_record
from stream_processors.core.documents import (
    documents_after_block,
    documents_of,
    with_document,
    with_retry,
)
from stream_processors.core.instance import (
    BlockState,
    BranchStatus,
    EarlyEvent,
    Instance,
    Status,
    StepState,
    StepStatus,
    Timer,
    visit_key,
)
from stream_processors.core.journal import KIND_BY_VALUE, JournalEntry, Kind, stateless
from stream_processors.core.model import Block, SagaDefinition


class FoldError(Exception):
    """A journal that does not fold: entries out of order, or an entry that makes no sense."""


_STATUS_AFTER = {
    Kind.SAGA_COMPLETED: Status.COMPLETED,
    Kind.SAGA_COMPENSATING: Status.COMPENSATING,
    Kind.SAGA_COMPENSATED: Status.COMPENSATED,
    Kind.SAGA_FAILED: Status.FAILED,
    Kind.SAGA_PARKED: Status.NEEDS_ATTENTION,
    Kind.SAGA_RESUMED: Status.COMPENSATING,
    Kind.SAGA_RESOLVED: Status.RESOLVED,
}

_SENT = {
    Kind.COMMAND_SENT: StepStatus.PENDING,
    Kind.WAIT_STARTED: StepStatus.PENDING,
    Kind.COMPENSATION_SENT: StepStatus.COMPENSATING,
}

_STEP_STATUS_AFTER = {
    Kind.STEP_SUCCEEDED: StepStatus.SUCCEEDED,
    Kind.STEP_FAILED: StepStatus.FAILED,
    Kind.COMPENSATION_SUCCEEDED: StepStatus.COMPENSATED,
    Kind.COMPENSATION_FAILED: StepStatus.COMPENSATION_FAILED,
    Kind.STEP_CANCELLED: StepStatus.CANCELLED,
}

_BRANCH_AFTER = {
    Kind.BRANCH_STARTED: BranchStatus.RUNNING,
    Kind.BRANCH_SUCCEEDED: BranchStatus.SUCCEEDED,
    Kind.BRANCH_FAILED: BranchStatus.FAILED,
    Kind.BRANCH_CANCELLED: BranchStatus.CANCELLED,
}

_BLOCK_AFTER = {
    Kind.BLOCK_SUCCEEDED: BranchStatus.SUCCEEDED,
    Kind.BLOCK_FAILED: BranchStatus.FAILED,
    Kind.BLOCK_CANCELLED: BranchStatus.CANCELLED,
}


def _status_after(instance: Instance, kind: Kind) -> Status:
    """The status after a saga-level entry. A resumed instance goes back to where it was parked:
    compensating after a compensation that failed, running after a definition mismatch (an
    instance parked by an earlier release, which did not record where, was compensating)."""
    if kind is Kind.SAGA_RESUMED and instance.parked_from is not None:
        return instance.parked_from
    return _STATUS_AFTER[kind]


def _record_of(entry: JournalEntry, decoded: Record | None) -> Record:
    if decoded is not None:
        return decoded
    if entry.record is None:
        raise FoldError(f"{entry.kind} #{entry.seq} of {entry.instance} carries no record")
    return decode_record(entry.record)


def apply(
    definition: SagaDefinition,
    instance: Instance | None,
    entry: JournalEntry,
    decoded: Record | None = None,
) -> Instance:
    """The instance after ``entry``. ``decoded`` is ``entry.record`` already decoded, if at hand."""
    kind = KIND_BY_VALUE.get(entry.kind) or Kind(entry.kind)  # the latter raises if unknown
    if kind is Kind.OPERATOR_REFUSED and instance is not None:
        return instance
    if instance is None:
        if kind is not Kind.SAGA_STARTED:
            raise FoldError(f"{entry.instance}: history starts with {entry.kind}, not SagaStarted")
        if entry.seq != 0:
            raise FoldError(f"{entry.instance}: SagaStarted at position {entry.seq}, not 0")
        return Instance(
            instance_id=entry.instance,
            saga_version=entry.saga_version,
            status=Status.RUNNING,
            seq=1,
            started_at_ms=entry.at_ms,
            updated_at_ms=entry.at_ms,
            reason=None,
            steps={},
            completed=(),
            data=definition.begin(_record_of(entry, decoded)),
            reply_to=entry.reply_to,
            reply_key=entry.reply_key,
            reply_command=entry.command_id if entry.reply_to else None,
            trace=entry.trace,
        )
    if entry.seq != instance.seq:
        raise FoldError(
            f"{entry.instance}: entry at position {entry.seq} follows {instance.seq - 1}"
        )
    step = entry.step
    if kind is Kind.INPUT_ACCEPTED:
        record = _record_of(entry, decoded)
        evolve = definition.evolvers.get(type(record))
        data = evolve(instance.data, record) if evolve else KEEP
        early = _without(instance.early, entry.record) if instance.early else KEEP
        return _moved(instance, entry, data=data, early=early)
    if kind in _SENT:
        return _sent(definition, instance, entry, kind)
    if kind is Kind.NODE_PASSED:
        return _moved(instance, entry, visits=_visited(definition, instance, entry))
    if kind is Kind.BLOCK_STARTED or kind in _BRANCH_AFTER or kind in _BLOCK_AFTER:
        return _apply_block(definition, instance, entry, kind)
    if kind is Kind.EVENT_KEPT:
        if entry.record is None:
            raise FoldError(f"{entry.instance}: EventKept #{entry.seq} carries no record")
        early = (*instance.early, EarlyEvent(entry.at_ms, entry.record))
        return _moved(instance, entry, early=early)
    if kind is Kind.EVENT_UNMATCHED:
        return _moved(instance, entry)
    if kind is Kind.DOCUMENT_SET:
        return _document_set(instance, entry)
    if kind is Kind.ATTEMPT_FAILED:
        name, current = _step(instance, entry)
        status = (
            StepStatus.COMPENSATION_RETRYING if current.status.compensation else StepStatus.RETRYING
        )
        # A document-flow step's retry names the retrier that took it (in ``branch``): each
        # retrier counts its own retries.
        retried = (
            KEEP
            if entry.branch is None
            else with_retry(documents_of(instance.data), name, entry.branch)
        )
        steps = {**instance.steps, name: _status(current, status)}
        return _moved(instance, entry, steps=steps, data=retried)
    if kind is Kind.TIMER_SCHEDULED:
        if entry.timer is None or entry.due_ms is None:
            raise FoldError(f"{entry.instance}: TimerScheduled #{entry.seq} without timer or due")
        timer = Timer(entry.due_ms, step, entry.attempt)
        return _moved(instance, entry, timers={**instance.timers, entry.timer: timer})
    if kind in (Kind.TIMER_FIRED, Kind.TIMER_CANCELLED):
        timers = {n: t for n, t in instance.timers.items() if n != entry.timer}
        return _moved(instance, entry, timers=timers)
    if kind is Kind.OPERATOR_ACTION:
        # History: who did what and why; the entries after it change the state.
        return _moved(instance, entry)
    if kind in _STEP_STATUS_AFTER:
        name, current = _step(instance, entry)
        steps = {**instance.steps, name: _status(current, _STEP_STATUS_AFTER[kind])}
        succeeded = kind is Kind.STEP_SUCCEEDED
        completed = (*instance.completed, name) if succeeded else instance.completed
        return _moved(instance, entry, steps=steps, completed=completed)
    if kind in _STATUS_AFTER:
        # Resuming keeps the reason the instance parked for; the operator's why is journaled.
        keep = kind is Kind.SAGA_RESUMED or entry.reason is None
        return _moved(
            instance,
            entry,
            status=_status_after(instance, kind),
            reason=instance.reason if keep else entry.reason,
            parked_from=instance.status if kind is Kind.SAGA_PARKED else None,
        )
    raise FoldError(f"{entry.instance}: cannot fold a {entry.kind}")  # SagaStarted twice


class _Keep(Enum):
    """``_moved``'s "leave this field as it is" (None is a value some fields take)."""

    KEEP = 0


KEEP = _Keep.KEEP


def _moved(
    instance: Instance,
    entry: JournalEntry,
    *,
    status: Status | _Keep = KEEP,
    reason: str | _Keep | None = KEEP,
    steps: Mapping[str, StepState] | _Keep = KEEP,
    completed: tuple[str, ...] | _Keep = KEEP,
    data: Record | _Keep = KEEP,
    timers: Mapping[str, Timer] | _Keep = KEEP,
    parked_from: Status | _Keep | None = KEEP,
    blocks: Mapping[str, BlockState] | _Keep = KEEP,
    visits: Mapping[str, int] | _Keep = KEEP,
    early: tuple[EarlyEvent, ...] | _Keep = KEEP,
    children: Mapping[str, str] | _Keep = KEEP,
) -> Instance:
    """The instance one entry later (``seq`` + 1, updated at the entry's time), with the given
    fields changed: ``dataclasses.replace`` without its introspection, which was most of the
    cost of folding an entry (fold runs for every entry ``decide`` emits and every replay)."""
    return Instance(
        instance.instance_id,
        instance.saga_version,
        instance.status if status is KEEP else status,
        instance.seq + 1,
        instance.started_at_ms,
        entry.at_ms,
        instance.reason if reason is KEEP else reason,
        instance.steps if steps is KEEP else steps,
        instance.completed if completed is KEEP else completed,
        instance.data if data is KEEP else data,
        instance.timers if timers is KEEP else timers,
        instance.parked_from if parked_from is KEEP else parked_from,
        instance.blocks if blocks is KEEP else blocks,
        instance.visits if visits is KEEP else visits,
        instance.early if early is KEEP else early,
        instance.reply_to,
        instance.reply_key,
        instance.reply_command,
        instance.children if children is KEEP else children,
        instance.trace,
    )


def _sent(
    definition: SagaDefinition, instance: Instance, entry: JournalEntry, kind: Kind
) -> Instance:
    """A command sent, a wait or sleep started, a compensation sent: the step's new attempt."""
    key = entry.step
    if key is None:  # a handler's fire-and-forget command: history only
        return _moved(instance, entry)
    node, block, branch = entry.node or key, entry.block or "", entry.branch or 0
    sent = StepState(
        _SENT[kind], entry.command_id or "", entry.attempt, entry.at_ms, node, block, branch
    )
    entered = entry.attempt == 1 and kind is not Kind.COMPENSATION_SENT
    children: Mapping[str, str] | _Keep = KEEP
    if kind is Kind.COMMAND_SENT and entry.reply_key is not None:  # a child saga's start
        children = {**instance.children, key: entry.reply_key}
    return _moved(
        instance,
        entry,
        steps={**instance.steps, key: sent},
        visits=_visited(definition, instance, entry) if entered else KEEP,
        children=children,
    )


def _apply_block(
    definition: SagaDefinition, instance: Instance, entry: JournalEntry, kind: Kind
) -> Instance:
    """A block started, one of its branches moved, or the block ended."""
    if kind is Kind.BLOCK_STARTED:
        if entry.step is None or entry.node is None:
            raise FoldError(f"{entry.instance}: BlockStarted #{entry.seq} without step or node")
        count = entry.attempt
        node = definition.flow.get(entry.node)
        started = BlockState(
            entry.node,
            node.kind if isinstance(node, Block) else "parallel",
            entry.block or "",
            entry.branch or 0,
            BranchStatus.RUNNING,
            (BranchStatus.QUEUED,) * count,
            entry.record,
            (None,) * count,
        )
        blocks = {**instance.blocks, entry.step: started}
        visits = _visited(definition, instance, entry)
        return _moved(instance, entry, blocks=blocks, visits=visits)
    key, block = _block(instance, entry)
    if kind in _BRANCH_AFTER:
        index = entry.branch or 0
        branches = list(block.branches)
        branches[index] = _BRANCH_AFTER[kind]
        results = block.results
        if kind is Kind.BRANCH_SUCCEEDED and entry.record is not None:
            results = (*results[:index], entry.record, *results[index + 1 :])
        changed = _block_with(block, branches=tuple(branches), results=results)
        return _moved(instance, entry, blocks={**instance.blocks, key: changed})
    data: Record | _Keep = KEEP
    if kind is Kind.BLOCK_SUCCEEDED:
        data = _gathered(definition, block, instance.data)
    if definition.documents is not None:  # the branches' documents are done with
        data = documents_after_block(instance.data, key) or KEEP
    # The results are in the state now (or not wanted). The items stay: a compensation of an
    # item's step, later, is built from its item.
    changed = _block_with(block, status=_BLOCK_AFTER[kind], results=())
    return _moved(instance, entry, blocks={**instance.blocks, key: changed}, data=data)


def _document_set(instance: Instance, entry: JournalEntry) -> Instance:
    """A path's new document (``entry.step`` is its scope, ``entry.record`` the JSON)."""
    if entry.step is None or entry.record is None:
        raise FoldError(f"{entry.instance}: DocumentSet #{entry.seq} without scope or document")
    data = with_document(documents_of(instance.data), entry.step, entry.record.decode())
    return _moved(instance, entry, data=data)


def _visited(
    definition: SagaDefinition, instance: Instance, entry: JournalEntry
) -> Mapping[str, int] | _Keep:
    """The visit counts after an entry that enters a node that may be entered again (others,
    and entries of older releases: KEEP)."""
    if entry.node is None or entry.node not in definition.revisitable:
        return KEEP
    key = visit_key(instance, entry.node, entry.block or "", entry.branch or 0)
    return {**instance.visits, key: instance.visits.get(key, 0) + 1}


def _without(early: tuple[EarlyEvent, ...], record: bytes | None) -> tuple[EarlyEvent, ...] | _Keep:
    """The kept early events without the one just accepted (if it was one of them)."""
    for index, kept in enumerate(early):
        if kept.record == record:
            return (*early[:index], *early[index + 1 :])
    return KEEP


def _block(instance: Instance, entry: JournalEntry) -> tuple[str, BlockState]:
    if entry.step is None or entry.step not in instance.blocks:
        raise FoldError(f"{entry.instance}: {entry.kind} for unknown block {entry.step!r}")
    return entry.step, instance.blocks[entry.step]


def _block_with(
    block: BlockState,
    *,
    status: BranchStatus | None = None,
    branches: tuple[BranchStatus, ...] | None = None,
    items: bytes | _Keep | None = KEEP,
    results: tuple[bytes | None, ...] | None = None,
) -> BlockState:
    return BlockState(
        block.node,
        block.kind,
        block.block,
        block.branch,
        block.status if status is None else status,
        block.branches if branches is None else branches,
        block.items if items is KEEP else items,
        block.results if results is None else results,
    )


def _gathered(definition: SagaDefinition, block: BlockState, data: Record) -> Record | _Keep:
    """The state after a block's ``gather`` of its results (decoded, in branch order)."""
    node = definition.flow.get(block.node)
    if not isinstance(node, Block) or node.gather is None:
        return KEEP
    results = [None if raw is None else decode_record(raw) for raw in block.results]
    gathered: Record = node.gather(data, results)
    return gathered


def _status(step: StepState, status: StepStatus) -> StepState:
    return StepState(
        status, step.command_id, step.attempt, step.sent_at_ms, step.node, step.block, step.branch
    )


def _step(instance: Instance, entry: JournalEntry) -> tuple[str, StepState]:
    if entry.step is None or entry.step not in instance.steps:
        raise FoldError(f"{entry.instance}: {entry.kind} for unknown step {entry.step!r}")
    return entry.step, instance.steps[entry.step]


def fold(
    definition: SagaDefinition, instance: Instance | None, entries: Iterable[JournalEntry]
) -> Instance | None:
    """The instance after all ``entries``, in order (refusals skipped: ``stateless``)."""
    for entry in entries:
        if not stateless(entry):
            instance = apply(definition, instance, entry)
    return instance
