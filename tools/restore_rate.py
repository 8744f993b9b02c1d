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
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bench.recovery import fill_snapshots
from stream_processors.engine.restore import PartitionRestore
from stream_processors.engine.store import SnapshotStore
from stream_processors.kafka.config import common, consumer_config

PARTITIONS = 8


def _fill(topic: str, count: int) -> None:
    admin = AdminClient(common(None, "restore-rate"))
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result()
    fill_snapshots(count, topic)


def _consumer(bootstrap: str | None) -> Consumer:
    settings = {"group.id": "restore-rate", "fetch.wait.max.ms": 20}
    return Consumer(consumer_config(bootstrap, "restore-rate", None, **settings))


def _bare(bootstrap: str | None, topic: str) -> int:
    consumer, read = _consumer(bootstrap), 0
    for partition in range(PARTITIONS):
        high = consumer.get_watermark_offsets(TopicPartition(topic, partition))[1]
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        while consumer.position([TopicPartition(topic, partition)])[0].offset < high:
            read += len(consumer.consume(1000, 0.05))
        consumer.unassign()
    consumer.close()
    return read


def _restore(bootstrap: str | None, topic: str) -> int:
    store, consumer, read = SnapshotStore(Path(tempfile.mkdtemp())), _consumer(bootstrap), 0
    for partition in range(PARTITIONS):
        restore = PartitionRestore(consumer, store, topic, partition)
        while not restore.step(time.monotonic() + 0.2):
            pass
        read += restore.read
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
