"""Flow control in the processor: commands held back by their limits, and released in time.

``FlowGate`` stands between a staged decision and the commands it produces. A step's command
whose limit (``stream_processors.core.throttle``) has no room in this inbox partition's share
is *queued* instead of sent; it is sent when a reply or a timeout frees a place in flight or the
rate window moves on (``run``, each turn of the loop). What to release is decided by the pure
``throttle.release``; this module keeps the partition's state and makes it durable.

Durable like snapshots, in the same transaction: the queue, the commands in flight and the
instances' priorities are rows of the snapshots changelog (``<saga>.snapshots``, the
instance's partition) under keys no instance can have (``FLOW_PREFIX``), staged in the open
transaction (``OpenTransaction.flow``) and written to the local store with its commit. So a
queued command and the input that queued it commit together; a release (the command produced,
its queue row deleted, its in-flight row written) commits together too; the rows move with
their partition and are restored with it. The in-memory state follows the open transaction;
after an abort it is read again from the store (``reload``). Send times are not durable: a
partition restored starts with its rate window full, so a restart never bursts.

A command is sent only while its instance still waits for it (its step's attempt in flight,
the instance neither finished nor parked); one that no longer is (the attempt timed out, the
saga was cancelled and compensated) is dropped from the queue. A place in flight is freed when
the instance's step no longer waits for that command: a reply, a timeout, a cancel, the end.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from stream_processors.codecs.records import decode_record
from stream_processors.core.decide import prioritized
from stream_processors.core.decision import COMMAND, Decision, OutgoingCommand
from stream_processors.core.instance import Instance, Status, StepStatus
from stream_processors.core.journal import JournalEntry, Kind
from stream_processors.core.model import OperatorAction, SagaDefinition
from stream_processors.core.release import released
from stream_processors.core.throttle import (
    PRIORITIZE,
    Capacity,
    Queued,
    Throttle,
    priority_in,
    release,
    room,
    validate_shares,
)
from stream_processors.engine import metrics
from stream_processors.engine.outputs import Unstaged
from stream_processors.engine.store import FLOW_ROWS, QUEUE_ROWS, SnapshotStore
from stream_processors.engine.transaction import OpenTransaction

log = logging.getLogger(__name__)

#: Changelog keys that are a partition's flow-control rows, not instances.
FLOW_PREFIX = FLOW_ROWS
_QUEUED = QUEUE_ROWS
_IN_FLIGHT = FLOW_PREFIX + "i\x00"
_PRIORITY = FLOW_PREFIX + "p\x00"
#: A step's attempt is still awaited in these statuses (a cancelled one's reply too).
_AWAITED = (StepStatus.PENDING, StepStatus.COMPENSATING, StepStatus.CANCELLED)


def is_flow_key(key: str) -> bool:
    """Whether a snapshots-changelog key is a flow-control row (not an instance)."""
    return key.startswith(FLOW_PREFIX)


class Sender(Protocol):
    """What releasing needs of the processor."""

    def load(self, partition: int, instance_id: str) -> Instance | None: ...
    def begin(self) -> None: ...
    def send_released(self, command: OutgoingCommand, instance: Instance) -> None: ...
    def emit(
        self, decision: Decision, partition: int, key: bytes, before: Instance | None, now_ms: int
    ) -> Unstaged | None: ...


@dataclass
class _Held:
    queued: Queued
    limit: str
    command: OutgoingCommand


@dataclass
class _Partition:
    """One inbox partition's flow state, as the open transaction sees it."""

    queues: dict[str, dict[str, _Held]] = field(default_factory=dict)
    in_flight: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (limit, instance)
    counts: dict[str, int] = field(default_factory=dict)
    mine: dict[str, set[str]] = field(default_factory=dict)  # instance -> its queued/in-flight ids
    priorities: dict[str, int] = field(default_factory=dict)
    sent: dict[str, deque[int]] = field(default_factory=dict)
    wake: dict[str, int] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    seq: int = 0
    #: Restored: its rows are checked against their instances at the next ``run``.
    unchecked: bool = True

    def track(self, instance: str, command_id: str) -> None:
        self.mine.setdefault(instance, set()).add(command_id)

    def untrack(self, instance: str, command_id: str) -> None:
        ids = self.mine.get(instance)
        if ids is not None:
            ids.discard(command_id)
            if not ids:
                del self.mine[instance]


def awaited(instance: Instance) -> set[str]:
    """The command ids ``instance`` waits for a reply to (none once it finished)."""
    if instance.status.finished:
        return set()
    return {s.command_id for s in instance.steps.values() if s.status in _AWAITED}


class FlowGate:
    """The limits of one saga in the partitions this process owns."""

    def __init__(
        self,
        definition: SagaDefinition,
        throttle: Throttle,
        partitions: int,
        store: SnapshotStore,
        transaction: OpenTransaction,
        clock: Callable[[], float] = time.time,
    ) -> None:
        validate_shares(throttle, partitions)
        self.definition = definition
        self.throttle = throttle
        self.partitions = partitions
        self.store = store
        self._txn = transaction
        self._clock = clock
        self._owned: dict[int, _Partition] = {}
        saga = definition.name
        self._queued_gauge = {n: metrics.LIMIT_QUEUED.labels(saga, n) for n in throttle.limits}
        self._waited = {n: metrics.LIMIT_QUEUED_SECONDS.labels(saga, n) for n in throttle.limits}
        self._sent = {n: metrics.LIMIT_SENT.labels(saga, n) for n in throttle.limits}

    # -- partitions --------------------------------------------------------------------------

    def repartition(self, partitions: int) -> None:
        """The inbox's partition count as the cluster has it (the shares are over it)."""
        validate_shares(self.throttle, partitions)
        if partitions != self.partitions:
            log.warning(
                "the inbox has %s partitions, not %s: shares are over %s",
                partitions,
                self.partitions,
                partitions,
            )
        self.partitions = partitions

    def restored(self, partitions: Iterable[int]) -> None:
        """Read the flow rows of newly restored partitions from the store."""
        now_ms = int(self._clock() * 1000)
        for partition in partitions:
            self._forget(partition)
            state = self._owned[partition] = _Partition()
            for key, value in self.store.instances(partition, FLOW_PREFIX):
                self._load_row(state, FLOW_PREFIX + key, json.loads(value))
            for name, limit in self.throttle.limits.items():
                # Send times are not durable: start as if one was just sent, never with a burst.
                state.sent[name] = deque([now_ms] if limit.rate is not None else [])
                state.dirty.add(name)
        self._gauge()

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._forget(partition)
        self._gauge()

    def reload(self) -> None:
        """After an abort: the state of every owned partition as committed (the store's)."""
        self.restored(list(self._owned))

    def _forget(self, partition: int) -> None:
        self._owned.pop(partition, None)

    def _load_row(self, state: _Partition, key: str, row: dict[str, Any]) -> None:
        if key.startswith(_QUEUED):
            held = _held(row)
            state.queues.setdefault(held.limit, {})[held.queued.command_id] = held
            state.track(held.queued.instance, held.queued.command_id)
            state.seq = max(state.seq, held.queued.seq + 1)
        elif key.startswith(_IN_FLIGHT):
            command_id = key[len(_IN_FLIGHT) :]
            state.in_flight[command_id] = (row["limit"], row["instance"])
            state.counts[row["limit"]] = state.counts.get(row["limit"], 0) + 1
            state.track(row["instance"], command_id)
        elif key.startswith(_PRIORITY):
            state.priorities[key[len(_PRIORITY) :]] = int(row["priority"])

    # -- in a decision -----------------------------------------------------------------------

    def decided(
        self,
        partition: int,
        instance_id: str,
        before: Instance | None,
        decision: Decision,
        record: Any,
    ) -> None:
        """A decision was staged: an instance started takes its priority from its start event
        (kept only when not 0), and an operator's applied ``prioritize`` sets a new one."""
        priority = prioritized(decision, record)
        if before is None and decision.entries:
            priority = self.throttle.priority_of(record) or None
        if priority is not None:
            self.prioritize(partition, instance_id, priority)

    def prioritize(self, partition: int, instance_id: str, priority: int) -> None:
        """Set an instance's priority (its start's, or an operator's); reorders its queue."""
        state = self._owned.get(partition)
        if state is None:
            return
        state.priorities[instance_id] = priority
        self._stage(partition, _PRIORITY + instance_id, {"priority": priority})
        state.dirty.update(state.queues)

    def admit(self, partition: int, decision: Decision, now_ms: int) -> set[str]:
        """The ids of ``decision``'s commands held back (queued); the others are sent now."""
        state = self._owned.get(partition)
        instance = decision.instance
        held: set[str] = set()
        if state is None or instance is None:
            return held
        for command in decision.commands:
            limit = self._limit_of(instance, command)
            if limit is None:
                continue
            queue = state.queues.setdefault(limit, {})
            capacity = self._capacity(partition, limit)
            if not queue and self._room(state, limit, capacity, now_ms):
                self._sending(partition, state, limit, command.command_id, instance.instance_id)
                self._sent[limit].inc()
                continue
            queued = Queued(now_ms, state.seq, command.command_id, instance.instance_id)
            state.seq += 1
            queue[command.command_id] = _Held(queued, limit, command)
            state.track(instance.instance_id, command.command_id)
            self._stage(partition, _QUEUED + command.command_id, _row(queue[command.command_id]))
            held.add(command.command_id)
            state.dirty.add(limit)  # ``run`` decides when it goes (its wake, under a rate)
        if held:
            self._gauge()
        return held

    def settle(self, partition: int, instance: Instance) -> None:
        """After a decision on ``instance``: free the places of commands it no longer waits
        for, drop the queued ones it no longer waits for, and its priority once it ended."""
        state = self._owned.get(partition)
        if state is None:
            return
        ids = state.mine.get(instance.instance_id)
        if ids:
            waiting = awaited(instance)
            for command_id in [i for i in ids if i not in waiting]:
                self._settle_one(partition, state, instance.instance_id, command_id)
        if instance.status.finished and instance.instance_id in state.priorities:
            del state.priorities[instance.instance_id]
            self._stage(partition, _PRIORITY + instance.instance_id, None)

    def gone(self, partition: int, instance_id: str) -> None:
        """An input named an instance the partition does not have: free whatever it held."""
        state = self._owned.get(partition)
        if state is not None:
            for command_id in list(state.mine.get(instance_id, ())):
                self._settle_one(partition, state, instance_id, command_id)

    def _settle_one(
        self, partition: int, state: _Partition, instance: str, command_id: str
    ) -> None:
        state.untrack(instance, command_id)
        flying = state.in_flight.pop(command_id, None)
        if flying is not None:
            state.counts[flying[0]] -= 1
            state.dirty.add(flying[0])
            self._stage(partition, _IN_FLIGHT + command_id, None)
            return
        for queue in state.queues.values():
            if queue.pop(command_id, None) is not None:
                self._stage(partition, _QUEUED + command_id, None)
                self._gauge()
                return

    # -- releasing ---------------------------------------------------------------------------

    def run(self, sender: Sender, now_ms: int) -> None:
        """Send what the limits allow now, in the partitions whose room may have changed."""
        for partition, state in list(self._owned.items()):
            if state.unchecked:
                self._check(sender, partition, state)
            for limit in list(state.queues):
                wake = state.wake.get(limit)
                if limit in state.dirty or (wake is not None and wake <= now_ms):
                    state.dirty.discard(limit)
                    self._release(sender, partition, state, limit, now_ms)

    def _check(self, sender: Sender, partition: int, state: _Partition) -> None:
        """Settle a restored partition's rows against their instances: a place held for an
        instance that no longer waits for its command (it was expired, say, or a version of the
        engine without flow control decided on it) is freed, never held for ever."""
        state.unchecked = False
        for instance_id in list(state.mine):
            instance = sender.load(partition, instance_id)
            if instance is None:
                sender.begin()
                for command_id in list(state.mine.get(instance_id, ())):
                    self._settle_one(partition, state, instance_id, command_id)
            elif state.mine.get(instance_id, set()) - awaited(instance):
                sender.begin()
                self.settle(partition, instance)

    def _release(
        self, sender: Sender, partition: int, state: _Partition, limit: str, now_ms: int
    ) -> None:
        queue = state.queues.get(limit)
        if not queue:
            state.wake.pop(limit, None)
            return
        capacity = self._capacity(partition, limit)
        decided = release(
            [h.queued for h in queue.values()],
            capacity,
            state.counts.get(limit, 0),
            state.sent.get(limit, ()),
            now_ms,
            lambda instance: state.priorities.get(instance, 0),
            self.throttle.aging_ms,
        )
        if decided.wake_ms is None:
            state.wake.pop(limit, None)
        else:
            state.wake[limit] = decided.wake_ms
        dropped = 0
        for queued in decided.send:
            held = queue.pop(queued.command_id)
            sender.begin()
            self._stage(partition, _QUEUED + queued.command_id, None)
            state.untrack(queued.instance, queued.command_id)
            instance = sender.load(partition, queued.instance)
            if instance is None or queued.command_id not in awaited(instance):
                dropped += 1  # no longer waited for: dropped, its place goes to the next
                continue
            if instance.status is Status.NEEDS_ATTENTION:
                queue[queued.command_id] = held  # parked: it waits with its instance
                state.track(queued.instance, queued.command_id)
                self._stage(partition, _QUEUED + queued.command_id, _row(held))
                continue
            sender.send_released(held.command, instance)
            self._sending(partition, state, limit, queued.command_id, queued.instance, now_ms)
            self._restart_timeout(sender, partition, instance, held, now_ms)
            self._waited[limit].observe(max(0, now_ms - queued.queued_ms) / 1000)
            self._sent[limit].inc()
        if dropped and queue:
            state.dirty.add(limit)
        self._gauge()

    def _restart_timeout(
        self, sender: Sender, partition: int, instance: Instance, held: _Held, now_ms: int
    ) -> None:
        """The step's timeout runs from now, when its command is sent (``core.release``)."""
        queued = held.queued
        decision = released(
            self.definition, instance, queued.command_id, held.limit, queued.queued_ms, now_ms
        )
        if decision is None:
            return
        key = instance.instance_id.encode()
        if sender.emit(decision, partition, key, instance, now_ms) is not None:
            log.error("instance %s: its timeout could not be restarted", instance.instance_id)

    # -- helpers -----------------------------------------------------------------------------

    def _limit_of(self, instance: Instance, command: OutgoingCommand) -> str | None:
        """The limit ``command`` counts against: a step's command (one its instance waits for)
        to a limited service or of a limited step."""
        if command.kind != COMMAND:
            return None
        step = next(
            (s for s in instance.steps.values() if s.command_id == command.command_id), None
        )
        if step is None:  # a handler's fire-and-forget command: no step waits for it
            return None
        return self.throttle.limit_of(step.node, command.topic)

    def _capacity(self, partition: int, limit: str) -> Capacity:
        return Capacity.of(self.throttle.limits[limit], partition, self.partitions)

    def _room(self, state: _Partition, limit: str, capacity: Capacity, now_ms: int) -> bool:
        return room(capacity, state.counts.get(limit, 0), state.sent.get(limit, ()), now_ms) > 0

    def _sending(
        self,
        partition: int,
        state: _Partition,
        limit: str,
        command_id: str,
        instance: str,
        now_ms: int | None = None,
    ) -> None:
        at = int(self._clock() * 1000) if now_ms is None else now_ms
        state.in_flight[command_id] = (limit, instance)
        state.counts[limit] = state.counts.get(limit, 0) + 1
        state.track(instance, command_id)
        window = state.sent.setdefault(limit, deque())
        window.append(at)
        capacity = self._capacity(partition, limit)
        while window and window[0] <= at - capacity.window_ms:
            window.popleft()
        self._stage(partition, _IN_FLIGHT + command_id, _flying(limit, instance, at))

    def _stage(self, partition: int, key: str, row: dict[str, Any] | None) -> None:
        self._txn.flow[(partition, key)] = None if row is None else json.dumps(row).encode()

    def _gauge(self) -> None:
        for name, gauge in self._queued_gauge.items():
            gauge.set(sum(len(s.queues.get(name, ())) for s in self._owned.values()))

    def next_wake_ms(self) -> int | None:
        """The earliest time a rate next lets a queued command go, in any owned partition."""
        wakes = [w for state in self._owned.values() for w in state.wake.values()]
        return min(wakes, default=None)

    def waiting(self) -> dict[str, int]:
        """Queued commands per limit in this process's partitions."""
        return {
            name: sum(len(s.queues.get(name, ())) for s in self._owned.values())
            for name in self.throttle.limits
        }


def _flying(limit: str, instance: str, sent_ms: int) -> dict[str, Any]:
    """An in-flight row: a command sent under ``limit`` and not answered yet."""
    return {"limit": limit, "instance": instance, "sent_ms": sent_ms}


def _row(held: _Held) -> dict[str, Any]:
    command, queued = held.command, held.queued
    return {
        "limit": held.limit,
        "queued_ms": queued.queued_ms,
        "seq": queued.seq,
        "instance": queued.instance,
        "topic": command.topic,
        "key": command.key,
        "command_id": command.command_id,
        "value": base64.b64encode(command.value).decode(),
        "kind": command.kind,
        "parent": command.parent,
    }


def _held(row: dict[str, Any]) -> _Held:
    command = OutgoingCommand(
        row["topic"],
        row["key"],
        row["command_id"],
        base64.b64decode(row["value"]),
        row["kind"],
        row["parent"],
    )
    queued = Queued(row["queued_ms"], row["seq"], row["command_id"], row["instance"])
    return _Held(queued, row["limit"], command)


class QueueRebuild:
    """One partition's flow rows as the processor would hold them, rebuilt from its journal
    and the command topics (``sagas replay``'s rebuild: ``stream_processors.tools.replay``).

    Pure: ``see`` is given the partition's journal entries in order, ``rows`` the folded
    instances and the commands that left (``{command id: when produced}``, read from the
    command topics). The journal has each command's bytes and when it was decided
    (``CommandSent``/``CompensationSent``) and each instance's priority (its start event, then
    an operator's applied ``prioritize``); the fold says which commands the instances still
    wait for. Such a command, counting against a limit, is *in flight* if it left, else *queued*
    (from when it was decided, in the order of the journal): the queue the processor had, less
    what only its memory held (the rate's recent send times, which a restored partition starts
    without anyway: it waits one slot before its first send).
    """

    def __init__(self, definition: SagaDefinition, throttle: Throttle) -> None:
        self.definition = definition
        self.throttle = throttle
        self._decided: dict[str, tuple[int, int, bytes]] = {}  # id -> (at_ms, seq, bytes)
        self._priorities: dict[str, int] = {}

    def see(self, entry: JournalEntry) -> None:
        """One journal entry of the partition, in journal order."""
        kind = entry.kind
        if kind in _SENT_KINDS and entry.command_id and entry.record is not None:
            self._decided[entry.command_id] = (entry.at_ms, len(self._decided), entry.record)
        elif kind == Kind.SAGA_STARTED.value and entry.record is not None:
            priority = self.throttle.priority_of(decode_record(entry.record))
            self._priorities[entry.instance] = priority
        elif kind == Kind.OPERATOR_ACTION.value and entry.record is not None:
            action = decode_record(entry.record)
            if isinstance(action, OperatorAction) and action.action == PRIORITIZE:
                self._priorities[entry.instance] = priority_in(action.reason) or 0

    def rows(self, instances: dict[str, Instance], left: dict[str, int]) -> list[tuple[str, bytes]]:
        """(changelog key, row) of every flow row of the partition."""
        rows: list[tuple[str, dict[str, Any]]] = []
        for instance_id, instance in instances.items():
            if instance.status.finished:
                continue
            if self._priorities.get(instance_id):
                rows.append((_PRIORITY + instance_id, {"priority": self._priorities[instance_id]}))
            for held in self._held(instance):
                command_id = held.queued.command_id
                if command_id in left:
                    flying = _flying(held.limit, instance_id, left[command_id])
                    rows.append((_IN_FLIGHT + command_id, flying))
                else:
                    rows.append((_QUEUED + command_id, _row(held)))
        return [(key, json.dumps(row).encode()) for key, row in rows]

    def _held(self, instance: Instance) -> Iterable[_Held]:
        """The commands ``instance`` waits for that count against a limit."""
        waiting = awaited(instance)
        for step in instance.steps.values():
            decided = self._decided.get(step.command_id)
            if step.command_id not in waiting or decided is None:
                continue
            task = self.definition.tasks.get(step.node)
            compensating = step.status.compensation
            spec = None if task is None else task.compensation if compensating else task.action
            if spec is None or spec.topic is None or (spec.child is not None and not compensating):
                continue  # a wait sends nothing; a child's start is not a command
            limit = self.throttle.limit_of(step.node, spec.topic)
            if limit is not None:
                at_ms, seq, value = decided
                command = OutgoingCommand(spec.topic, instance.instance_id, step.command_id, value)
                queued = Queued(at_ms, seq, step.command_id, instance.instance_id)
                yield _Held(queued, limit, command)


_SENT_KINDS = (Kind.COMMAND_SENT.value, Kind.COMPENSATION_SENT.value)
