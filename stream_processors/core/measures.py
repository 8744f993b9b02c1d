"""What the metrics count, derived from decisions and status transitions: pure, no Prometheus.

The processor already knows everything the seeds' metrics need when it stages a decision: the
journal entries it writes and the instance before and after. This module turns them into
measures (``Measurer.measure``, into a ``Tally``: lifecycle points, step outcomes and times,
failures by error type, saga times against the saga's SLA), and keeps the count of unfinished
instances by status per partition (``InstanceCounts``), moved by each committed snapshot and
rebuilt from the store when a partition is assigned. ``stream_processors.engine.metrics`` feeds
both to Prometheus.

Every label value here comes from the definition or from fixed sets (statuses, outcomes): a
step's time is labelled by its node (never by a map item's or a loop visit's key), an error by
a name the saga declares (its failure replies, its retry and catch names) or ``unknown``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream_processors.codecs.peek import LeadingString
from stream_processors.core.instance import ACTIVE_STEP, Instance, Status, StepState
from stream_processors.core.journal import KIND_BY_VALUE, JournalEntry, Kind
from stream_processors.core.model import CHILD_FAILED, SagaDefinition
from stream_processors.core.policy import TIMEOUT, TRANSIENT

#: The label value of anything outside a label's declared set.
OTHER = "unknown"

#: Statuses of unfinished instances, as labelled: ``running`` has a command in flight (or an
#: attempt due), ``waiting`` only waits (for an event, a sleep, a child's end).
RUNNING, WAITING, COMPENSATING, PARKED = "running", "waiting", "compensating", "parked"
UNFINISHED = (RUNNING, WAITING, COMPENSATING, PARKED)

#: Lifecycle points counted (``sagalog_sagas_total``'s ``event`` label).
LIFECYCLE = {
    Kind.SAGA_STARTED: "started",
    Kind.SAGA_COMPLETED: "completed",
    Kind.SAGA_COMPENSATED: "compensated",
    Kind.SAGA_FAILED: "failed",
    Kind.SAGA_PARKED: "parked",
    Kind.SAGA_RESUMED: "resumed",
    Kind.SAGA_RESOLVED: "resolved",
}
#: Lifecycle points that finish an instance: timed, and judged against the SLA.
FINISHES = frozenset({Kind.SAGA_COMPLETED, Kind.SAGA_COMPENSATED, Kind.SAGA_FAILED})
WITHIN, OVER = "within", "over"

_STEP_OUTCOMES = {
    Kind.STEP_SUCCEEDED: "succeeded",
    Kind.STEP_FAILED: "failed",
    Kind.ATTEMPT_FAILED: "retried",
}
#: What decide's failure reasons (``"<step>: ..."``) say for errors that are not a reply's type.
_NO_REPLY = "no reply in time"
_CHILD = "child saga "


@dataclass(frozen=True, slots=True)
class Finish:
    """An instance finished: its outcome, time from its start, and whether within its SLA
    (None: the saga declares none)."""

    outcome: str
    seconds: float
    within_sla: bool | None


#: (status label, start time in ms) of an unfinished instance; None for a finished one or none.
Counted = tuple[str, int] | None


@dataclass(slots=True)
class Tally:
    """What the decisions of one transaction count, summed by label (counted once it commits:
    one increment per label and transaction, not per input)."""

    lifecycle: Counter[str] = field(default_factory=Counter)
    #: Step attempts ended, by (node, outcome); failed ones by (node, error).
    steps: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: (node, outcome, seconds) of the attempts whose command was sent by an earlier decision.
    step_seconds: list[tuple[str, str, float]] = field(default_factory=list)
    finishes: list[Finish] = field(default_factory=list)

    def clear(self) -> None:
        self.lifecycle.clear()
        self.steps.clear()
        self.failures.clear()
        self.step_seconds.clear()
        self.finishes.clear()


class Measurer:
    """Measures of one saga's decisions, with the sets its declaration bounds labels by."""

    def __init__(self, definition: SagaDefinition) -> None:
        self.definition = definition
        self.sla_ms = definition.sla_ms
        self.errors = declared_errors(definition)
        # Nodes at which an instance waits, with no worker's command in flight: waits for an
        # event, sleeps, child sagas (the child is counted as running in its own saga).
        self.waits = frozenset(
            name
            for name, task in definition.tasks.items()
            if task.action.command is None or task.action.child is not None
        ) | frozenset(definition.flow)

    def measure(
        self,
        before: Instance | None,
        entries: Sequence[JournalEntry],
        after: Instance,
        tally: Tally,
    ) -> None:
        """Add to ``tally`` what ``entries`` (one decision's, turning ``before`` into ``after``)
        count. Most entries count nothing (a command sent, an input accepted)."""
        for entry in entries:
            kind = KIND_BY_VALUE[entry.kind]
            event = LIFECYCLE.get(kind)
            if event is not None:
                tally.lifecycle[event] += 1
                if kind in FINISHES:
                    tally.finishes.append(self._finish(event, entry.at_ms, after))
                continue
            outcome = _STEP_OUTCOMES.get(kind)
            # A step failed without a command id was cancelled or given up on, not answered.
            if outcome is None or entry.step is None:
                continue
            if outcome != "succeeded" and not entry.command_id:
                continue
            step = _step_state(entry.step, before, after)
            if step is None or step.status.compensation or step.node not in self.definition.tasks:
                continue  # a compensation's attempt, or a sleep that woke
            self._step(outcome, entry, step, before, tally)

    def _finish(self, outcome: str, at_ms: int, after: Instance) -> Finish:
        took_ms = max(0, at_ms - after.started_at_ms)
        sla = self.sla_ms
        return Finish(outcome, took_ms / 1000, None if sla is None else took_ms <= sla)

    def _step(
        self,
        outcome: str,
        entry: JournalEntry,
        step: StepState,
        before: Instance | None,
        tally: Tally,
    ) -> None:
        key, node = entry.step or "", step.node
        tally.steps[(node, outcome)] += 1
        if before is not None and key in before.steps:  # else it began in this decision
            tally.step_seconds.append((node, outcome, max(0, entry.at_ms - step.sent_at_ms) / 1000))
        if outcome != "succeeded":
            tally.failures[(node, self.error_type(key, entry.reason))] += 1

    def error_type(self, key: str, reason: str | None) -> str:
        """The error a failure entry's ``reason`` names (decide writes ``"<step>: <error>..."``)
        if the saga declares it (``declared_errors``); a worker's undeclared error is
        ``sagalog.Transient`` (as its retry policy sees it), anything else ``unknown``."""
        if not reason or not reason.startswith(f"{key}: "):
            return OTHER
        said = reason[len(key) + 2 :]
        if said == _NO_REPLY:
            return TIMEOUT
        if said.startswith(_CHILD):
            return CHILD_FAILED
        name, colon, _ = said.partition(":")
        if name in self.errors:
            return name
        # "<error>: <message>" is a worker's CommandFailed: transient, whatever its handler raised
        return TRANSIENT if colon else OTHER

    def status_label(self, instance: Instance | None) -> str | None:
        """An unfinished instance's status as labelled (``UNFINISHED``); None when finished or
        none."""
        if instance is None:
            return None
        nodes = (step.node for step in instance.steps.values() if step.status in ACTIVE_STEP)
        return self._label(instance.status, nodes)

    def snapshot_label(self, datum: Mapping[str, Any]) -> Counted:
        """``counted`` of a decoded snapshot datum (restore decodes no saga data)."""
        nodes = (s["node"] or s["name"] for s in datum["steps"] if s["status"] in _ACTIVE)
        label = self._label(Status(datum["status"]), nodes)
        return None if label is None else (label, datum["started_at_ms"])

    def counted(self, instance: Instance | None) -> Counted:
        label = self.status_label(instance)
        return None if label is None or instance is None else (label, instance.started_at_ms)

    def _label(self, status: Status, active_nodes: Iterable[str]) -> str | None:
        if status is Status.RUNNING:
            waits = self.waits
            return RUNNING if any(node not in waits for node in active_nodes) else WAITING
        if status is Status.COMPENSATING:
            return COMPENSATING
        if status is Status.NEEDS_ATTENTION:
            return PARKED
        return None


def _step_state(key: str, before: Instance | None, after: Instance) -> StepState | None:
    """The step's state when its attempt ended: before the decision, else (it began in the same
    decision) after it."""
    if before is not None:
        state = before.steps.get(key)
        if state is not None:
            return state
    return after.steps.get(key)


def declared_errors(definition: SagaDefinition) -> frozenset[str]:
    """Error names the saga declares: its failure replies' types, its retry policies' and its
    catches' names, and the engine's own (timeout, transient, a child's failure)."""
    names = {TIMEOUT, TRANSIENT, CHILD_FAILED}
    for spec in definition.specs():
        names.update(failure.__name__ for failure in spec.failure)
        names.update(spec.retry.retry_on)
    for task in definition.tasks.values():
        names.update(task.catch)
    return frozenset(names)


_ACTIVE = frozenset(status.value for status in ACTIVE_STEP)
FINISHED = frozenset(status.value for status in Status if status.finished)
#: A snapshot's status, read off its first fields without decoding the rest.
_STATUS = LeadingString(
    "sagalog.Snapshot", (("instance", "string"), ("saga_version", "int"), ("status", "string"))
)


def snapshot_status(value: bytes) -> str | None:
    """The status of an encoded snapshot, read off its first fields (a store holds mostly
    finished instances, which restore then skips cheaply); None when that cannot be done (see
    ``stream_processors.codecs.peek``)."""
    return _STATUS.read(value)


class InstanceCounts:
    """Unfinished instances by status label, per partition, and when they started (seconds) for
    the SLA: moved by each committed snapshot (``moved``), rebuilt per partition from the store
    (``rebuild``), dropped with a revoked partition (``forget``)."""

    def __init__(self, sla_ms: int | None) -> None:
        self.sla_ms = sla_ms
        self._counts: dict[int, Counter[str]] = {}
        # Only with an SLA: how many unfinished instances started in each second.
        self._started: dict[int, Counter[int]] = {}

    @property
    def partitions(self) -> frozenset[int]:
        return frozenset(self._counts)

    def rebuild(self, partition: int, rows: Iterable[Counted] = ()) -> None:
        """Count ``partition`` afresh from ``rows``; more may be ``include``d later (moves in
        between apply as deltas: a scan of the store as of when it began, plus every move
        committed since, is the count)."""
        self._counts[partition] = Counter()
        self._started[partition] = Counter()
        self.include(partition, rows)

    def include(self, partition: int, rows: Iterable[Counted]) -> None:
        if partition in self._counts:
            for row in rows:
                self._add(partition, row, 1)

    def forget(self, partition: int) -> None:
        self._counts.pop(partition, None)
        self._started.pop(partition, None)

    def moved(self, partition: int, before: Counted, after: Counted) -> None:
        """An instance of ``partition`` went from ``before`` to ``after`` (committed)."""
        if before != after and partition in self._counts:
            self._add(partition, before, -1)
            self._add(partition, after, 1)

    def _add(self, partition: int, row: Counted, delta: int) -> None:
        if row is None:
            return
        label, started_ms = row
        self._counts[partition][label] += delta
        if self.sla_ms is not None:
            self._started[partition][started_ms // 1000] += delta

    def by_status(self) -> dict[str, int]:
        """Every unfinished label with its count over the partitions held (0s included)."""
        totals = dict.fromkeys(UNFINISHED, 0)
        for counts in self._counts.values():
            for label, count in counts.items():
                totals[label] += count
        return totals

    def past_sla(self, now_ms: int) -> int | None:
        """Unfinished instances started more than the SLA ago (None: no SLA declared). To the
        second: an instance counts once the whole second it started in is past the SLA."""
        if self.sla_ms is None:
            return None
        latest = (now_ms - self.sla_ms) // 1000  # started in a second ending by now - SLA
        return sum(
            count
            for started in self._started.values()
            for second, count in started.items()
            if second < latest
        )


__all__ = [
    "OTHER",
    "UNFINISHED",
    "Counted",
    "Finish",
    "InstanceCounts",
    "Measurer",
    "Tally",
    "declared_errors",
    "snapshot_status",
]
