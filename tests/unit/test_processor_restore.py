"""Restore as a phase of the processor's loop, driven through its Kafka interface in memory.

Assigned inbox partitions stay paused while the local store catches up with the snapshots
changelog, a bounded chunk per turn of the loop; a rebalance in the middle abandons the restore
cleanly, and the next assignment finishes it from where the store got to.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from stream_processors.engine import recovery, restore
from tests.unit.processor_rig import PAYMENTS, Rig

RECORDS = 2_500  # more than one chunk: these tests make one read at most 1,000 records


def test_a_restore_interrupted_by_a_rebalance_is_abandoned_and_finished_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "CHUNK_SECONDS", 0.0)  # one read per turn
    monkeypatch.setattr(restore, "READ", 1_000)
    rig = Rig(tmp_path)
    partition = rig.broker.partition_of(b"o-1")
    rig.snapshot_records(RECORDS, partition)
    assert rig.processor.start()
    inbox = TopicPartition(rig.topics.inbox, partition)
    rig.consumer.assign_next([inbox, TopicPartition("orders.events", partition)])
    rig.steps()  # assigned in this turn's consume: paused and queued
    rig.place()
    rig.steps()  # restores one chunk; the order is routed (sources are not paused)
    assert (rig.topics.inbox, partition) in rig.consumer.paused
    assert rig.processor.store.changelog_offset(partition) is None  # nothing written yet
    assert rig.visible(PAYMENTS) == []  # the inbox waits for its restore

    rig.consumer.revoke_next()
    rig.steps()
    restorer = rig.clients.restorers[-1]
    assert restorer.assignment() == [] and rig.consumer.assignment() == []

    rig.consumer.assign_next([inbox])
    rig.steps(4)  # the rest of the restore, then the routed order
    assert rig.processor.store.get(partition, f"r-{RECORDS - 1}") is not None
    # Current past the order's own snapshot (offset RECORDS) and its commit marker.
    assert rig.processor.store.changelog_offset(partition) == RECORDS + 1
    assert rig.stored("o-1") is not None
    assert (rig.topics.inbox, partition) not in rig.consumer.paused
    assert len(rig.visible(PAYMENTS)) == 1
    rig.processor.close()


def test_a_partition_lost_while_restoring_is_dropped_from_the_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "CHUNK_SECONDS", 0.0)
    monkeypatch.setattr(restore, "READ", 1_000)
    rig = Rig(tmp_path)
    rig.snapshot_records(RECORDS, 0)
    assert rig.processor.start()
    rig.consumer.assign_next([TopicPartition(rig.topics.inbox, 0)])
    rig.steps(2)
    rig.consumer.lose_next()
    rig.steps()
    for _ in range(3):  # nothing left to restore: the restorer stays idle
        rig.steps()
    assert rig.clients.restorers[-1].assignment() == []
    assert rig.processor.store.get(0, f"r-{RECORDS - 1}") is None
    rig.processor.close()


def test_a_restore_waits_for_the_previous_owners_last_transaction_to_complete(
    tmp_path: Path,
) -> None:
    """The previous owner committed its last transaction as it gave the partition up, and the
    broker has not written the markers yet: a read_committed reader's end (the last stable
    offset) is before that transaction's snapshots. The restore reads on to what was written,
    and the partition is resumed only once they are in the store."""
    rig = Rig(tmp_path)
    last = rig.broker.new_transaction()
    rig.snapshot_records(10, 0, transaction=last)
    assert rig.processor.start()
    rig.consumer.assign_next([TopicPartition(rig.topics.inbox, 0)])
    rig.steps(3)
    assert (rig.topics.inbox, 0) in rig.consumer.paused  # waiting for the transaction's outcome
    rig.broker.end(last, commit=True)
    rig.steps(2)
    assert (rig.topics.inbox, 0) not in rig.consumer.paused
    assert all(rig.processor.store.get(0, f"r-{n}") is not None for n in range(10))
    rig.processor.close()


def test_restoring_waits_for_an_unreachable_broker_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    from confluent_kafka import KafkaError

    rig = Rig(tmp_path)
    assert rig.processor.start()
    restorer = rig.clients.restorers[-1]
    away = KafkaError(KafkaError._TRANSPORT, "broker down", retriable=True)
    restorer.fail("written_offsets", away, times=3)
    rig.consumer.assign_next([TopicPartition(rig.topics.inbox, 0)])
    rig.steps(3)
    assert (rig.topics.inbox, 0) in rig.consumer.paused  # still recovering
    rig.steps(2)
    assert (rig.topics.inbox, 0) not in rig.consumer.paused
    rig.processor.close()
