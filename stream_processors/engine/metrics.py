"""Prometheus metrics of processors and workers, and the ``/metrics`` endpoint that serves them.

Every metric is labelled with the saga (or worker) name so that one Prometheus can scrape many
processes. Names follow Prometheus conventions: ``_total`` counters, ``_seconds`` histograms.

Every label value is from a set fixed by the code or declared by the saga or worker, never from
what a record says: each new value is a new time series, and records come from anyone. Reasons
go through ``count_ignored`` and ``count_dead_letter``, which count a reason outside
``IGNORED_REASONS`` or ``DEAD_LETTER_REASONS`` as ``unknown``; step names are the saga's steps
and command names the worker's handlers (a command without one is dead-lettered first).
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from stream_processors.core.model import OPERATOR_ACTIONS

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
    "Saga instances reaching a lifecycle point (started, completed, compensated, failed, parked)",
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
STEP_SECONDS = Histogram(
    "sagalog_step_seconds",
    "From a step's command being sent to its reply being accepted",
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
