"""Restore speed in-process: fill a fresh snapshots topic, then time a bare consumer and the
restore (``PartitionRestore`` over every partition) on it, one after the other.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python tools/restore_rate.py [--snapshots 100000]

The bare consumer is the ceiling a restore can reach with this client on this machine; the
ratio between the two is what the restore's own work costs (docs/benchmarks.md).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated

import typer
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bench.recovery import fill_snapshots
from stream_processors.engine import restore
from stream_processors.engine.restore import PartitionRestore
from stream_processors.engine.store import SnapshotStore
from stream_processors.kafka.config import common, consumer_config

PARTITIONS = 8


def _fill(topic: str, count: int) -> None:
    admin = AdminClient(common(None, "restore-rate"))
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result()
    fill_snapshots(count, topic)


def _consumer(bootstrap: str | None) -> Consumer:
    settings = {"group.id": "restore-rate", "fetch.wait.max.ms": 5}  # as the restorer
    return Consumer(consumer_config(bootstrap, "restore-rate", None, **settings))


def _bare(bootstrap: str | None, topic: str) -> int:
    """Read every partition as the restore does (its batch size and wait), applying nothing."""
    consumer, read = _consumer(bootstrap), 0
    for partition in range(PARTITIONS):
        where = TopicPartition(topic, partition)
        low, high = consumer.get_watermark_offsets(where, cached=False)
        consumer.assign([TopicPartition(topic, partition, low)])
        position = low
        while position < high:
            wanted = min(restore.READ, max(1, high - position))
            read += len(consumer.consume(wanted, restore.READ_WAIT))
            position = consumer.position([where])[0].offset
        consumer.unassign()
    consumer.close()
    return read


def _restore(bootstrap: str | None, topic: str) -> int:
    store, consumer, read = SnapshotStore(Path(tempfile.mkdtemp())), _consumer(bootstrap), 0
    for partition in range(PARTITIONS):
        partial = PartitionRestore(consumer, store, topic, partition)
        while not partial.step(time.monotonic() + 0.2):
            pass
        read += partial.read
    store.close()
    consumer.close()
    return read


def main(snapshots: Annotated[int, typer.Option()] = 100_000, rounds: int = 3) -> None:
    topic = f"restore-rate-{uuid.uuid4().hex[:8]}.snapshots"
    _fill(topic, snapshots)
    for _ in range(rounds):
        for name, run in (("bare consumer", _bare), ("restore", _restore)):
            began = time.perf_counter()
            read = run(None, topic)
            typer.echo(f"{name}: {read / (time.perf_counter() - began):,.0f} records/s")


if __name__ == "__main__":
    typer.run(main)
