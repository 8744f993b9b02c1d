"""A processor lives through a broker crash: SIGKILL of the broker, nothing else killed around it.

The processor is busy (a burst of orders just published) when the broker is killed with SIGKILL;
during the ~20 s outage a second processor is started (it must wait for the cluster, saying so,
rather than exit) and is sent SIGTERM (it must exit within 10 s). Once the broker is back, new
orders must be taken up (routed, started, their payment command sent) within 30 s of the broker
being ready; the survivor must then stop within 10 s of SIGTERM. The broker is restarted only
when this project started it (``tools/kafka/broker.sh``); under CI=true it must be.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from chaos.run import ROOT
from examples.order_fulfillment.scenario import PlannedOrder, plan_orders
from sagas.local import LocalProcess
from stream_processors.core.journal import Kind
from tests.conftest import KafkaCluster
from tests.integration.saga_harness import JournalFollower, SagaRun, wait_for_log

pytestmark = pytest.mark.kafka

OUTAGE_SECONDS = 20
#: After the broker is ready, the processor takes up new inputs within this.
RESUME_WITHIN = 30
#: SIGTERM is honoured within this, at any moment.
STOP_WITHIN = 10


def _broker_state(bootstrap: str) -> Path:
    return ROOT / ".kafka" / bootstrap.rsplit(":", 1)[1]


def _kill_broker(bootstrap: str) -> None:
    pid = int((_broker_state(bootstrap) / "broker.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"broker pid {pid} still alive after SIGKILL")


def _start_broker(bootstrap: str) -> None:
    port = bootstrap.rsplit(":", 1)[1]
    subprocess.run(
        [str(ROOT / "tools" / "kafka" / "broker.sh"), "start"],
        env=os.environ
        | {
            "KAFKA_PORT": port,
            "KAFKA_BOOTSTRAP_SERVERS": "",
            "PYTHON": str(ROOT / ".venv/bin/python"),
        },
        check=True,
        timeout=180,
    )


def _stop_seconds(process: LocalProcess) -> float:
    assert process.popen is not None and process.running
    began = time.monotonic()
    process.popen.send_signal(signal.SIGTERM)
    try:
        process.popen.wait(STOP_WITHIN + 20)
    except subprocess.TimeoutExpired:
        process.kill()
    return time.monotonic() - began


def _plan(run: SagaRun, batch: str, count: int) -> list[PlannedOrder]:
    """Orders of this run (their ids start with its prefix), named apart by ``batch``."""
    return plan_orders(count, 0.1, 0.1, seed=len(batch), run_id=f"{run.run_id}-{batch}")


def _started(follower: JournalFollower, orders: set[str], timeout: float) -> float:
    """Seconds until every one of ``orders`` has its command sent; fails after ``timeout``."""
    began = time.monotonic()
    while True:
        follower.catch_up()
        sent = {
            instance
            for instance, entries in follower.entries.items()
            if any(e.kind == Kind.COMMAND_SENT.value for e in entries)
        }
        if orders <= sent:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{len(orders - sent)} of {len(orders)} orders not taken up")
        time.sleep(0.2)


def test_a_processor_resumes_within_30_s_of_the_broker_coming_back(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    if not (_broker_state(kafka.bootstrap) / "broker.pid").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("under CI the test broker must be one this project started")
        pytest.skip("the broker was not started by tools/kafka/broker.sh: cannot kill it")
    run = SagaRun(kafka, tmp_path)
    try:
        survivor = run.start_processor()
        warm = _plan(run, "warm", 20)
        run.publish(warm)
        _started(run.journal, {o.event.order_id for o in warm}, timeout=90)
        burst = _plan(run, "burst", 1_000)
        run.publish(burst)  # busy when the broker dies

        _kill_broker(kafka.bootstrap)
        killed = time.monotonic()
        newcomer = run.processes.processor(tmp_path / "newcomer", name="newcomer")
        wait_for_log(newcomer, lambda t: "waits for the Kafka cluster" in t, 20, "a wait")
        newcomer_stop = _stop_seconds(newcomer)
        time.sleep(max(0.0, killed + OUTAGE_SECONDS - time.monotonic()))
        _start_broker(kafka.bootstrap)
        ready = time.monotonic()

        follower = JournalFollower(kafka.bootstrap, run.prefix)
        later = _plan(run, "later", 20)
        run.publish(later)
        resumed = (
            time.monotonic()
            - ready
            + _started(follower, {o.event.order_id for o in later}, timeout=RESUME_WITHIN + 30)
        )
        # Nothing left behind for the next test's processor: the burst is taken up too.
        _started(run.journal, {o.event.order_id for o in burst}, timeout=120)
        follower.close()
        survivor_stop = _stop_seconds(survivor)
        print(
            f"outage {ready - killed:.1f} s; newcomer stopped in {newcomer_stop:.1f} s; "
            f"new orders taken up {resumed:.1f} s after the broker was ready; "
            f"survivor stopped in {survivor_stop:.1f} s"
        )
        assert newcomer_stop <= STOP_WITHIN
        assert resumed <= RESUME_WITHIN, run.processes.log_tails(40)
        assert survivor_stop <= STOP_WITHIN
    finally:
        run.close()
