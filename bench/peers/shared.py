"""What both peers share: the order saga's steps as plain functions over the example services.

Each peer runs the same business logic as Sagalog's workers: the handlers of
``examples.order_fulfillment.services`` (payments declines ``tok_declined``, shipping refuses
postcode ``00000``), with the same deterministic idempotency keys. A peer's measured run is a
``measure.Results`` like Sagalog's, so the figures are computed by the same code.
"""

from __future__ import annotations

import json
import time
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from sagas.local import Outcome
from stream_processors.kafka.config import consumer_config


def read_outcomes(
    topic: str, start: dict[int, int], wanted: set[str], timeout: float
) -> dict[str, Outcome]:
    """Outcomes a peer wrote to ``topic`` as JSON {"order_id", "state", "at_ms"}, from ``start``."""
    consumer = Consumer(consumer_config(None, "sagalog-bench", f"bench-{time.time_ns()}"))
    found: dict[str, Outcome] = {}
    try:
        metadata = consumer.list_topics(topic, timeout=15).topics[topic]
        consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in metadata.partitions])
        deadline = time.monotonic() + timeout
        while wanted - found.keys() and time.monotonic() < deadline:
            for message in consumer.consume(2000, timeout=0.2):
                if message.error() or message.value() is None:
                    continue
                datum: dict[str, Any] = json.loads(message.value() or b"{}")
                order_id = datum["order_id"]
                if order_id in wanted and order_id not in found:
                    found[order_id] = Outcome(order_id, datum["state"], int(datum["at_ms"]))
    finally:
        consumer.close()
    return found
