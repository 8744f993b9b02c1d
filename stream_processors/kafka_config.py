"""librdkafka configuration for every client Sagalog creates, in one place.

Every producer uses the same partitioner (``murmur2_random``, the Java client's), so a key lands
on the same partition whoever writes it: a worker's reply reaches the inbox partition of its
instance, and services written in Java agree. Every consumer reads ``read_committed``: records of
aborted or still-open transactions are never seen.
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def bootstrap_servers(explicit: str | None = None) -> str:
    return explicit or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP


def common(bootstrap: str | None, client_id: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap_servers(bootstrap), "client.id": client_id}


def producer_config(
    bootstrap: str | None, client_id: str, transactional_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    """An idempotent producer (acks=all); transactional when ``transactional_id`` is given."""
    config = common(bootstrap, client_id) | {
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    if transactional_id is not None:
        # Short enough that a crashed process's open transaction cannot stall read_committed
        # readers for long, should a restart not take the same transactional id.
        config |= {"transactional.id": transactional_id, "transaction.timeout.ms": 10_000}
    return config | extra


def consumer_config(
    bootstrap: str | None, client_id: str, group_id: str | None, **extra: Any
) -> dict[str, Any]:
    """A read_committed consumer that never commits on its own."""
    config = common(bootstrap, client_id) | {
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
    }
    if group_id is not None:
        config["group.id"] = group_id
    return config | extra
