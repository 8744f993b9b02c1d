"""The processor's seeds' metrics on in-memory Kafka: counted once per committed decision, and
instances by status right after a restart (same store, or a new one restored from the changelog)
and after a rebalance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, TopicPartition
from prometheus_client import REGISTRY

from examples.order_fulfillment.messages import PaymentFailed
from examples.order_fulfillment.saga import OrderFulfillment
from sagas.testing import SagaTest
from stream_processors.core.instance import Status, encode_snapshot
from stream_processors.core.measures import snapshot_status
from stream_processors.engine import metrics
from stream_processors.engine.routing import COMMAND_ID, header, reply_headers
from tests.unit.processor_rig import PAYMENTS, SAGA, Rig, order

ABORTABLE = KafkaError(KafkaError._STATE, "abortable", txn_requires_abort=True)
ORDERS = [f"o-{n}" for n in range(6)]


def running(rig: Rig) -> dict[str, int]:
    """This processor's unfinished instances by status (others may live in the test process)."""
    statuses, _ = rig.processor._measures.snapshot(0)
    return {status: count for status, count in statuses.items() if count}


def started_total() -> float:
    labels = {"saga": SAGA.name, "event": "started"}
    return REGISTRY.get_sample_value("sagalog_sagas_total", labels) or 0.0


def turn(rig: Rig, steps: int = 3) -> None:
    for _ in range(steps):
        rig.age_transaction()
        rig.steps()


def refuse_payment(rig: Rig, order_id: str) -> None:
    """The payments worker's business failure for ``order_id``: the instance fails."""
    command = next(m for m in rig.visible(PAYMENTS) if m.key() == order_id.encode())
    command_id = header(command.headers(), COMMAND_ID)
    assert command_id is not None
    failed = PaymentFailed(order_id=order_id, reason="card").encode()
    rig.broker.publish(rig.topics.inbox, order_id.encode(), failed, reply_headers(command_id))


def test_instances_by_status_follow_commits_restarts_and_rebalances(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "a")
    rig.start()
    for order_id in ORDERS:
        rig.place(order_id)
    turn(rig)
    assert running(rig) == {"running": 6}
    refuse_payment(rig, "o-0")
    turn(rig)
    assert running(rig) == {"running": 5}
    rig.processor.close()
    assert running(rig) == {"running": 5}  # what it held when it stopped

    again = Rig(tmp_path / "a", broker=rig.broker)  # restarted on its own store
    again.start()
    assert running(again) == {"running": 5}
    again.processor.close()
    fresh = Rig(tmp_path / "b", broker=rig.broker)  # a new machine: restored from the changelog
    fresh.start()
    assert running(fresh) == {"running": 5}

    inbox = [TopicPartition(fresh.topics.inbox, p) for p in (0, 1)]
    on_one = sum(1 for o in ORDERS[1:] if fresh.broker.partition_of(o.encode()) == 1)
    fresh.consumer.revoke_next(inbox)
    fresh.steps(2)  # revoked in the first turn, forgotten at the start of the next
    assert running(fresh) == {}
    fresh.consumer.assign_next([inbox[1]])
    fresh.steps(2)
    assert running(fresh) == {"running": on_one}
    fresh.processor.close()


def test_a_decision_is_counted_once_though_its_transaction_aborted(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.start()
    rig.place()
    turn(rig, steps=1)  # routed into the inbox
    before = started_total()
    rig.producer.fail("commit_transaction", ABORTABLE)
    turn(rig, steps=1)  # decided, staged, aborted: read again
    assert started_total() == before
    assert running(rig) == {}
    turn(rig, steps=2)
    assert started_total() == before + 1
    assert running(rig) == {"running": 1}
    rig.processor.close()


def test_a_restored_partition_is_counted_a_chunk_per_turn_with_moves_in_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(tmp_path / "a")
    rig.start()
    for order_id in ORDERS:
        rig.place(order_id)
    turn(rig)
    rig.processor.close()

    monkeypatch.setattr(metrics, "SCAN_SECONDS", 0.0)  # one chunk of two snapshots per turn
    monkeypatch.setattr(metrics, "SCAN_CHUNK", 2)
    again = Rig(tmp_path / "a", broker=rig.broker)
    again.start()  # restored; the first chunks counted
    assert again.processor._measures.scanning
    # Two finish while their partitions are being counted: o-0 already read (the first of
    # its partition), o-5 not yet (the last).
    refuse_payment(again, "o-0")
    refuse_payment(again, "o-5")
    turn(again, steps=1)
    assert again.processor._measures.scanning
    turn(again, steps=6)
    assert not again.processor._measures.scanning
    assert running(again) == {"running": 4}
    again.processor.close()


def test_a_snapshot_status_is_read_off_its_first_fields() -> None:
    test = SagaTest(OrderFulfillment)
    test.start(order())
    for status in Status:
        for instance_id in ("o", "é" * 200):
            instance = dataclasses.replace(
                test.instance, status=status, instance_id=instance_id, saga_version=70_000
            )
            assert snapshot_status(encode_snapshot(instance)) == status.value
    assert snapshot_status(order().encode()) is None  # not a snapshot
    value = encode_snapshot(test.instance)
    assert snapshot_status(value[:12]) is None  # cut short
