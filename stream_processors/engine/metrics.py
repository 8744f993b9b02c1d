"""Prometheus metrics of processors and workers, and the ``/metrics`` endpoint that serves them.

Every metric is labelled with the saga (or worker) name so that one Prometheus can scrape many
processes. Names follow Prometheus conventions: ``_total`` counters, ``_seconds`` histograms.

Every label value is from a set fixed by the code or declared by the saga or worker, never from
what a record says: each new value is a new time series, and records come from anyone. Reasons
go through ``count_ignored`` and ``count_dead_letter``, which count a reason outside
``IGNORED_REASONS`` or ``DEAD_LETTER_REASONS`` as ``unknown``; step names are the saga's steps
and command names the worker's handlers (a command without one is dead-lettered first).

The seeds' metrics (instances by status now, step outcomes, failures by error type, saga times
and the SLA) are derived by ``stream_processors.core.measures`` from what the processor stages;
``SagaMetrics`` counts them when the transaction that staged them commits (an aborted one's
inputs are decided again: counted once), and keeps the instances by status of the partitions
this process owns, rebuilt from the store as each is restored. Gauges that depend on the
partitions held (instances by status, past the SLA, consumer lag) are collected at scrape time
(``_Collector``) from every live ``SagaMetrics``. docs/observability.md lists every metric.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from confluent_kafka import KafkaException
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stream_processors.codecs.avro import DecodeError, decode
from stream_processors.codecs.records import CATALOG
from stream_processors.core.decision import Decision
from stream_processors.core.instance import Instance
from stream_processors.core.measures import (
    FINISHED,
    OVER,
    WITHIN,
    Counted,
    InstanceCounts,
    Measurer,
    Tally,
    snapshot_status,
)
from stream_processors.core.model import OPERATOR_ACTIONS, SagaDefinition
from stream_processors.engine.store import FLOW_ROWS, SnapshotStore
from stream_processors.kafka.clients import Consumer

log = logging.getLogger(__name__)

#: The label value of anything outside a label's fixed set.
OTHER = "unknown"
#: Why ``decide`` ignores an input (``Decision.ignored``).
IGNORED_REASONS = frozenset(
    {
        "duplicate-start",
        "duplicate",
        "stale",
        "no-command-id",
        "unexpected-reply",
        "finished",
        "stale-timer",
        "parked",
        *(f"operator-{action}-not-applicable" for action in (*OPERATOR_ACTIONS, OTHER)),
        # An operator's request refused rather than dead-lettered (``decide``'s verdicts).
        "unknown-instance",
        "definition-mismatch",
        "unexpected-type",
        "not-applied",
    }
)
#: Why a processor or worker dead-letters a record: ``DecodeError`` reasons, ``decide``'s
#: rejections, the processor's and worker's own checks.
DEAD_LETTER_REASONS = frozenset(
    {
        # reading the record (stream_processors.codecs.avro, .records)
        "too-large",
        "no-value",
        "not-avro",
        "unknown-schema",
        "incompatible-schema",
        "corrupt-avro",
        "unbound-schema",
        "wrong-shape",
        "wrong-type",
        "upcast-failed",
        # the processor
        "no-key",
        "bad-key",
        "key-mismatch",
        "unexpected-type",
        "unknown-instance",
        "definition-mismatch",
        "outputs-too-large",
        "instance-id-too-long",
        "saga-code-failed",
        # the worker
        "no-handler",
        "no-reply-address",
        "handler-error",
        "reply-undeliverable",
        "bad-signature",
        "bad-reply-address",
    }
)

INPUTS = Counter("sagalog_inputs_processed_total", "Inbox records processed", ["saga"])
ROUTED = Counter(
    "sagalog_source_events_routed_total", "Source events routed to the inbox", ["saga"]
)
SAGAS = Counter(
    "sagalog_sagas_total",
    "Saga instances reaching a lifecycle point (started, completed, compensated, failed, "
    "parked, resumed, resolved)",
    ["saga", "event"],
)
IGNORED = Counter(
    "sagalog_inputs_ignored_total",
    "Inputs ignored (duplicate, stale or unmatched replies, operator actions that do not apply)",
    ["saga", "reason"],
)
DEAD_LETTERS = Counter(
    "sagalog_dead_letters_total", "Records sent to a dead-letter topic", ["owner", "reason"]
)
STEPS = Counter(
    "sagalog_steps_total",
    "Step attempts ended, by outcome: succeeded, failed (finally), retried (failed, tried again)",
    ["saga", "step", "outcome"],
)
STEP_FAILURES = Counter(
    "sagalog_step_failures_total",
    "Failed step attempts by error type (a failure reply's type, a declared error name, "
    "sagalog.Timeout; unknown for an undeclared one)",
    ["saga", "step", "error"],
)
SAGA_SECONDS = Histogram(
    "sagalog_saga_seconds",
    "From an instance's start to its end, by outcome (completed, compensated, failed)",
    ["saga", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400),
)
SLA = Counter(
    "sagalog_sla_total",
    "Instances finished within or over their saga's SLA, by outcome (sagas that declare one)",
    ["saga", "outcome", "verdict"],
)
STEP_SECONDS = Histogram(
    "sagalog_step_seconds",
    "From a step's command being sent to its attempt ending (reply, timeout)",
    ["saga", "step", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
COMMIT_SECONDS = Histogram(
    "sagalog_transaction_commit_seconds",
    "Time to commit one Kafka transaction (flush, offsets, commit)",
    ["saga"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
TRANSACTIONS = Counter("sagalog_transactions_total", "Kafka transactions", ["saga", "outcome"])
EXPIRED = Counter(
    "sagalog_instances_expired_total",
    "Finished instances whose snapshot left the store after the retention time",
    ["saga"],
)
RESTORED = Counter(
    "sagalog_restored_records_total", "Changelog records read while restoring", ["saga"]
)
RESTORE_REMAINING = Gauge(
    "sagalog_restore_remaining_records", "Changelog records left to restore", ["saga"]
)
COMMANDS_HANDLED = Counter(
    "sagalog_worker_commands_total",
    "Commands handled by a worker",
    ["worker", "command", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "sagalog_worker_handler_seconds", "Time in a worker's command handler", ["worker", "command"]
)


#: How often the consumer lag is read (from the client's cached watermarks: no request).
LAG_INTERVAL = 1.0
#: The longest one turn of the loop spends counting a restored partition's instances, and how
#: many snapshots it reads between looks at the clock.
SCAN_SECONDS = 0.02
SCAN_CHUNK = 256
_LIVE: weakref.WeakSet[SagaMetrics] = weakref.WeakSet()


class SagaMetrics:
    """One processor's seeds' metrics: what its decisions count, once committed, and its
    unfinished instances by status (``stream_processors.core.measures``).

    Called from the processor's loop: ``begin`` when a transaction opens, ``staged`` per
    decision staged, ``committed`` after a commit, ``restored`` with the partitions restored,
    ``follow`` every turn (partitions no longer held, and the consumer lag). Scrapes read it
    from the HTTP server's thread, under ``_lock``.
    """

    def __init__(self, definition: SagaDefinition) -> None:
        self.saga = definition.name
        self.measurer = Measurer(definition)
        self.counts = InstanceCounts(definition.sla_ms)
        self.lag: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._tally = Tally()
        # Each instance staged in the open transaction as it was committed before it.
        self._before: dict[tuple[int, str], Instance | None] = {}
        self._lag_read = 0.0
        # The partitions being counted, each with the last key their scan read.
        self._scans: dict[int, str] = {}
        self._store: SnapshotStore | None = None
        # Labelled children looked up once each: ``labels()`` costs more than the increment.
        self._children: dict[tuple[Any, ...], Any] = {}
        _LIVE.add(self)

    def begin(self) -> None:
        """A transaction opens: what an aborted one staged is forgotten."""
        self._tally.clear()
        self._before.clear()

    def staged(self, slot: tuple[int, str], before: Instance | None, decision: Decision) -> None:
        """A decision is staged for ``slot`` (its instance as the transaction saw it before)."""
        assert decision.instance is not None
        if slot not in self._before:  # the first in this transaction: the committed state
            self._before[slot] = before
        self.measurer.measure(before, decision.entries, decision.instance, self._tally)

    def committed(self, staged: Mapping[tuple[int, str], Instance | None]) -> None:
        """The transaction that staged ``staged`` (None: expired) committed: count it."""
        self._count(self._tally)
        counted = self.measurer.counted
        with self._lock:
            for slot, after in staged.items():
                if self._unscanned(slot):
                    continue  # the scan will read it as it is now
                # Not staged by a decision (expired): it was finished, so never counted.
                before = self._before.get(slot)
                self.counts.moved(slot[0], counted(before), counted(after))
        self.begin()

    def restored(self, partitions: Iterable[int], store: SnapshotStore) -> None:
        """``partitions`` are restored: count them afresh (another process may have moved them
        since this one last held them), scanning the store a chunk per turn (``follow``)."""
        self._store = store
        for partition in partitions:
            with self._lock:
                self.counts.rebuild(partition)
            self._scans[partition] = ""  # nothing scanned yet

    def follow(self, owned: set[int], consumer: Consumer) -> None:
        """Drop the counts of partitions no longer ``owned``, scan the store for
        ``SCAN_SECONDS`` at most, and read the consumer lag every ``LAG_INTERVAL``."""
        gone = self.counts.partitions - owned
        if gone:
            with self._lock:
                for partition in gone:
                    self.counts.forget(partition)
                    self._scans.pop(partition, None)
        if self._scans:
            self._scan(time.monotonic() + SCAN_SECONDS)
        if time.monotonic() - self._lag_read >= LAG_INTERVAL:
            self._lag_read = time.monotonic()
            self.lag = consumer_lag(consumer)

    @property
    def scanning(self) -> bool:
        """Whether a partition's count is still being read from the store."""
        return bool(self._scans)

    def _scan(self, deadline: float) -> None:
        """Count restored partitions' snapshots until ``deadline``, a chunk at least.

        Each chunk is read as the store is when it is read (``SnapshotStore.instances_after``);
        so that the scan plus the moves committed meanwhile is the count, a move counts only
        once the scan has passed its instance (``_unscanned``): the scan reads the others as
        they are after it."""
        assert self._store is not None
        for partition, cursor in list(self._scans.items()):
            while True:
                rows = self._store.instances_after(partition, cursor, SCAN_CHUNK)
                counted = list(self._rows(rows))
                with self._lock:
                    self.counts.include(partition, counted)
                if len(rows) < SCAN_CHUNK:  # the end of the partition
                    del self._scans[partition]
                    break
                cursor = self._scans[partition] = rows[-1][0]
                if time.monotonic() >= deadline:
                    return

    def _unscanned(self, slot: tuple[int, str]) -> bool:
        """Whether ``slot``'s partition is being counted and the scan has not read it yet."""
        cursor = self._scans.get(slot[0])
        return cursor is not None and slot[1] > cursor  # str order is the store's (UTF-8)

    def _rows(self, snapshots: Iterable[tuple[str, bytes]]) -> Iterator[Counted]:
        """Each snapshot's (status, start) if unfinished, else None: one per snapshot, so that
        a chunk is a bounded amount of work. Finished ones are told by their status alone."""
        label = self.measurer.snapshot_label
        for instance_id, value in snapshots:
            # A flow-control row (engine.flow) is no instance; finished ones count for nothing.
            if instance_id.startswith(FLOW_ROWS) or snapshot_status(value) in FINISHED:
                yield None
                continue
            try:
                _, datum = decode(CATALOG, value)
            except DecodeError as error:  # never stop the loop for a gauge
                log.warning("instance %s: snapshot unreadable for metrics: %s", instance_id, error)
                yield None
                continue
            yield label(datum)

    def close(self) -> None:
        """Before the store closes: no scan reads it any more."""
        self._scans.clear()
        self._store = None
        _LIVE.discard(self)

    def _count(self, tally: Tally) -> None:
        for event, times in tally.lifecycle.items():
            self._child(SAGAS, "event", event).inc(times)
        for (node, outcome), times in tally.steps.items():
            self._child(STEPS, "step", node, "outcome", outcome).inc(times)
        for node, outcome, seconds in tally.step_seconds:
            self._child(STEP_SECONDS, "step", node, "outcome", outcome).observe(seconds)
        for (node, error), times in tally.failures.items():
            self._child(STEP_FAILURES, "step", node, "error", error).inc(times)
        for finish in tally.finishes:
            self._child(SAGA_SECONDS, "outcome", finish.outcome).observe(finish.seconds)
            if finish.within_sla is not None:
                verdict = WITHIN if finish.within_sla else OVER
                self._child(SLA, "outcome", finish.outcome, "verdict", verdict).inc()

    def _child(self, family: Any, *names_and_values: str) -> Any:
        """``family``'s child labelled with this saga and (name, value, ...), looked up once."""
        key = (family, *names_and_values)
        child = self._children.get(key)
        if child is None:
            pairs = zip(names_and_values[::2], names_and_values[1::2], strict=True)
            child = self._children[key] = family.labels(saga=self.saga, **dict(pairs))
        return child

    def snapshot(self, now_ms: int) -> tuple[dict[str, int], int | None]:
        """Instances by status, and past the SLA, now (for a scrape)."""
        with self._lock:
            return self.counts.by_status(), self.counts.past_sla(now_ms)


def consumer_lag(consumer: Consumer) -> dict[tuple[str, int], int]:
    """Records between the consumer's position and each assigned partition's high watermark,
    from the client's cached watermarks (no request); {} if the client cannot say."""
    lag: dict[tuple[str, int], int] = {}
    try:
        assignment = consumer.assignment()
        for tp in consumer.position(assignment):
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and high >= 0:
                lag[(tp.topic, tp.partition)] = max(0, high - tp.offset)
    except (KafkaException, RuntimeError) as error:  # closed, or fenced: read again next time
        log.debug("consumer lag not read: %s", error)
    return lag


class _Collector(Collector):
    """The gauges of what the live processors hold, read at scrape time."""

    def collect(self) -> Iterator[Metric]:
        instances = GaugeMetricFamily(
            "sagalog_instances",
            "Unfinished instances now, by status (running, waiting, compensating, parked), in "
            "the partitions this process owns",
            labels=["saga", "status"],
        )
        past_sla = GaugeMetricFamily(
            "sagalog_instances_past_sla",
            "Unfinished instances started longer ago than their saga's SLA, now",
            labels=["saga"],
        )
        lag = GaugeMetricFamily(
            "sagalog_consumer_lag_records",
            "Records between the processor's position and the partition's high watermark",
            labels=["saga", "topic", "partition"],
        )
        now_ms = int(time.time() * 1000)
        by_saga: dict[str, dict[str, int]] = {}
        past: dict[str, int] = {}
        lags: dict[tuple[str, str, str], int] = {}
        for live in list(_LIVE):  # several processors of one saga in a process: summed
            statuses, over = live.snapshot(now_ms)
            totals = by_saga.setdefault(live.saga, dict.fromkeys(statuses, 0))
            for status, count in statuses.items():
                totals[status] += count
            if over is not None:
                past[live.saga] = past.get(live.saga, 0) + over
            for (topic, partition), records in dict(live.lag).items():
                where = (live.saga, topic, str(partition))
                lags[where] = lags.get(where, 0) + records
        for saga, totals in by_saga.items():
            for status, count in totals.items():
                instances.add_metric([saga, status], count)
        for saga, count in past.items():
            past_sla.add_metric([saga], count)
        for where, records in lags.items():
            lag.add_metric(list(where), records)
        yield from (instances, past_sla, lag)


REGISTRY.register(_Collector())


# -- flow control (stream_processors.engine.flow): labelled by the saga's declared limits only --
LIMIT_QUEUED = Gauge(
    "sagalog_limit_queued",
    "Commands waiting for their limit, in this process's partitions",
    ["saga", "limit"],
)
LIMIT_QUEUED_SECONDS = Histogram(
    "sagalog_limit_queued_seconds",
    "Time a command waited for its limit before it was sent",
    ["saga", "limit"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)
LIMIT_SENT = Counter(
    "sagalog_limit_sent_total",
    "Commands sent under a limit (rate(...) gives commands per second per limit)",
    ["saga", "limit"],
)


def bounded(value: str, allowed: frozenset[str]) -> str:
    """``value`` if it is one of ``allowed``, else ``OTHER``: a label value from a fixed set."""
    return value if value in allowed else OTHER


def count_ignored(saga: str, reason: str) -> None:
    IGNORED.labels(saga=saga, reason=bounded(reason, IGNORED_REASONS)).inc()


def count_dead_letter(owner: str, reason: str) -> None:
    DEAD_LETTERS.labels(owner=owner, reason=bounded(reason, DEAD_LETTER_REASONS)).inc()


def serve(port: int, addr: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` on ``port`` (0 picks a free port); returns the port. -1 disables.

    A port already taken (a second worker on the same machine, say) falls back to a free one
    with a warning rather than stopping the process: metrics must never cost availability.
    """
    if port < 0:
        return -1
    try:
        server, _thread = start_http_server(port, addr=addr)
    except OSError as error:
        if port == 0:
            raise
        log.warning("metrics port %s unavailable (%s); serving on a free port instead", port, error)
        server, _thread = start_http_server(0, addr=addr)
    return int(server.server_port)
