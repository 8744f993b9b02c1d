"""The processor's transactions, driven through its Kafka interface on in-memory clients.

Whatever ends a transaction (a commit, an abort, a revoke, the partitions being lost, a fenced
producer) must leave Kafka and the local store agreeing: what the transaction staged is either
all visible and in the store, or none of it is, and its inputs are read again.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Message

from stream_processors.engine import transaction
from stream_processors.engine.processor import ProcessorConfig
from stream_processors.engine.routing import COMMAND_ID, header
from stream_processors.kafka import transactions
from tests.unit.processor_rig import PAYMENTS, SOURCE, Rig

ABORTABLE = KafkaError(KafkaError._STATE, "abortable", txn_requires_abort=True)
FENCED = KafkaError(KafkaError._FENCED, "producer fenced", fatal=True)
AWAY = KafkaError(KafkaError._TIMED_OUT, "coordinator away", retriable=True)


def _run_order(rig: Rig, steps: int = 4, place: bool = True) -> None:
    """Place an order (unless it was) and step until its payment command is out."""
    if place:
        rig.place()
    for _ in range(steps):
        rig.age_transaction()
        rig.steps()


def test_a_commit_that_fails_aborts_and_reads_the_inputs_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.start()
    rig.place()
    rig.producer.fail("commit_transaction", ABORTABLE)
    rig.steps()  # routes the order into the inbox; the commit fails

    assert rig.visible(rig.topics.inbox) == []
    assert rig.committed() == {}
    assert rig.producer.calls["abort_transaction"] == 1

    _run_order(rig, steps=3, place=False)  # read again: routed, decided, committed once
    assert len(rig.visible(rig.topics.inbox)) == 1
    assert len(rig.visible(PAYMENTS)) == 1
    assert rig.stored() is not None
    rig.processor.close()


def test_an_aborted_transaction_leaves_the_store_untouched(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.start()
    rig.place()
    rig.age_transaction()
    rig.steps()  # routed and committed
    rig.producer.fail("commit_transaction", ABORTABLE)
    rig.age_transaction()
    rig.steps()  # decided, but the commit fails

    assert rig.stored() is None
    assert rig.visible(PAYMENTS) == [] and rig.visible(rig.topics.journal) == []
    rig.age_transaction()
    rig.steps()
    assert rig.stored() is not None and len(rig.visible(PAYMENTS)) == 1
    rig.processor.close()


def test_a_revoke_mid_transaction_commits_first(tmp_path: Path) -> None:
    rig = Rig(tmp_path, commit_interval_ms=60_000, idle_commit_ms=60_000)
    rig.start()
    rig.place()
    rig.steps()  # routed, the transaction still open
    assert rig.visible(rig.topics.inbox) == []

    rig.consumer.revoke_next()
    rig.steps()

    assert len(rig.visible(rig.topics.inbox)) == 1
    assert rig.committed() == {("orders.events", rig.broker.partition_of(b"o-1")): 1}
    assert rig.consumer.assignment() == []
    rig.processor.close()


def test_lost_partitions_abort_and_their_timers_fire_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.start()
    _run_order(rig)
    [command] = rig.visible(PAYMENTS)
    rig.fail_command(command)  # a transient failure: the saga retries after a pause (a timer)
    rig.age_transaction()
    rig.steps()
    assert rig.visible(PAYMENTS) == [command]

    rig.processor.config.commit_interval_ms = rig.processor.config.idle_commit_ms = 60_000
    rig.clock.now += 60  # the retry timer is due
    rig.steps()  # fired, its retry command staged in the open transaction
    rig.consumer.lose_next()
    rig.steps()
    assert rig.visible(PAYMENTS) == [command]  # the aborted retry is nowhere
    assert rig.producer.calls["abort_transaction"] == 1 and rig.broker.open == {}

    rig.processor.config.commit_interval_ms, rig.processor.config.idle_commit_ms = 100, 0
    rig.consumer.assign_next(rig.all_partitions())
    for _ in range(3):
        rig.clock.now += 1
        rig.age_transaction()
        rig.steps()
    retries = rig.visible(PAYMENTS)[1:]
    assert len(retries) == 1, "the timer of the aborted transaction fired again, once"
    rig.processor.close()


def test_a_fenced_producer_is_recreated_and_the_inputs_read_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.start()
    rig.place()
    first = rig.producer
    first.fail("commit_transaction", FENCED)
    rig.steps()

    assert len(rig.clients.producers) == 2 and rig.producer.epoch > first.epoch
    assert rig.visible(rig.topics.inbox) == []
    _run_order(rig, steps=6, place=False)  # the store caught up again, then the order is read again
    assert len(rig.visible(rig.topics.inbox)) == 1 and len(rig.visible(PAYMENTS)) == 1
    rig.processor.close()


def test_a_producer_fenced_again_and_again_by_a_live_twin_stops_the_process(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    rig.start()
    with pytest.raises(RuntimeError, match="another live process"):
        for _ in range(transaction.RECREATE_LIMIT + 1):
            rig.place()
            rig.producer.fail("commit_transaction", FENCED)
            rig.steps(3)
    rig.processor.close()


def test_a_commit_waiting_for_the_broker_gives_way_to_stop(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.start()
    rig.place()
    rig.producer.fail("commit_transaction", AWAY, times=10_000)
    threading.Timer(0.3, rig.processor.stop).start()
    began = time.monotonic()
    rig.steps()
    assert time.monotonic() - began < transactions.STEP + 1
    rig.processor.close()  # does not commit what the interrupted commit left
    assert rig.visible(rig.topics.inbox) == []


def test_a_commit_that_cannot_complete_in_time_is_aborted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transactions, "COMMIT_PATIENCE", 0.3)
    rig = Rig(tmp_path)
    rig.start()
    rig.place()
    rig.producer.fail("commit_transaction", AWAY, times=10_000)
    rig.steps()
    assert rig.producer.calls["abort_transaction"] == 1
    assert rig.visible(rig.topics.inbox) == []
    rig.processor.close()


def test_a_fenced_consumer_is_replaced_and_the_group_joined_again(tmp_path: Path) -> None:
    """A static member whose session expired while the broker was away is fenced by its own
    rejoin: a fatal consumer error; a new consumer with the same instance id carries on."""
    rig = Rig(tmp_path)
    rig.start()
    first = rig.consumer
    first.fail("consume", KafkaError(KafkaError._FATAL, "static consumer fenced", fatal=True))
    rig.steps()
    assert first.closed and rig.consumer is not first

    rig.consumer.assign_next(rig.all_partitions())
    _run_order(rig)
    assert len(rig.visible(PAYMENTS)) == 1
    rig.processor.close()


def test_a_fenced_consumer_s_error_event_read_with_its_revoke_is_not_dropped(
    tmp_path: Path,
) -> None:
    """librdkafka hands the fenced static member's fatal error out once, as an event, in the
    read that serves the revoke of its session timeout: the batch is dropped (a rebalance
    during the read), but not the error, or the processor would wait on a dead consumer."""
    rig = Rig(tmp_path)
    rig.start()
    first = rig.consumer
    first.revoke_next()
    first.error_next(KafkaError(KafkaError._FATAL, "static consumer fenced"))
    rig.steps()
    assert first.closed and rig.consumer is not first
    rig.processor.close()


def test_a_consumer_fenced_mid_transaction_aborts_it_and_the_inputs_are_read_again(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, commit_interval_ms=60_000, idle_commit_ms=60_000)
    rig.start()
    rig.place()
    rig.steps()  # routed, the transaction still open
    rig.consumer.fail("consume", KafkaError(KafkaError._FATAL, "fenced", fatal=True))
    rig.steps()
    assert rig.visible(rig.topics.inbox) == [] and rig.committed() == {}

    rig.processor.config.commit_interval_ms, rig.processor.config.idle_commit_ms = 100, 0
    rig.consumer.assign_next(rig.all_partitions())
    _run_order(rig, place=False)
    assert len(rig.visible(rig.topics.inbox)) == 1 and len(rig.visible(PAYMENTS)) == 1
    rig.processor.close()


def test_a_consumer_that_cannot_read_its_committed_offsets_to_rewind_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a broker SIGKILL, a consumer's offset fetches were seen timing out for minutes
    while a new consumer of the group read them at once: the rewind gives the consumer up after
    ``REWIND_PATIENCE``, and a new one carries on from the committed offsets."""
    monkeypatch.setattr(transactions, "REWIND_PATIENCE", 0.3)
    rig = Rig(tmp_path)
    rig.start()
    rig.place()
    first = rig.consumer
    rig.producer.fail("commit_transaction", ABORTABLE)
    first.fail("committed", AWAY, times=10_000)
    rig.steps()  # the commit fails; the abort's rewind cannot read the offsets
    assert first.calls["committed"] >= 2
    assert first.closed and rig.consumer is not first
    assert rig.visible(rig.topics.inbox) == [] and rig.committed() == {}

    rig.consumer.assign_next(rig.all_partitions())
    _run_order(rig, place=False)
    assert len(rig.visible(rig.topics.inbox)) == 1 and len(rig.visible(PAYMENTS)) == 1
    rig.processor.close()


def test_a_caught_up_processor_commits_at_once_by_default(tmp_path: Path) -> None:
    rig = Rig(tmp_path, idle_commit_ms=ProcessorConfig.idle_commit_ms)
    rig.start()
    rig.place()
    rig.steps()  # the clock has not moved: the batch came back short, so it commits now

    assert len(rig.visible(rig.topics.inbox)) == 1
    assert rig.committed() != {}
    rig.processor.close()


def test_full_batches_keep_the_transaction_open_until_caught_up(tmp_path: Path) -> None:
    rig = Rig(tmp_path, commit_interval_ms=60_000, idle_commit_ms=ProcessorConfig.idle_commit_ms)
    rig.start()
    rig.processor.config.batch_size = 1
    rig.place("o-1")
    rig.place("o-2")
    rig.steps(2)  # one input each: full batches, within the interval: not committed yet

    assert rig.visible(rig.topics.inbox) == [] and rig.committed() == {}
    rig.steps()  # nothing left: caught up, both routed in one commit
    assert len(rig.visible(rig.topics.inbox)) == 2
    assert rig.producer.calls["commit_transaction"] == 1
    rig.processor.close()


def _revoke_after_next_inbox_poll(rig: Rig) -> None:
    """As librdkafka may: ``poll`` hands out an inbox record, and the ``consume`` that follows
    it in the same ``take`` serves a revoke of every partition (the record's included)."""
    consumer = rig.consumer
    original = consumer.poll

    def poll(timeout: float = -1) -> Message | None:
        message = original(timeout)
        if message is not None and message.topic() == rig.topics.inbox:
            consumer.poll = original  # type: ignore[method-assign]
            consumer.revoke_next()
        return message

    consumer.poll = poll  # type: ignore[method-assign]


def test_an_input_of_a_partition_revoked_while_it_was_taken_is_left_to_its_new_owner(
    tmp_path: Path,
) -> None:
    """The unknown-instance replies of issue 15: a processor decided on a start event of a
    partition revoked in the same ``take`` and committed the instance's snapshot and offset
    into a partition another processor had begun restoring. Here the other one restores first
    and starts the instance too (its command sent twice); on the real broker, whose offset
    fetch waits for the pending transactional commit, it can instead restore without the
    snapshot and start after the input: the instance is unknown to it, its replies
    dead-lettered as ``unknown-instance``."""
    a = Rig(tmp_path / "a")
    a.start()
    a.place()
    a.steps()  # routed into the inbox and committed
    a.processor.config.commit_interval_ms = a.processor.config.idle_commit_ms = 60_000
    _revoke_after_next_inbox_poll(a)
    a.steps()  # the start event taken, then every partition revoked
    assert a.consumer.assignment() == []
    b = Rig(tmp_path / "b", broker=a.broker)
    b.start()  # the new owner: restored, it reads the inbox from the committed offset
    b.steps(2)
    a.processor.config.commit_interval_ms = a.processor.config.idle_commit_ms = 0
    a.steps()  # whatever the first one still had open commits now
    commands = [header(m.headers(), COMMAND_ID) for m in b.visible(PAYMENTS)]
    assert len(commands) == 1, commands
    inbox = b.broker.partition_of(b"o-1")
    assert b.committed()[(b.topics.inbox, inbox)] == 1
    assert b.stored() is not None and a.stored() is None
    a.processor.close()
    b.processor.close()


def test_an_inbox_input_read_before_its_partition_is_restored_is_read_again_after(
    tmp_path: Path,
) -> None:
    """A defence: an inbox partition is paused from its assignment until restored, so no input
    of it should come before; if one does, it is not decided and its partition is sought back
    to it, so that it is decided once the partition is restored (nothing lost, nothing twice)."""
    rig = Rig(tmp_path)
    rig.start()
    rig.place()
    rig.steps()  # routed into the inbox and committed
    inbox = rig.broker.partition_of(b"o-1")
    owned: set[int] = rig.processor._owned  # the restored partitions, as the loop keeps them
    owned.discard(inbox)
    rig.steps()
    assert rig.visible(PAYMENTS) == [] and rig.stored() is None
    owned.add(inbox)
    rig.steps(2)
    commands = [header(m.headers(), COMMAND_ID) for m in rig.visible(PAYMENTS)]
    assert len(commands) == 1, commands
    assert rig.committed()[(rig.topics.inbox, inbox)] == 1
    rig.processor.close()


def test_inputs_read_after_a_loss_and_a_new_assignment_in_one_take_are_all_decided(
    tmp_path: Path,
) -> None:
    """The chaos run's 287 sagas without an end: the group lost every partition (a session
    timeout while the broker was down) and gave them back inside one ``take``; the source
    records read after the new assignment, from the committed offsets, were dropped as of
    partitions revoked, and the consumer's position had passed them: never decided."""
    rig = Rig(tmp_path)
    rig.start()
    rig.steps()
    for order_id in ("o-1", "o-2", "o-3", "o-4"):
        rig.place(order_id)
    consumer, original = rig.consumer, rig.consumer.poll

    def poll(timeout: float = -1) -> Message | None:
        message = original(timeout)
        if message is not None and message.topic() == SOURCE:
            consumer.poll = original  # type: ignore[method-assign]
            assigned = rig.all_partitions()
            consumer.lose_next(assigned)
            consumer.assign_next(assigned)
        return message

    consumer.poll = poll  # type: ignore[method-assign]
    rig.steps(6)
    commands = [header(m.headers(), COMMAND_ID) for m in rig.visible(PAYMENTS)]
    assert len(commands) == 4 == len(set(commands)), commands
    assert all(rig.stored(order_id) is not None for order_id in ("o-1", "o-2", "o-3", "o-4"))
    rig.processor.close()


def test_the_store_is_current_to_each_partition_s_last_snapshot(tmp_path: Path) -> None:
    """Only each partition's last snapshot of a transaction reports its offset (``_commit``):
    with several instances per partition in one transaction, the store still records the
    offset after the last one."""
    rig = Rig(tmp_path)
    rig.start()
    for n in range(40):
        rig.place(f"o-{n}")
    _run_order(rig, place=False)
    snapshots = rig.visible(rig.topics.snapshots)
    last: dict[int, int] = {}
    for record in snapshots:
        last[record.partition() or 0] = max(
            last.get(record.partition() or 0, -1), record.offset() or 0
        )
    assert len(snapshots) == 40 and len(last) > 1
    assert any(sum(1 for r in snapshots if r.partition() == p) > 1 for p in last)
    for partition, offset in last.items():
        assert rig.processor.store.changelog_offset(partition) == offset + 1
