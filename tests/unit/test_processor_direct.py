"""Source events decided without the inbox hop (``stream_processors.engine.direct``), in memory.

A source event whose instance hashes to the source partition's number is decided in the
transaction that reads it once that inbox partition is ours and drained: with the same outcome
as through the inbox, never ahead of a routed copy of an earlier event still unread there, and
under the same rebalance rules (committed at a revoke, aborted at a loss, read again).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from examples.order_fulfillment.messages import MakePayment, OrderPlaced
from stream_processors.codecs.records import decode_record
from stream_processors.codecs.signing import Keyring, SigningKey
from stream_processors.engine import direct, recovery, restore
from tests.unit.processor_rig import PAYMENTS, SOURCE, Rig, order

AWAY = KafkaError(KafkaError._TRANSPORT, "broker down", retriable=True)
ABORTABLE = KafkaError(KafkaError._STATE, "abortable", txn_requires_abort=True)
KEYS = Keyring((SigningKey("k1", b"k" * 32),))


def _run(rig: Rig, steps: int = 4) -> None:
    for _ in range(steps):
        rig.age_transaction()
        rig.steps()


def _contents(messages: list[Message]) -> list[tuple[bytes | None, bytes | None, object]]:
    return [(m.key(), m.value(), m.headers()) for m in messages]


def _amount(rig: Rig) -> int:
    [command] = rig.visible(PAYMENTS)
    payment = decode_record(command.value())
    assert isinstance(payment, MakePayment)
    return payment.amount_cents


def _placed(rig: Rig, amount: int) -> None:
    placed = OrderPlaced(
        order_id="o-1", customer_id="c", amount_cents=amount, card_token="t", postcode="1"
    )
    rig.broker.publish(SOURCE, b"o-1", placed.encode(), [("trace", b"carried")])


def _routed_then_owned(rig: Rig) -> int:
    """The order (amount 100) routed by the processor given its source partition alone, then
    its inbox partition assigned with it (read on the next step); returns their number."""
    p = rig.broker.partition_of(b"o-1")
    inbox, source = TopicPartition(rig.topics.inbox, p), TopicPartition(SOURCE, p)
    assert rig.processor.start()
    rig.consumer.assign_next([source])
    _placed(rig, 100)
    _run(rig, 2)
    assert [e.message.key() for e in rig.broker.logs[(rig.topics.inbox, p)]][-1:] == [b"o-1"]
    rig.consumer.revoke_next()
    rig.consumer.assign_next([inbox, source])
    return p


@pytest.mark.parametrize("signing", [None, KEYS], ids=["unsigned", "signed"])
def test_a_source_event_decided_directly_is_decided_as_its_routed_copy(
    tmp_path: Path, signing: Keyring | None
) -> None:
    routed = Rig(tmp_path / "routed", signing=signing)
    direct_ = Rig(tmp_path / "direct", signing=signing, direct=True)
    for rig in (routed, direct_):
        rig.start()
        _placed(rig, 100)
        rig.steps(4)  # the clock stands still: decided at the same time, one hop or two

    assert len(routed.visible(routed.topics.inbox)) == 1
    assert direct_.visible(direct_.topics.inbox) == []  # no hop
    assert direct_.processor._direct.ready == {0, 1}
    for topic in (PAYMENTS, routed.topics.journal, routed.topics.snapshots):
        outputs = _contents(direct_.visible(topic))
        assert outputs and outputs == _contents(routed.visible(topic)), topic
    assert direct_.stored() == routed.stored() is not None
    assert direct_.committed()[(SOURCE, direct_.broker.partition_of(b"o-1"))] == 1
    for rig in (routed, direct_):
        rig.processor.close()


def test_a_routed_copy_unread_at_the_switch_is_decided_before_a_later_direct_event(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, direct=True)
    # A worker's transaction open on the inbox partition hides what follows it from readers.
    worker = rig.broker.new_transaction()
    p = rig.broker.partition_of(b"o-1")
    rig.broker.append(rig.topics.inbox, p, worker, key=b"x", value=b"reply")
    _routed_then_owned(rig)  # the copy follows the open transaction
    _placed(rig, 200)  # the same order again: decided first, it would start the saga
    _run(rig, 4)
    assert rig.visible(PAYMENTS) == []  # the copy is unread: the source partition waits
    assert (SOURCE, p) in rig.consumer.paused and p not in rig.processor._direct.ready

    rig.broker.end(worker, commit=False)
    _run(rig, 4)
    assert _amount(rig) == 100  # the routed copy first; the later event is a duplicate start
    assert p in rig.processor._direct.ready and (SOURCE, p) not in rig.consumer.paused
    assert len(rig.visible(rig.topics.inbox)) == 1  # the second event was not routed
    assert rig.committed()[(SOURCE, p)] == 2
    rig.processor.close()


def test_copies_decided_in_the_open_transaction_hold_the_switch_until_they_commit(
    tmp_path: Path,
) -> None:
    """An abort would read them again, after a later event decided directly: so not ready."""
    rig = Rig(tmp_path, direct=True)
    p = _routed_then_owned(rig)
    rig.steps()  # assigned, restored: draining
    rig.processor.config.commit_interval_ms = rig.processor.config.idle_commit_ms = 60_000
    _placed(rig, 200)
    rig.steps(3)  # the copy read and decided, not committed
    assert rig.broker.open and rig.visible(PAYMENTS) == []
    assert p not in rig.processor._direct.ready and (SOURCE, p) in rig.consumer.paused

    rig.producer.fail("commit_transaction", ABORTABLE)
    rig.clock.now += 61
    rig.steps()  # the commit fails: aborted, read again
    rig.processor.config.commit_interval_ms = rig.processor.config.idle_commit_ms = 0
    _run(rig, 4)
    assert _amount(rig) == 100 and p in rig.processor._direct.ready
    rig.processor.close()


def test_a_revoke_mid_transaction_commits_what_was_decided_directly(tmp_path: Path) -> None:
    rig = Rig(tmp_path, commit_interval_ms=60_000, idle_commit_ms=60_000, direct=True)
    rig.start()
    rig.place()
    rig.steps()  # decided directly, the transaction still open
    assert rig.visible(PAYMENTS) == [] and rig.broker.open

    rig.consumer.revoke_next()
    rig.steps()
    assert len(rig.visible(PAYMENTS)) == 1 and rig.stored() is not None
    assert rig.committed() == {(SOURCE, rig.broker.partition_of(b"o-1")): 1}
    assert rig.processor._direct.ready == set()

    rig.processor.config.commit_interval_ms = rig.processor.config.idle_commit_ms = 0
    rig.consumer.assign_next(rig.all_partitions())
    _run(rig, 4)
    assert len(rig.visible(PAYMENTS)) == 1  # not decided again
    assert rig.visible(rig.topics.inbox) == []
    rig.processor.close()


def test_a_loss_mid_transaction_aborts_what_was_decided_directly_and_reads_it_again(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, commit_interval_ms=60_000, idle_commit_ms=60_000, direct=True)
    rig.start()
    rig.place()
    rig.steps()  # decided directly, the transaction still open

    rig.consumer.lose_next()
    rig.consumer.assign_next(rig.all_partitions())  # served in the same read: batch dropped
    rig.steps()
    assert rig.visible(PAYMENTS) == [] and rig.broker.open == {} and rig.stored() is None

    rig.processor.config.commit_interval_ms = rig.processor.config.idle_commit_ms = 0
    _run(rig, 4)
    assert len(rig.visible(PAYMENTS)) == 1 and rig.stored() is not None
    rig.processor.close()


def test_a_restore_interrupted_by_a_rebalance_holds_the_sources_until_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "CHUNK_SECONDS", 0.0)  # one read per turn
    monkeypatch.setattr(restore, "READ", 1_000)  # of 1,000 records: 2,500 take three turns
    rig = Rig(tmp_path, direct=True)
    p = rig.broker.partition_of(b"o-1")
    rig.snapshot_records(2_500, p)
    assert rig.processor.start()
    inbox, source = TopicPartition(rig.topics.inbox, p), TopicPartition(SOURCE, p)
    rig.consumer.assign_next([inbox, source])
    rig.steps()
    rig.place()
    rig.steps()  # restores one chunk; the source partition waits with the inbox
    assert {(rig.topics.inbox, p), (SOURCE, p)} <= rig.consumer.paused
    assert rig.visible(rig.topics.inbox) == [] and rig.committed() == {}

    rig.consumer.revoke_next()
    rig.steps()
    assert rig.consumer.paused == set() and rig.processor._direct.ready == set()

    rig.consumer.assign_next([inbox, source])
    _run(rig, 6)  # the rest of the restore, then the order, decided directly
    assert rig.processor.store.get(p, "r-2499") is not None
    assert len(rig.visible(PAYMENTS)) == 1 and rig.visible(rig.topics.inbox) == []
    assert rig.processor._direct.ready == {p}
    rig.processor.close()


def test_an_inbox_end_that_cannot_be_asked_for_leaves_its_sources_routing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(tmp_path, direct=True)
    assert rig.processor.start()
    restorer, recovering = rig.clients.restorers[-1], rig.processor._recovery
    ends = restorer.written_offsets

    def away_once_restored(partition: TopicPartition, timeout: float) -> tuple[int, int]:
        if recovering is not None and not recovering.pending:  # asked for the drain
            raise KafkaException(AWAY)
        return ends(partition, timeout)

    monkeypatch.setattr(restorer, "written_offsets", away_once_restored)
    rig.consumer.assign_next(rig.all_partitions())
    rig.steps(2)
    assert rig.processor._direct.ready == set() and rig.consumer.paused == set()
    rig.place()
    _run(rig, 4)
    assert len(rig.visible(rig.topics.inbox)) == 1 and len(rig.visible(PAYMENTS)) == 1
    rig.processor.close()


def test_a_drain_that_does_not_end_gives_up_to_routing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct, "DRAIN_PATIENCE", 0.0)
    rig = Rig(tmp_path, direct=True)
    p = rig.broker.partition_of(b"o-1")
    rig.broker.append(rig.topics.inbox, p, rig.broker.new_transaction(), key=b"x", value=b"y")
    rig.start()
    rig.steps()
    assert p not in rig.processor._direct.ready and (SOURCE, p) not in rig.consumer.paused
    rig.place()
    _run(rig, 2)
    assert [e.message.key() for e in rig.broker.logs[(rig.topics.inbox, p)][1:]] == [b"o-1"]
    rig.processor.close()


def test_an_event_whose_instance_hashes_elsewhere_is_routed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, direct=True)
    rig.start()
    elsewhere = 1 - rig.broker.partition_of(b"o-1")
    rig.broker.append(SOURCE, elsewhere, None, key=b"k", value=order("o-1").encode())
    _run(rig, 4)
    assert [m.partition() for m in rig.visible(rig.topics.inbox)] == [1 - elsewhere]
    assert len(rig.visible(PAYMENTS)) == 1
    rig.processor.close()


def test_a_batch_read_across_a_rebalance_is_dropped_with_its_direct_records(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, direct=True)
    rig.start()
    p = rig.broker.partition_of(b"o-1")
    other = [TopicPartition(t, 1 - p) for t in (rig.topics.inbox, SOURCE)]
    rig.place()
    rig.consumer.revoke_next(other)  # served in the read that hands out the order
    rig.steps()
    assert rig.visible(PAYMENTS) == [] and rig.broker.open == {}  # dropped, not decided
    assert rig.processor._direct.ready == {p}

    _run(rig, 3)  # read again from the committed offset: decided directly, once
    assert len(rig.visible(PAYMENTS)) == 1 and rig.visible(rig.topics.inbox) == []
    assert rig.committed()[(SOURCE, p)] == 1
    rig.processor.close()
