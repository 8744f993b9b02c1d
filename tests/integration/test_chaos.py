"""The short chaos run, inside ``make test``: ~1,000 sagas, 3 processor kills, worker kills, a
broker restart and one bad input of each kind; nothing lost, nothing duplicated. Then the
broker-kill phase: the broker alone SIGKILLed, started 20 s later, and every process committing
output again within 30 s of it being ready (``chaos.broker_kill``).

``make chaos`` runs the full form (10,000 sagas, at least 10 processor kills); see ``chaos/``.
The broker is restarted (and killed) only when this project started it
(``tools/kafka/broker.sh``); under CI=true it always is, and a broker that cannot be restarted
fails the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chaos.run import ROOT, ChaosConfig, run_chaos
from tests.conftest import KafkaCluster

pytestmark = pytest.mark.kafka


def _restartable(bootstrap: str) -> bool:
    port = bootstrap.rsplit(":", 1)[1]
    return (ROOT / ".kafka" / port / "kind").exists()


def test_a_short_chaos_run_loses_and_duplicates_nothing(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    restart = _restartable(kafka.bootstrap)
    if os.environ.get("CI") == "true":
        assert restart, "under CI the test broker must be one this project started"
    config = ChaosConfig(
        sagas=1_000,
        publish_seconds=12,
        processor_kills=3,
        worker_kills=1,
        restart_broker=restart,
        kill_broker=restart,
        bad_inputs=1,
        bootstrap=kafka.bootstrap,
        work_dir=tmp_path / "chaos",
        timeout=240,
    )
    report = run_chaos(config)

    assert report.processor_kills == 3
    assert report.worker_kills == 2
    assert report.broker_restarts == (1 if restart else 0)
    assert (report.broker_kill is not None) == restart
    assert report.bad_inputs == 9  # 8 kinds dead-lettered, and one duplicate reply
    failed = [f"{i.name}: {i.detail}" for i in report.invariants if not i.holds]
    assert not failed, failed
    assert (report.lost, report.duplicated) == (0, 0)
    # The broker-kill phase places orders of its own while the broker is away and back.
    phase_orders = 0 if report.broker_kill is None else report.broker_kill.published
    assert report.broker_kill is None or phase_orders > 0
    assert sum(report.outcomes.values()) == 1_000 + phase_orders
