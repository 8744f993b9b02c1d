"""Replay, verification, history and retention of the order saga on the real broker.

- ``sagas replay`` after the store is deleted rebuilds the changelog from the journal with
  snapshots byte-identical to the ones the live processor wrote, and a processor restarted
  afterwards adopts the new changelog;
- ``sagas replay --verify`` passes on the live journal and catches a deliberately changed fold;
- ``sagas history`` and ``sagas state --at`` read an instance back, step by step;
- the history of one instance among 100,000 is read from a few records, not the journal;
- finished instances leave the store after their retention time; their history stays.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from examples.order_fulfillment.messages import OrderPlaced, PaymentFailed
from examples.order_fulfillment.saga import OrderFulfillment
from sagas.cli import app
from stream_processors.core.decide import Input, decide
from stream_processors.core.instance import encode_snapshot
from stream_processors.core.journal import Kind
from stream_processors.engine.store import SnapshotStore
from stream_processors.kafka.config import producer_config
from stream_processors.kafka.topics import SagaTopics
from stream_processors.tools import history
from tests.conftest import KafkaCluster
from tests.integration.saga_harness import (
    FLAKY_TOPICS,
    TOPICS,
    CommittedReader,
    Jobs,
    SagaRun,
    key_prefix,
    sagas_cli,
)

pytestmark = pytest.mark.kafka
TARGET = "examples.order_fulfillment.saga:OrderFulfillment"


def _sagas(kafka: KafkaCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return sagas_cli(kafka.bootstrap, *args, timeout=300)


def _latest_snapshots(kafka: KafkaCluster, prefix: str) -> dict[str, bytes | None]:
    reader = CommittedReader(kafka.bootstrap, TOPICS.snapshots, keep=key_prefix(prefix))
    try:
        return {(m.key() or b"").decode(): m.value() for m in reader.read_to_end()}
    finally:
        reader.close()


def _finish_run(saga: SagaRun, count: int, seed: int, later: int = 0) -> list[str]:
    """Run ``count`` orders to their ends and stop; returns their ids (and plans ``later``)."""
    planned = saga.plan(count + later, seed=seed, failures=0.15)
    orders, saga.later = planned[:count], planned[count:]
    saga.start()
    saga.publish(orders)
    outcomes = saga.outcomes(orders)
    assert outcomes == {o.event.order_id: o.expected for o in orders}
    saga.processes.stop_all()
    return [o.event.order_id for o in orders]


def test_replay_rebuilds_byte_identical_snapshots_and_verify_agrees(
    saga: SagaRun, kafka: KafkaCluster
) -> None:
    ids = _finish_run(saga, 120, seed=11, later=20)
    live = _latest_snapshots(kafka, saga.prefix)
    assert set(live) == set(ids)

    verified = _sagas(kafka, "replay", TARGET, "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert " 0 differ" in verified.stdout

    shutil.rmtree(saga.state_dir)  # the store is gone; the journal is the truth
    rebuilt = _sagas(kafka, "replay", TARGET, "--state-dir", str(saga.store_dir))
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "rebuilt" in rebuilt.stdout

    again = _latest_snapshots(kafka, saga.prefix)
    assert again == live  # byte for byte, every instance of the run

    # The rebuilt local store has them too, and a processor runs on it.
    store = SnapshotStore.read_only(saga.store_dir / "slot-0" / "rocksdb")
    partitions = TOPICS.partitions
    try:
        for instance_id in ids[:20]:
            partition = history.partition_for(instance_id.encode(), partitions)
            assert store.get(partition, instance_id) == live[instance_id]
    finally:
        store.close()
    saga.start()
    saga.publish(saga.later)
    assert saga.outcomes(saga.later) == {o.event.order_id: o.expected for o in saga.later}


def test_verify_catches_a_changed_fold(saga: SagaRun, kafka: KafkaCluster) -> None:
    _finish_run(saga, 40, seed=13)
    result = _sagas(
        kafka, "replay", "tests.integration.tampered_orders:TamperedFulfillment", "--verify"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    differing = [line for line in result.stdout.splitlines() if line.strip().startswith("differs")]
    assert any(saga.prefix in line for line in differing)


def test_history_and_state_at_a_point(saga: SagaRun, kafka: KafkaCluster) -> None:
    orders = saga.plan(30, seed=14, failures=0.3)
    saga.start()
    saga.publish(orders)
    saga.outcomes(orders)
    compensated = next(o.event.order_id for o in orders if o.expected == "compensated")
    runner = CliRunner()
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "COLUMNS": "200"}
    state_dir = str(saga.store_dir)

    shown = runner.invoke(
        app, ["history", TARGET, compensated, "--json", "--state-dir", state_dir], env=env
    )
    assert shown.exit_code == 0, shown.output
    entries = json.loads(shown.stdout)
    assert [e["position"] for e in entries] == list(range(len(entries)))
    assert entries[0]["event"] == "SagaStarted" and entries[0]["record_type"] == "OrderPlaced"
    assert entries[-1]["event"] == "SagaCompensated"
    refund = next(e for e in entries if e["event"] == "CompensationSent")
    assert refund["record_type"] == "RefundPayment"
    assert refund["record"]["order_id"] == compensated

    paid_at = next(e["position"] for e in entries if e["event"] == "StepSucceeded")
    then = runner.invoke(
        app,
        ["state", TARGET, compensated, "--at", str(paid_at), "--state-dir", state_dir],
        env=env,
    )
    assert then.exit_code == 0, then.output
    as_of = json.loads(then.stdout)
    assert as_of["status"] == "running"
    assert as_of["steps"]["payment"]["status"] == "succeeded"
    assert as_of["data"]["payment_id"] is not None
    assert as_of["data"]["tracking_number"] is None

    now = json.loads(
        runner.invoke(app, ["state", TARGET, compensated, "--state-dir", state_dir], env=env).stdout
    )
    assert now["status"] == "compensated"

    table = runner.invoke(app, ["history", TARGET, compensated, "--state-dir", state_dir], env=env)
    assert table.exit_code == 0 and "CompensationSucceeded" in table.stdout


def test_one_instances_history_among_100000_reads_only_its_own_stretch(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    # A journal of 100,000 instances, written as the processor writes it (records stamped with
    # their entries' times), and a local store holding the snapshot of the one looked up.
    topics = SagaTopics.for_saga(OrderFulfillment.definition, 8)
    journal = kafka.create_topic(f"history-probe-{time.time_ns()}.journal", partitions=8)
    producer = Producer(producer_config(kafka.bootstrap, "history-probe", **{"linger.ms": 50}))
    start_ms = int(time.time() * 1000) - 200_000
    wanted = "probe-050000"
    wanted_decision = None
    for number in range(100_000):
        instance_id = f"probe-{number:06d}"
        event = OrderPlaced(
            order_id=instance_id, customer_id="c", amount_cents=100, card_token="tok", postcode="1"
        )
        at = start_ms + number * 2
        decision = decide(OrderFulfillment.definition, None, Input(event, event.encode()), at)
        entries = decision.entries
        if instance_id == wanted:  # it also finishes: its payment is declined
            assert decision.instance is not None
            declined = PaymentFailed(order_id=instance_id, reason="declined")
            command_id = decision.instance.steps["payment"].command_id
            decision = decide(
                OrderFulfillment.definition,
                decision.instance,
                Input(declined, declined.encode(), command_id),
                at + 1,
            )
            entries = entries + decision.entries
            wanted_decision = decision
        partition = history.partition_for(instance_id.encode(), 8)
        for entry in entries:
            producer.produce(
                journal,
                key=instance_id.encode(),
                value=entry.encode(),
                partition=partition,
                timestamp=entry.at_ms,
            )
        if number % 10_000 == 0:
            producer.flush(60)
    assert producer.flush(60) == 0
    assert wanted_decision is not None and wanted_decision.instance is not None
    slot = tmp_path / "state" / "slot-0" / "rocksdb"
    store = SnapshotStore(slot)
    store.write(
        [
            (
                history.partition_for(wanted.encode(), 8),
                wanted,
                encode_snapshot(wanted_decision.instance),
            )
        ],
        {},
    )
    store.close()
    assert topics.partitions == 8

    stats = history.ReadStats()
    began = time.perf_counter()
    located, indexed = history.instance_history(
        journal, wanted, tmp_path / "state", kafka.bootstrap, stats=stats
    )
    seconds = time.perf_counter() - began

    assert indexed
    assert [x.entry.seq for x in located] == list(range(wanted_decision.instance.seq))
    assert located[0].entry.kind == Kind.SAGA_STARTED.value
    assert located[-1].entry.kind == Kind.SAGA_FAILED.value
    # 200,000 journal records; the lookup reads the instance's own stretch of one partition.
    assert stats.records < 100, stats.records
    print(
        f"history of 1 instance among 100,000: {seconds * 1000:.0f} ms, "
        f"{stats.records} records read"
    )


def test_finished_instances_leave_the_store_after_retention_and_keep_their_history(
    jobs: Jobs, kafka: KafkaCluster
) -> None:
    # FlakyJobs has topics of its own: a two-second retention here expires nobody else's state.
    processor = jobs.processor("--retention-hours", str(2 / 3600))
    jobs.processes.workers()
    ids = [jobs.job(f"ok-{n}") for n in range(10)]
    for job in ids:
        jobs.wait_for(job, Kind.SAGA_COMPLETED)

    def latest() -> dict[str, bytes | None]:
        reader = CommittedReader(kafka.bootstrap, FLAKY_TOPICS.snapshots, keep=key_prefix(jobs.run))
        try:
            return {(m.key() or b"").decode(): m.value() for m in reader.read_to_end()}
        finally:
            reader.close()

    deadline = time.monotonic() + 60
    while any(v is not None for v in latest().values()) and time.monotonic() < deadline:
        time.sleep(1)
    snapshots = latest()
    assert set(snapshots) == set(ids)
    assert all(value is None for value in snapshots.values())  # tombstoned in the changelog
    assert processor.metric("sagalog_instances_expired_total") >= len(ids)
    jobs.processes.stop_all()

    store = SnapshotStore.read_only(jobs.store_dir / "slot-0" / "rocksdb")
    try:
        for job in ids:
            partition = history.partition_for(job.encode(), FLAKY_TOPICS.partitions)
            assert store.get(partition, job) is None
    finally:
        store.close()
    located = history.read_history(FLAKY_TOPICS.journal, ids[0], kafka.bootstrap)
    assert located[0].entry.kind == Kind.SAGA_STARTED.value
    assert located[-1].entry.kind == Kind.SAGA_COMPLETED.value


def test_replay_rebuilds_the_changelog_with_the_journals_partition_count(
    jobs: Jobs, kafka: KafkaCluster
) -> None:
    """FlakyJobs has 4 partitions: a rebuild keeps 4, and an explicit other count is refused."""
    jobs.processor()
    jobs.processes.workers()
    ids = [jobs.job(f"ok-{n}") for n in range(5)]
    for job in ids:
        jobs.wait_for(job, Kind.SAGA_COMPLETED)
    jobs.processes.stop_all()
    target = "tests.integration.flaky_jobs:FlakyJobs"
    store = ["--state-dir", str(jobs.store_dir)]

    refused = _sagas(kafka, "replay", target, "--partitions", "8", *store)
    assert refused.returncode == 1
    assert f"{FLAKY_TOPICS.journal} has 4 partitions, not 8" in refused.stderr

    rebuilt = _sagas(kafka, "replay", target, *store)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    metadata = kafka.admin.list_topics(FLAKY_TOPICS.snapshots, timeout=15)
    assert len(metadata.topics[FLAKY_TOPICS.snapshots].partitions) == 4
