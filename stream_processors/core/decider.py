"""The ``Decider``: one decision being made, entry by entry, and the saga's control flow. Pure.

``decide`` and ``decide_timer`` (``stream_processors.core.decide``) make one ``Decider`` per input.
Every entry it emits is folded at once (``fold.apply``), so each later choice sees the state the
journal so far implies, and the decision's instance is by construction the fold of its entries.

Control flow is walked here. A node runs at a ``Place``: the main path, or one branch of a block
activation (a parallel's branch, a map's item). ``enter`` starts a node there (a task's command,
a choice, a block, a sleep, an end); a path that reaches a node with no ``next`` ends
(``path_ended``): the main path's end completes the saga, a branch's end is reported to its block
(``advance``), which starts queued items, joins, and continues on its own path. A path that fails
(``path_failed``) fails the saga on the main path, or its branch: a parallel then fails (cancelling
its running siblings, ``cancel_block``), a map only beyond its tolerated failures; a failed block
goes where its ``catch`` says, or fails its own path in turn.

A cancelled step whose command is in flight is not forgotten: it is marked ``StepCancelled``, its
reply is awaited, and if it succeeded it is undone (its compensation) before the saga ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from stream_processors.codecs.records import Command, Record, decode_record
from stream_processors.core.decision import (
    CHILD_CANCEL,
    CHILD_END,
    CHILD_START,
    Decision,
    OutgoingCommand,
    command_id,
    heartbeat_timer,
    retry_timer,
    sleep_timer,
    step_timers,
    timeout_timer,
)
from stream_processors.core.documents import (
    INPUT_SCOPE,
    DocumentFlow,
    PathFailure,
    Scope,
    document_text,
    documents_of,
    scope_of,
)
from stream_processors.core.fold import apply
from stream_processors.core.instance import (
    BranchStatus,
    Instance,
    Status,
    StepState,
    StepStatus,
    visit_key,
)
from stream_processors.core.items import decode_items, encode_items
from stream_processors.core.journal import VALUE_OF_KIND, JournalEntry, Kind
from stream_processors.core.model import (
    CHILD_FAILED,
    COMPENSATE,
    JOIN_FIRST,
    MAP,
    Block,
    ChildEnded,
    Choice,
    CommandSpec,
    End,
    Node,
    OperatorAction,
    Pass,
    SagaDefinition,
    Sleep,
    Task,
)
from stream_processors.core.policy import ALL
from stream_processors.core.tasks import TaskSucceeded

DEADLINE = "deadline"
#: Error names of the engine's own control-flow failures (a ``catch`` may match them).
LOOP_EXCEEDED = "sagalog.LoopExceeded"
NO_CHOICE = "sagalog.NoChoice"
TOO_MANY_ITEMS = "sagalog.TooManyItems"
#: Kept early events per instance, at most: beyond, they are journaled as unmatched.
MAX_EARLY_EVENTS = 100
#: The reason of the ``InputAccepted`` of a kept early event that a starting wait takes: it is
#: part of the decision that started the wait, not an input of its own.
KEPT_EARLY = "kept: it came before the wait started"
_NO_ITEM = object()


@dataclass(frozen=True, slots=True)
class Place:
    """Where a node runs: on the main path (``block`` ""), or a block activation's branch."""

    block: str = ""
    branch: int = 0


ROOT = Place()


class Decider:
    """Accumulates entries, folding each one at once so later choices see the new state."""

    def __init__(self, definition: SagaDefinition, instance: Instance | None, now_ms: int) -> None:
        self.definition = definition
        self.decision = Decision(instance)
        self.now_ms = now_ms
        self._advancing: set[str] = set()
        self.documents: DocumentFlow | None = definition.documents

    @property
    def instance(self) -> Instance:
        assert self.decision.instance is not None
        return self.decision.instance

    def emit(
        self, instance_id: str, kind: Kind, decoded: Record | None = None, **fields: object
    ) -> None:
        before = self.decision.instance
        seq = 0 if before is None else before.seq
        entry = JournalEntry(
            instance=instance_id,
            seq=seq,
            kind=VALUE_OF_KIND[kind],
            at_ms=self.now_ms,
            saga_version=self.definition.version,
            **fields,  # type: ignore[arg-type]
        )
        after = apply(self.definition, before, entry, decoded)
        self.decision.instance = after
        self.decision.entries.append(entry)
        child_ends = after.reply_to is not None and after.status.finished
        if child_ends and (before is None or not before.status.finished):
            self._report_to_parent(after)

    def note(self, kind: Kind, **fields: object) -> None:
        self.emit(self.instance.instance_id, kind, None, **fields)

    def _report_to_parent(self, child: Instance) -> None:
        """A child saga that ends tells its parent's child step, as a reply to its command."""
        assert child.reply_to is not None and child.reply_key is not None
        ended = ChildEnded(
            self.definition.name, child.instance_id, child.status.value, child.reason
        )
        self.decision.commands.append(
            OutgoingCommand(
                child.reply_to,
                child.reply_key,
                child.reply_command or "",
                ended.encode(),
                CHILD_END,
            )
        )

    # -- timers --------------------------------------------------------------------------------

    def schedule(self, name: str, delay_ms: int, step: str | None = None, attempt: int = 0) -> None:
        due = self.now_ms + delay_ms
        self.note(Kind.TIMER_SCHEDULED, timer=name, due_ms=due, step=step, attempt=attempt)

    def cancel(self, name: str) -> None:
        instance = self.decision.instance
        if instance is not None and name in instance.timers:
            self.note(Kind.TIMER_CANCELLED, timer=name)

    # -- nodes ---------------------------------------------------------------------------------

    def enter(self, name: str, place: Place) -> None:
        """Start node ``name`` at ``place`` (a new visit: loops are bounded by ``max_visits``)."""
        node = self.definition.node(name)
        key = visit_key(self.instance, name, place.block, place.branch)
        if name in self.definition.revisitable:  # on a loop: count the visits, bounded
            visit = self.instance.visits.get(key, 0) + 1
            if node.max_visits is not None and visit > node.max_visits:
                why = f"step {name!r} would run a visit {visit}; it allows {node.max_visits}"
                self.path_failed(place, [LOOP_EXCEEDED], why)
                return
            key = key if visit == 1 else f"{key}~{visit}"
        if isinstance(node, Task):
            self.send(key, name, place)
        elif isinstance(node, Choice):
            self._choose(key, node, place)
        elif isinstance(node, End):
            self._end(key, node, place)
        elif isinstance(node, Sleep):
            self._sleep(key, node, place)
        elif isinstance(node, Pass):
            self.note(Kind.NODE_PASSED, **self._where(key, node.name, place))
            if self._flow_output(node.name, place):
                self.continue_after(node.name, place, None)
        else:
            self._start_block(key, node, place)

    def _where(self, key: str, name: str, place: Place) -> dict[str, Any]:
        if not place.block:  # the main path: no block fields (smaller entries)
            return {"step": key, "node": name}
        return {"step": key, "node": name, "block": place.block, "branch": place.branch}

    def _choose(self, key: str, node: Choice, place: Place) -> None:
        try:
            matched = (r.target for r in node.rules if self.call(r.condition, place, node.name))
            target = next(matched, None)
        except PathFailure as failure:
            self.note(Kind.NODE_PASSED, reason=str(failure), **self._where(key, node.name, place))
            self.path_failed(place, [failure.error], str(failure))
            return
        target = target or node.default
        if target is None:
            why = f"choice {node.name!r}: no rule matched and there is no default"
            self.note(Kind.NODE_PASSED, reason=why, **self._where(key, node.name, place))
            self.path_failed(place, [NO_CHOICE], why)
            return
        self.note(Kind.NODE_PASSED, reason=f"-> {target}", **self._where(key, node.name, place))
        if self._flow_output(node.name, place):
            self.enter(target, place)

    def _end(self, key: str, node: End, place: Place) -> None:
        outcome = "succeed" if node.succeed else "fail"
        why = node.reason or f"{outcome} at {node.name!r}"
        error, cause = node.error, None
        if self.documents is not None and not node.succeed:
            # As a failed Task's: the reason names the state and the error, a catch's Cause is
            # the Fail state's own.
            error, cause = self._failure(node.name, place)
            why = f"{node.name}: {error}: {cause}"
        self.note(Kind.NODE_PASSED, reason=why, **self._where(key, node.name, place))
        if node.succeed:
            if self._flow_output(node.name, place):
                self.path_ended(place, None)
        else:
            self.path_failed(place, [error], why, cause)

    def _failure(self, node: str, place: Place) -> tuple[str, str]:
        assert self.documents is not None
        try:
            return self.documents.failure(node, self.scope(place, node))
        except PathFailure as failure:
            return failure.error, failure.cause

    def _sleep(self, key: str, node: Sleep, place: Place) -> None:
        if node.delay_ms is not None:
            delay = node.delay_ms
        else:
            assert node.until is not None
            try:
                delay = max(0, int(self.call(node.until, place, node.name)) - self.now_ms)
            except PathFailure as failure:
                where = self._where(key, node.name, place)
                self.note(Kind.NODE_PASSED, reason=str(failure), **where)
                self.path_failed(place, [failure.error], str(failure))
                return
        cid = command_id(self.definition.name, self.instance.instance_id, key, 1)
        where = self._where(key, node.name, place)
        self.note(Kind.WAIT_STARTED, command_id=cid, attempt=1, **where)
        self.schedule(sleep_timer(key), delay, key, 1)

    def call(self, function: Any, place: Place, node: str = "") -> Any:
        """Call a condition, builder or ``until``: with (state), or (state, item) in a map; a
        document-flow definition's, with its path's ``Scope``."""
        data = self.instance.data
        if self.documents is not None:
            return function(self.scope(place, node))
        if not place.block:  # the main path: no item (most calls, and every start)
            return function(data)
        item = self.item(place)
        return function(data) if item is _NO_ITEM else function(data, item)

    def scope(self, place: Place, node: str, attempt: int = 1) -> Scope:
        """What a document-flow definition's function sees at ``place``, in node ``node``."""
        instance = self.instance
        data = documents_of(instance.data)
        item = self.item(place)
        index = None
        if item is not _NO_ITEM:
            index = self._item_index(place)
        return Scope(
            document=data.document(scope_of(place.block, place.branch)),
            execution=instance.instance_id,
            state=node,
            entered_ms=self.now_ms,
            started_ms=instance.started_at_ms,
            input=data.document(INPUT_SCOPE),
            retry_count=attempt - 1,
            item_index=index,
            item=None if item is _NO_ITEM else item,
        )

    def _item_index(self, place: Place) -> int:
        """The index of the (innermost) map item ``place`` runs for."""
        block_key, branch = place.block, place.branch
        while self.instance.blocks[block_key].kind != MAP:
            outer = self.instance.blocks[block_key]
            block_key, branch = outer.block, outer.branch
        return branch

    def set_document(self, place: Place, document: Any) -> None:
        """Journal a path's new document."""
        text = document_text(document)
        self.note(Kind.DOCUMENT_SET, step=scope_of(place.block, place.branch), record=text.encode())

    def _flow_output(self, node: str, place: Place) -> bool:
        """A flow node passed: its path's new document (a document-flow definition). False if
        it could not be made (the path has failed)."""
        if self.documents is None:
            return True
        try:
            document = self.documents.flow_output(node, self.scope(place, node))
        except PathFailure as failure:
            self.path_failed(place, [failure.error], str(failure))
            return False
        self.set_document(place, document)
        return True

    def item(self, place: Place) -> Any:
        """The map item the place runs for (the innermost map's), or ``_NO_ITEM``."""
        block_key, branch = place.block, place.branch
        while block_key:
            block = self.instance.blocks[block_key]
            if block.kind == MAP:
                assert block.items is not None
                return decode_items(block.items)[branch]
            block_key, branch = block.block, block.branch
        return _NO_ITEM

    # -- commands ------------------------------------------------------------------------------

    def send(
        self,
        key: str,
        node: str,
        place: Place,
        compensation: bool = False,
        attempt: int = 1,
    ) -> None:
        """Start an attempt of a task (or of its compensation), with its timeout timer."""
        task = self.definition.tasks[node]
        spec = task.compensation if compensation else task.action
        assert spec is not None
        instance = self.instance
        suffix = f"{key}.compensation" if compensation else key
        cid = command_id(self.definition.name, instance.instance_id, suffix, attempt)
        where = self._where(key, node, place)
        if spec.command is None:  # a wait: nothing to send, only a timeout to keep
            self.note(Kind.WAIT_STARTED, command_id=cid, attempt=attempt, **where)
        else:
            assert spec.build is not None and spec.topic is not None
            try:
                self._send_built(spec, cid, attempt, compensation, place, where)
            except PathFailure as failure:  # its input could not be made: it fails at once
                self.note(Kind.NODE_PASSED, reason=str(failure), **where)
                self.caught_or_failed(node, place, [failure.error], str(failure), failure.cause)
                return
        if spec.timeout_ms is not None:
            self.schedule(timeout_timer(key), spec.timeout_ms, key, attempt)
        if spec.command is None and not compensation:
            self._take_early(key, spec)

    def _send_built(
        self,
        spec: CommandSpec,
        cid: str,
        attempt: int,
        compensation: bool,
        place: Place,
        where: dict[str, Any],
    ) -> None:
        assert spec.build is not None and spec.topic is not None
        built = self.call(spec.build, place, where["node"])
        value = built.encode()
        instance_id = self.instance.instance_id
        kind = Kind.COMPENSATION_SENT if compensation else Kind.COMMAND_SENT
        if spec.child is not None and not compensation:
            child_id = str(getattr(built, spec.child_key or ""))
            self.note(
                kind, attempt=attempt, command_id=cid, record=value, reply_key=child_id, **where
            )
            self.decision.commands.append(
                OutgoingCommand(spec.topic, child_id, cid, value, CHILD_START, instance_id)
            )
            return
        self.note(kind, attempt=attempt, command_id=cid, record=value, **where)
        self.decision.commands.append(OutgoingCommand(spec.topic, instance_id, cid, value))

    def resend(self, key: str, compensation: bool, attempt: int) -> None:
        """Another attempt of a step that ran before (a retry, an operator's retry)."""
        step = self.instance.steps[key]
        self.send(key, step.node, Place(step.block, step.branch), compensation, attempt)

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

    def cancel_child(self, key: str, reason: str) -> None:
        """Ask the child saga a step started to cancel (its end is the step's reply)."""
        child = self.instance.children.get(key)
        task = self.definition.tasks.get(self.instance.steps[key].node)
        if child is None or task is None or task.action.child is None:
            return
        assert task.action.topic is not None
        by = f"{self.definition.name}/{self.instance.instance_id}"
        action = OperatorAction(action="cancel", by=by, reason=reason)
        cid = self.instance.steps[key].command_id
        self.decision.commands.append(
            OutgoingCommand(task.action.topic, child, cid, action.encode(), CHILD_CANCEL)
        )

    # -- early events --------------------------------------------------------------------------

    def _take_early(self, key: str, spec: CommandSpec) -> None:
        """A wait that starts takes an awaited event kept for it, if one came in its window."""
        awaited = (*spec.success, *spec.failure)
        window = spec.early_ms
        for kept in self.instance.early:
            if self.now_ms - kept.at_ms > window:
                continue
            record = decode_record(kept.record)
            if type(record) not in awaited:
                continue
            current = self.instance.steps[key]
            self.note(
                Kind.INPUT_ACCEPTED,
                step=key,
                command_id=current.command_id,
                attempt=current.attempt,
                record=kept.record,
                reason=KEPT_EARLY,
            )
            if type(record) in spec.success:
                self.succeeded(key, current, kept.record)
            else:
                name = type(record).__name__
                self.attempt_failed(key, current, [name], f"{key}: {name}")
            return

    # -- outcomes of an attempt ----------------------------------------------------------------

    def succeeded(self, key: str, current: StepState, result: bytes | None) -> None:
        self.cancel(timeout_timer(key))
        self.cancel(heartbeat_timer(key))
        if current.node in self.definition.flow:  # a sleep that woke
            self.cancel(sleep_timer(key))
        if current.status.compensation:
            self.note(Kind.COMPENSATION_SUCCEEDED, step=key, command_id=current.command_id)
            self.after_compensation()
            return
        self.note(Kind.STEP_SUCCEEDED, step=key, command_id=current.command_id)
        status = self.instance.status
        if current.status is StepStatus.CANCELLED:  # done after all: undo it
            if status is Status.RUNNING and self._compensation_of(key) is not None:
                self.resend_compensation(key)
            else:
                self.after_compensation()
            return
        if status is Status.RUNNING:
            place = Place(current.block, current.branch)
            if self.documents is not None and not self._output_of(current, place, result):
                return
            self.continue_after(current.node, place, result)
            self.finish_if_idle()
        elif status is Status.COMPENSATING:  # done while compensating: undo it too
            self.continue_compensation()

    def _output_of(self, current: StepState, place: Place, result: bytes | None) -> bool:
        """The path's document after a document-flow step succeeded; False if the result could
        not be placed (the path goes on as its catchers say, or fails)."""
        assert self.documents is not None
        node, scope = current.node, self.scope(place, current.node, current.attempt)
        try:
            if node in self.definition.flow:  # a wait that woke
                document = self.documents.flow_output(node, scope)
            else:
                document = self.documents.task_output(node, scope, _task_result(result))
        except PathFailure as failure:
            self.caught_or_failed(node, place, [failure.error], str(failure), failure.cause)
            return False
        self.set_document(place, document)
        return True

    def caught_or_failed(
        self, node: str, place: Place, errors: list[str], why: str, cause: str | None = None
    ) -> None:
        """Node ``node`` failed for good at ``place``: go where its catch says, or fail the
        path. ``cause`` is the failure's own words (a worker's), if ``why`` adds to them."""
        target = self._catch(node, place, errors, cause or why)
        if target is None:
            self.path_failed(place, errors, why, cause)
        else:
            self.enter(target, place)

    def _catch(self, node: str, place: Place, errors: list[str], why: str) -> str | None:
        """The catch target for ``errors`` of ``node`` (a document-flow catcher also sets the
        path's document), or None: the path fails."""
        if self.documents is not None:
            caught = self.documents.caught(node, errors, why, self.scope(place, node))
            if caught is None:
                return None
            target, document = caught
            self.set_document(place, document)
            return target
        catch = getattr(self.definition.node(node), "catch", {})
        named: str = next((catch[e] for e in (*errors, ALL) if e in catch), COMPENSATE)
        return None if named == COMPENSATE else named

    def _retry(
        self, key: str, current: StepState, spec: CommandSpec, errors: list[str], why: str
    ) -> bool:
        """Schedule another attempt if the step's retry rules take this failure."""
        if self.documents is None:
            if not spec.retry.retries(errors, current.attempt):
                return False
            retrier = None
            delay = spec.retry.delay_ms(current.attempt, current.command_id)
        else:
            documents = self.documents
            spent = documents_of(self.instance.data).spent(key, documents.retriers(current.node))
            picked = documents.retry(current.node, errors, spent, current.command_id)
            if picked is None:
                return False
            retrier, delay = picked
        self.note(
            Kind.ATTEMPT_FAILED,
            step=key,
            command_id=current.command_id,
            attempt=current.attempt,
            reason=why,
            branch=retrier,
        )
        self.schedule(retry_timer(key), delay, key, current.attempt + 1)
        return True

    def attempt_failed(
        self,
        key: str,
        current: StepState,
        errors: list[str],
        why: str,
        cause: str | None = None,
    ) -> None:
        """An attempt failed with ``errors`` (names): retry, catch, compensate or park."""
        self.cancel(timeout_timer(key))
        self.cancel(heartbeat_timer(key))
        task = self.definition.tasks[current.node]
        compensation = current.status.compensation
        spec = task.compensation if compensation else task.action
        assert spec is not None
        cancelled = current.status is StepStatus.CANCELLED
        forward_while_compensating = not compensation and self.instance.status is not Status.RUNNING
        if not (forward_while_compensating or cancelled) and self._retry(
            key, current, spec, errors, why
        ):
            return
        if compensation:
            self.note(Kind.COMPENSATION_FAILED, step=key, command_id=current.command_id, reason=why)
            self.note(Kind.SAGA_PARKED, reason=f"compensation failed: {why}")
            return
        self.note(Kind.STEP_FAILED, step=key, command_id=current.command_id, reason=why)
        if forward_while_compensating or cancelled:  # nothing more to start for it
            self.after_compensation()
            return
        if CHILD_FAILED not in errors:
            # A child step given up on before its child ended (it timed out): the child still
            # runs, and nothing would stop it; ask it to cancel, as a cancelled parent does.
            self.cancel_child(key, why)
        place = Place(current.block, current.branch)
        self.caught_or_failed(current.node, place, errors, why, cause)

    # -- paths and blocks ----------------------------------------------------------------------

    def continue_after(self, name: str, place: Place, result: bytes | None) -> None:
        """Go on from node ``name``, which finished at ``place`` with ``result``."""
        following = _next_of(self.definition.node(name))
        if following:
            self.enter(following[0], place)
        else:
            self.path_ended(place, result)

    def path_ended(self, place: Place, result: bytes | None) -> None:
        if not place.block:
            self.finish_if_idle()
            return
        block = self.instance.blocks[place.block]
        if block.status is not BranchStatus.RUNNING:
            return
        if block.branches[place.branch] is not BranchStatus.RUNNING:
            return
        if self.documents is not None:  # a branch's output is its last document
            scope = scope_of(place.block, place.branch)
            result = documents_of(self.instance.data).documents[scope].encode()
        self.note(Kind.BRANCH_SUCCEEDED, step=place.block, branch=place.branch, record=result)
        self.advance(place.block)

    def path_failed(
        self, place: Place, errors: list[str], why: str, cause: str | None = None
    ) -> None:
        """The path at ``place`` failed with ``errors``: the saga fails (the main path), or the
        branch's block does, its catch taking the failure's own words (``cause``) as a caught
        node's does."""
        if not place.block:
            self.fail(why)
            return
        key = place.block
        block = self.instance.blocks[key]
        if block.status is not BranchStatus.RUNNING:
            return
        if block.branches[place.branch] is not BranchStatus.RUNNING:
            return
        self.note(Kind.BRANCH_FAILED, step=key, branch=place.branch, reason=why)
        node = self._block_node(key)
        if node.kind == MAP and self._tolerated(node, self.instance.blocks[key].branches):
            self.advance(key)
            return
        self._block_failed(key, errors, why, cause)

    def _block_failed(
        self, key: str, errors: list[str], why: str, cause: str | None = None
    ) -> None:
        """Block ``key`` failed: its running branches stop, and its catch takes over."""
        block = self.instance.blocks[key]
        self.cancel_block(key, f"cancelled: {why}")
        self.note(Kind.BLOCK_FAILED, step=key, reason=why)
        self.caught_or_failed(block.node, Place(block.block, block.branch), errors, why, cause)

    def _block_node(self, key: str) -> Block:
        node = self.definition.flow[self.instance.blocks[key].node]
        assert isinstance(node, Block)
        return node

    @staticmethod
    def _tolerated(node: Block, branches: tuple[BranchStatus, ...]) -> bool:
        failed = sum(1 for b in branches if b is BranchStatus.FAILED)
        if failed <= node.tolerated_failures:
            return True
        share = node.tolerated_percentage
        return share is not None and failed * 100 <= share * len(branches)

    def _start_block(self, key: str, node: Block, place: Place) -> None:
        where = self._where(key, node.name, place)
        if self.documents is not None:
            self._start_document_block(key, node, place, where)
            return
        if node.kind == MAP:
            assert node.items is not None
            items = list(self.call(node.items, place))
            if len(items) > node.max_items:
                why = f"map {node.name!r}: {len(items)} items, at most {node.max_items} allowed"
                self.note(Kind.NODE_PASSED, reason=why, **where)
                self.path_failed(place, [TOO_MANY_ITEMS], why)
                return
            self.note(Kind.BLOCK_STARTED, attempt=len(items), record=encode_items(items), **where)
        else:
            self.note(Kind.BLOCK_STARTED, attempt=len(node.branches), **where)
        self.advance(key)

    def _start_document_block(
        self, key: str, node: Block, place: Place, where: dict[str, Any]
    ) -> None:
        """A document-flow block: its branches' inputs, journaled with its start."""
        assert self.documents is not None
        try:
            inputs = self.documents.branch_inputs(node.name, self.scope(place, node.name))
        except PathFailure as failure:
            self.note(Kind.NODE_PASSED, reason=str(failure), **where)
            self.caught_or_failed(node.name, place, [failure.error], str(failure), failure.cause)
            return
        if len(inputs) > node.max_items:
            why = f"map {node.name!r}: {len(inputs)} items, at most {node.max_items} allowed"
            self.note(Kind.NODE_PASSED, reason=why, **where)
            self.caught_or_failed(node.name, place, [TOO_MANY_ITEMS], why)
            return
        self.note(Kind.BLOCK_STARTED, attempt=len(inputs), record=encode_items(inputs), **where)
        self.advance(key)

    def advance(self, key: str) -> None:
        """Start what a block may start now; join it when every branch has ended."""
        if key in self._advancing:
            return  # a branch that ended at once, inside the loop below: the loop goes on
        self._advancing.add(key)
        try:
            self._advance(key)
        finally:
            self._advancing.discard(key)

    def _advance(self, key: str) -> None:
        node = self._block_node(key)
        limit = node.max_concurrency if node.kind == MAP else len(node.branches)
        while True:
            block = self.instance.blocks[key]
            if block.status is not BranchStatus.RUNNING:
                return
            branches = block.branches
            if node.join == JOIN_FIRST and BranchStatus.SUCCEEDED in branches:
                self.cancel_block(key, "cancelled: another branch finished first")
                break
            running = sum(1 for b in branches if b is BranchStatus.RUNNING)
            queued = next((i for i, b in enumerate(branches) if b is BranchStatus.QUEUED), None)
            if queued is None or running >= limit:
                if running or queued is not None:
                    return
                break
            self.note(Kind.BRANCH_STARTED, step=key, branch=queued)
            start = node.branches[0] if node.kind == MAP else node.branches[queued]
            if self.documents is not None:  # the branch's first document: its input
                assert block.items is not None
                self.set_document(Place(key, queued), decode_items(block.items)[queued])
            self.enter(start, Place(key, queued))
        block = self.instance.blocks[key]
        outer = Place(block.block, block.branch)
        if self.documents is not None and not self._joined(key, node, outer):
            return
        self.note(Kind.BLOCK_SUCCEEDED, step=key)
        self.continue_after(node.name, outer, None)

    def _joined(self, key: str, node: Block, outer: Place) -> bool:
        """A document-flow block joins: the outer path's document from its branches' outputs
        (null for a tolerated failure). False if it failed instead."""
        assert self.documents is not None
        block = self.instance.blocks[key]
        results = [None if raw is None else json.loads(raw) for raw in block.results]
        try:
            document = self.documents.joined(node.name, self.scope(outer, node.name), results)
        except PathFailure as failure:
            self._block_failed(key, [failure.error], str(failure), failure.cause)
            return False
        self.set_document(outer, document)
        return True

    def cancel_block(self, key: str, why: str) -> None:
        """Stop a block's running branches: their steps are cancelled, their blocks too."""
        for index, status in enumerate(self.instance.blocks[key].branches):
            if status is BranchStatus.RUNNING:
                self.note(Kind.BRANCH_CANCELLED, step=key, branch=index, reason=why)
        for inner, block in list(self.instance.blocks.items()):
            if block.block == key and block.status is BranchStatus.RUNNING:
                self.cancel_block(inner, why)
                self.note(Kind.BLOCK_CANCELLED, step=inner, reason=why)
        for name, step in list(self.instance.steps.items()):
            if step.block == key and step.status in (StepStatus.PENDING, StepStatus.RETRYING):
                self.cancel_step(name, step, why)

    def cancel_step(self, key: str, step: StepState, why: str) -> None:
        """A step a failure made unwanted: stopped if nothing is in flight, else awaited."""
        if self.sends_nothing(step) or step.status is StepStatus.RETRYING:
            for timer in step_timers(key):
                self.cancel(timer)
            self.note(Kind.STEP_FAILED, step=key, reason=why)
            return
        self.note(Kind.STEP_CANCELLED, step=key, command_id=step.command_id, reason=why)
        self.cancel_child(key, why)

    def sends_nothing(self, step: StepState) -> bool:
        """Nothing in flight whose reply must be awaited: a wait or a sleep; or, in a
        document-flow definition, any task (nothing there is ever undone, so a late reply could
        change nothing: a failed or timed-out execution ends at once, as Step Functions' do)."""
        task = self.definition.tasks.get(step.node)
        return task is None or task.action.command is None or self.documents is not None

    def finish_if_idle(self) -> None:
        instance = self.instance
        if instance.status is not Status.RUNNING or instance.active:
            return
        if instance.blocks and any(
            b.status is BranchStatus.RUNNING for b in instance.blocks.values()
        ):
            return
        self.cancel(DEADLINE)
        self.note(Kind.SAGA_COMPLETED)

    # -- failing and compensating --------------------------------------------------------------

    def fail(self, reason: str) -> None:
        """Fail the saga: compensate completed steps in reverse, or fail outright if none."""
        if self.instance.status is not Status.RUNNING:
            return
        self.cancel(DEADLINE)
        self.note(Kind.SAGA_COMPENSATING, reason=reason)
        # Blocks still running (the saga was cancelled, or its deadline passed, while in one)
        # stop as a failed branch stops its siblings; left running, a finished instance would
        # show branches as active (``sagas diagram --instance``). Inner blocks stop with theirs.
        for key, block in list(self.instance.blocks.items()):
            if not block.block and block.status is BranchStatus.RUNNING:
                self.cancel_block(key, f"cancelled: {reason}")
                self.note(Kind.BLOCK_CANCELLED, step=key, reason=reason)
        # Steps waiting to retry will not be retried now, and a wait or sleep has nothing in
        # flight whose reply must come first: both fail at once. Commands in flight are awaited
        # (a child saga is asked to cancel: its end is its step's reply), unless nothing would
        # ever undo them (``sends_nothing``).
        for name in self.instance.active:
            step = self.instance.steps[name]
            idle = step.status is StepStatus.RETRYING
            if idle or (self.sends_nothing(step) and step.status is StepStatus.PENDING):
                for timer in step_timers(name):
                    self.cancel(timer)
                self.note(Kind.STEP_FAILED, step=name, reason=reason)
            elif step.status is StepStatus.PENDING:
                self.cancel_child(name, reason)
        self.continue_compensation()

    def after_compensation(self) -> None:
        """A compensation (or a cancelled step) finished: go on with what the saga is doing."""
        if self.instance.status is Status.COMPENSATING:
            self.continue_compensation()
        else:
            self.finish_if_idle()

    def _compensation_of(self, key: str) -> CommandSpec | None:
        task = self.definition.tasks.get(self.instance.steps[key].node)
        return None if task is None else task.compensation

    def resend_compensation(self, key: str) -> None:
        self.resend(key, compensation=True, attempt=1)

    def continue_compensation(self) -> None:
        """Start the next compensation, or end the saga when none is left and none in flight."""
        instance = self.instance
        if instance.active:
            return  # one compensation at a time; in-flight steps are compensated when they reply
        for key in reversed(instance.completed):
            step = instance.steps[key]
            if step.status is StepStatus.SUCCEEDED and self._compensation_of(key) is not None:
                self.resend_compensation(key)
                return
        compensated = any(s.status is StepStatus.COMPENSATED for s in instance.steps.values())
        self.note(
            Kind.SAGA_COMPENSATED if compensated else Kind.SAGA_FAILED, reason=instance.reason
        )


def _next_of(node: Node) -> tuple[str, ...]:
    if isinstance(node, Choice | End):
        return ()
    return node.next


def _task_result(raw: bytes | None) -> Any:
    """A document-flow task's result: a ``TaskSucceeded``'s output, or a record as its fields."""
    if raw is None:
        return None
    record = decode_record(raw)
    return record.output_value() if isinstance(record, TaskSucceeded) else None
