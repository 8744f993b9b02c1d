"""The order saga, run by real ``sagas`` processes on the real broker, keeps its promises.

Each test starts its own processor(s) and the payment and shipping workers as OS processes, with
its own state folder and its own order ids, publishes orders whose outcome is planned in advance
(``plan_orders``), and judges the engine only by what it committed to Kafka, read back with
``read_committed`` consumers:

- every saga ends in the state its order implies (completed, failed, compensated), and the journal
  records exactly the history ``decide`` prescribes for that outcome;
- a processor killed with SIGKILL mid-run and restarted loses nothing and repeats nothing: every
  saga finishes, each command id is on the command topics exactly once, and the command count is
  the one the outcomes imply (exactly once inside Kafka);
- a restart with the local store intact restores only the changelog tail; with the store deleted,
  the whole changelog, and the rebuilt store still knows every instance;
- two processors share a run; when one is killed, the other takes over its partitions and their
  state, and the run completes with no command sent twice;
- malformed input (not Avro, a type the saga does not take, a reply for an unknown instance) lands
  in the dead-letter topic with its reason and origin, while the run around it completes;
- two processors on one machine, each with a state folder of its own, share a run (neither
  takes the other's transactional id or static group membership).

All order-saga processes share the topics ``order_fulfillment.*`` and the consumer group
``sagalog.order_fulfillment``, so every test stops every process it started, and filters what it
reads by its own run's instance ids.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Message, Producer

from examples.order_fulfillment.messages import MakePayment, PaymentCompleted
from examples.order_fulfillment.scenario import (
    COMMANDS_PER_OUTCOME,
    EXPECTED_HISTORY,
    PlannedOrder,
)
from sagas.local import LocalProcess
from stream_processors.engine.routing import (
    DLQ_DETAIL,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
)
from stream_processors.kafka.config import producer_config
from tests.integration.saga_harness import (
    PARTITIONS,
    TOPICS,
    SagaRun,
    assigned_partitions,
    count_committed,
    header_of,
    key_prefix,
    log_text,
    restored_partitions,
    wait_for_log,
    wait_for_metric,
)

pytestmark = pytest.mark.kafka

ENDED = ("completed", "compensated", "failed")


def expected(orders: list[PlannedOrder]) -> dict[str, str]:
    return {o.event.order_id: o.expected for o in orders}


def ended_count(process: LocalProcess) -> float:
    return sum(process.metric("sagalog_sagas_total", event=e) for e in ENDED)


def wait_until_ended(process: LocalProcess, at_least: int, timeout: float = 90) -> float:
    """Poll tightly (the processor is fast) until it has ended ``at_least`` sagas."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ended = ended_count(process)
            if ended >= at_least:
                return ended
        except OSError:
            pass
        assert process.running, f"{process.log_path.name} exited"
        assert time.monotonic() < deadline, f"{process.log_path.name}: fewer than {at_least} ended"
        time.sleep(0.02)


def assert_histories(run: SagaRun, orders: list[PlannedOrder]) -> None:
    """Each instance's journal: the history its outcome implies, positions 0..n-1, nothing twice."""
    wrong = {}
    for order in orders:
        entries = run.journal.entries[order.event.order_id]
        history = [(e.kind, e.step) for e in entries]
        positions = [e.seq for e in entries]
        want = EXPECTED_HISTORY[order.expected]
        if history != want or positions != list(range(len(want))):
            wrong[order.event.order_id] = (order.expected, history, positions)
    assert not wrong, f"{len(wrong)} journals differ, e.g. {next(iter(wrong.items()))}"


def assert_commands_exactly_once(run: SagaRun, orders: list[PlannedOrder]) -> None:
    ids = run.committed_command_ids()
    repeated = {cid: n for cid, n in ids.items() if n > 1}
    assert not repeated, f"{len(repeated)} commands committed more than once: {list(repeated)[:5]}"
    implied = sum(COMMANDS_PER_OUTCOME[o.expected] for o in orders)
    assert sum(ids.values()) == implied, f"{sum(ids.values())} commands, outcomes imply {implied}"


# -- (a) ----------------------------------------------------------------------------------------


def test_each_order_ends_in_its_planned_state_with_the_journal_decide_prescribes(
    saga: SagaRun,
) -> None:
    orders = saga.plan(60, seed=1, failures=0.2)
    assert {o.expected for o in orders} == set(ENDED), "the plan must exercise all three outcomes"
    saga.start()
    saga.publish(orders)

    assert saga.outcomes(orders) == expected(orders)
    saga.journal.catch_up()
    assert_histories(saga, orders)
    assert_commands_exactly_once(saga, orders)

    # One compensated instance in full: the replies answer the commands sent, in order.
    instance = next(o.event.order_id for o in orders if o.expected == "compensated")
    entries = saga.journal.entries[instance]
    assert [(e.seq, e.kind) for e in entries] == [
        (0, "SagaStarted"),
        (1, "CommandSent"),
        (2, "InputAccepted"),
        (3, "StepSucceeded"),
        (4, "CommandSent"),
        (5, "InputAccepted"),
        (6, "StepFailed"),
        (7, "SagaCompensating"),
        (8, "CompensationSent"),
        (9, "InputAccepted"),
        (10, "CompensationSucceeded"),
        (11, "SagaCompensated"),
    ]
    pay, ship, refund = (
        f"order_fulfillment/{instance}/{step}/1"
        for step in ("payment", "shipping", "payment.compensation")
    )
    assert [e.command_id for e in entries] == [
        None,
        pay,
        pay,
        pay,
        ship,
        ship,
        ship,
        None,
        refund,
        refund,
        refund,
        None,
    ]
    assert entries[2].record is not None
    assert PaymentCompleted.decode(entries[2].record).order_id == instance
    assert entries[6].reason == "shipping: ShippingFailed"
    assert entries[11].reason == "shipping: ShippingFailed"


# -- (b) ----------------------------------------------------------------------------------------


def _publish_paced(saga: SagaRun, orders: list[PlannedOrder], per_second: int) -> None:
    """Publish ``orders`` at about ``per_second``, so a kill can land mid-run."""
    for start in range(0, len(orders), per_second // 10):
        began = time.monotonic()
        saga.publish(orders[start : start + per_second // 10])
        time.sleep(max(0.0, 0.1 - (time.monotonic() - began)))


def test_kill_9_mid_run_then_restart_finishes_every_saga_with_each_command_once(
    saga: SagaRun,
) -> None:
    orders = saga.plan(1500, seed=2)
    processor = saga.start()
    publishing = threading.Thread(target=_publish_paced, args=(saga, orders, 300), daemon=True)
    publishing.start()

    # Killed once it has decided the end of a few hundred sagas: some of those are committed,
    # the latest sit in its open transaction, and most sagas are still under way.
    wait_until_ended(processor, 300)
    processor.kill()
    saga.journal.catch_up()
    finished_at_kill = len(saga.journal.outcomes)
    assert finished_at_kill < len(orders), "every saga had finished before the kill"
    publishing.join(timeout=60)

    saga.start_processor()  # the same state folder: the same slot, store and transactional id
    assert saga.outcomes(orders) == expected(orders)
    saga.journal.catch_up()
    assert_histories(saga, orders)
    assert_commands_exactly_once(saga, orders)


# -- (c) ----------------------------------------------------------------------------------------


def _restored_after_start(saga: SagaRun, state_dir: Path) -> tuple[LocalProcess, float]:
    """Start a processor and wait until it restored all partitions; returns it and its count."""
    processor = saga.start_processor(state_dir)
    wait_for_log(
        processor,
        lambda text: restored_partitions(text) == set(range(TOPICS.partitions)),
        timeout=90,
        what="restore of every partition",
    )
    return processor, processor.metric("sagalog_restored_records_total")


def test_restart_restores_only_the_changelog_tail_and_a_wiped_store_everything(
    saga: SagaRun,
) -> None:
    orders = saga.plan(300, seed=3)
    first = saga.start()
    saga.publish(orders)
    assert saga.outcomes(orders) == expected(orders)
    assert first.stop() == 0  # SIGTERM: commits what is open, then exits cleanly

    restarted, tail = _restored_after_start(saga, saga.state_dir)
    changelog = count_committed(saga.kafka.bootstrap, TOPICS.snapshots)
    assert restarted.stop() == 0

    shutil.rmtree(saga.state_dir)
    rebuilt, full = _restored_after_start(saga, saga.state_dir)
    changelog_after = count_committed(saga.kafka.bootstrap, TOPICS.snapshots)

    # Other tests' snapshots are in the changelog too; only other writers could add to it here.
    assert len(orders) <= changelog <= full <= changelog_after, (changelog, full, changelog_after)
    assert tail < len(orders) and tail * 20 < full, f"restored {tail} of {full} on restart"

    # The rebuilt store knows every instance: their start events again are duplicates.
    saga.publish(orders)
    wait_for_metric(
        rebuilt,
        "sagalog_inputs_ignored_total",
        lambda n: n >= len(orders),
        timeout=60,
        reason="duplicate-start",
    )
    saga.journal.catch_up()
    assert_histories(saga, orders)  # and nothing was journaled for them a second time


# -- (d) ----------------------------------------------------------------------------------------


def test_a_killed_processors_partitions_and_state_move_to_the_survivor(saga: SagaRun) -> None:
    # The same base folder: the second process claims slot-1 (its own store, transactional id
    # and static group member id) because slot-0 is locked by the first.
    survivor = saga.start_processor()
    wait_for_log(survivor, lambda t: "(slot 0) started" in t, 60, "slot 0 claimed")
    victim = saga.start_processor()
    wait_for_log(victim, lambda t: "(slot 1) started" in t, 60, "slot 1 claimed")
    for process in (survivor, victim):
        wait_for_log(
            process,
            lambda t: bool(assigned_partitions(t)) and bool(assigned_partitions(t)[-1]),
            timeout=60,
            what="an assignment shared by both processors",
        )
    saga.processes.workers()
    orders = saga.plan(1500, seed=4)
    # Paced over about 5 s, so that the kill lands mid-run however fast the engine is.
    publishing = threading.Thread(target=_publish_paced, args=(saga, orders, 300), daemon=True)
    publishing.start()

    wait_until_ended(victim, 100)
    restored_before = survivor.metric("sagalog_restored_records_total")
    victim.kill()
    saga.journal.catch_up()
    assert len(saga.journal.outcomes) < len(orders), "the run ended before the kill"
    publishing.join(timeout=60)

    assert saga.outcomes(orders, timeout=150) == expected(orders)
    assert assigned_partitions(survivor.log_path.read_text())[-1] == set(range(TOPICS.partitions))
    assert survivor.metric("sagalog_restored_records_total") > restored_before
    saga.journal.catch_up()
    assert_histories(saga, orders)
    assert_commands_exactly_once(saga, orders)


# -- (e) ----------------------------------------------------------------------------------------


def test_malformed_records_go_to_the_dead_letter_topic_while_the_run_completes(
    saga: SagaRun,
) -> None:
    orders = saga.plan(200, seed=5)
    keys = {reason: f"dlq-{saga.run_id}-{reason}" for reason in ("not-avro", "unexpected-type")}
    keys["unknown-instance"] = f"order-{saga.run_id}-unknown"
    bad = {
        "not-avro": (TOPICS.sources[0], b"this is not Avro"),
        "unexpected-type": (
            TOPICS.sources[0],
            MakePayment(
                order_id=keys["unexpected-type"],
                customer_id="c",
                amount_cents=1,
                card_token="t",
            ).encode(),
        ),
        "unknown-instance": (
            TOPICS.inbox,
            PaymentCompleted(order_id=keys["unknown-instance"], payment_id="p").encode(),
        ),
    }
    produced: dict[str, tuple[str, int, int]] = {}

    def delivered(error: object, message: Message) -> None:
        assert error is None, error
        reason = next(r for r, k in keys.items() if k.encode() == message.key())
        produced[reason] = (message.topic() or "", message.partition() or 0, message.offset() or 0)

    processor = saga.start()
    saga.publish(orders[:100])
    producer = Producer(producer_config(saga.kafka.bootstrap, "saga-test-malformed"))
    for reason, (topic, value) in bad.items():
        producer.produce(topic, key=keys[reason].encode(), value=value, on_delivery=delivered)
    assert producer.flush(30) == 0
    saga.publish(orders[100:])

    assert saga.outcomes(orders) == expected(orders)

    # Everything dead-lettered since the test began, until all three have arrived.
    letters: list[Message] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        letters += saga.dlq.read_to_end()
        if {k.encode() for k in keys.values()} <= {m.key() for m in letters}:
            break
    dead: dict[str, list[Message]] = {}
    for message in letters:
        dead.setdefault((message.key() or b"").decode(errors="replace"), []).append(message)
    for reason, key in keys.items():
        assert key in dead, f"{reason} record not in {TOPICS.dlq}\n{saga.processes.log_tails()}"
        assert len(dead[key]) == 1, f"{reason} record dead-lettered {len(dead[key])} times"
        message = dead[key][0]
        topic, partition, offset = produced[reason]
        assert header_of(message, DLQ_REASON) == reason
        assert header_of(message, DLQ_DETAIL)
        assert header_of(message, DLQ_TOPIC) == topic
        assert header_of(message, DLQ_PARTITION) == str(partition)
        assert (header_of(message, DLQ_OFFSET) or "").isdigit()
        assert header_of(message, DLQ_OFFSET) == str(offset)
        assert message.value() == bad[reason][1]
        assert processor.metric("sagalog_dead_letters_total", reason=reason) >= 1

    # The unknown instance was only dead-lettered: no saga of that name was started; and no
    # record of the normal orders was dead-lettered.
    saga.journal.catch_up()
    assert keys["unknown-instance"] not in saga.journal.entries
    letters += saga.dlq.read_to_end()
    ours = [m.key() for m in letters if key_prefix(saga.prefix)(m)]
    assert ours == [keys["unknown-instance"].encode()]


# -- two processors, each with a state folder of its own -----------------------------------------


def test_two_processors_with_their_own_state_folders_on_one_machine_share_a_run(
    saga: SagaRun,
) -> None:
    """A state folder per process (``--state-dir`` or SAGALOG_STATE_DIR) is a normal deployment.

    Both processes must stay members of the group and share the work: neither may take the
    other's identity (transactional id, static group member id) and fence it.
    """
    first = saga.start_processor(saga.tmp_path / "state-first")
    wait_for_log(first, lambda t: len(restored_partitions(t)) == PARTITIONS, 90, "a restore")
    second = saga.start_processor(saga.tmp_path / "state-second")
    wait_for_log(second, lambda t: bool(restored_partitions(t)), 90, "a restore")
    saga.processes.workers()
    orders = saga.plan(300, seed=6)
    saga.publish(orders)

    assert saga.outcomes(orders) == expected(orders)
    for process in (first, second):
        tail = "\n".join(log_text(process).splitlines()[-8:])
        assert process.running, f"{process.log_path.name} exited:\n{tail}"
        assert assigned_partitions(log_text(process))[-1], f"{process.log_path.name}:\n{tail}"
        processed = process.metric("sagalog_inputs_processed_total")
        assert processed > 0, f"{process.log_path.name} processed no input:\n{tail}"


def test_a_routing_processor_killed_and_replaced_by_one_deciding_directly_loses_nothing(
    saga: SagaRun,
) -> None:
    """The upgrade to deciding source events without the inbox hop (docs/direct-sources.md),
    at its worst: the routed copies the old processor left unread are decided before any later
    event is decided directly, and nothing is decided twice."""
    orders = saga.plan(300, seed=7)
    processor = saga.processes.processor(saga.state_dir, args=("--no-direct-sources",))
    saga.processes.workers()
    publishing = threading.Thread(target=_publish_paced, args=(saga, orders, 200), daemon=True)
    publishing.start()
    wait_until_ended(processor, 50)
    processor.kill()
    publishing.join(timeout=60)

    replaced = saga.start_processor()
    assert saga.outcomes(orders) == expected(orders)
    saga.journal.catch_up()
    assert_histories(saga, orders)
    assert_commands_exactly_once(saga, orders)
    assert "decided directly from now on" in log_text(replaced)
    assert "decided directly" not in log_text(processor)
