"""The engine: inputs per second of one processor working through a pre-filled inbox.

The inbox gets the same N OrderPlaced records (same keys, same bytes) as the limit pipe's
source. Each one starts a saga: the processor decodes it, decides, journals, sends MakePayment
and stages the instance's snapshot, committing one transaction per 100 ms with the offsets.
The rate is read from the processor group's committed offsets, the same way as the pipe's, and
checked against the processor's own ``sagalog_inputs_processed_total``.
"""

from __future__ import annotations

from bench.common import (
    PROCESSOR_GROUP,
    TOPICS,
    fill,
    follow_drain,
    fresh_saga_topics,
    order_records,
    processor,
    topic_size,
)


def measure(records: int, timeout: float = 600) -> dict[str, float]:
    fresh_saga_topics()
    fill(TOPICS.inbox, order_records(records, "engine"))
    process = processor().start()
    try:
        drain = follow_drain(
            PROCESSOR_GROUP, TOPICS.inbox, records, timeout, lambda: process.running
        )
        counted = process.metric("sagalog_inputs_processed_total")
    finally:
        process.stop()
    return {
        "records": records,
        "measured_records": drain.records,
        "seconds": round(drain.seconds, 3),
        "inputs_per_second": round(drain.per_second, 1),
        "inputs_processed_metric": counted,
        "journal_records": topic_size(TOPICS.journal),
        "command_records": topic_size("payments.commands"),
        "snapshot_records": topic_size(TOPICS.snapshots),
    }
