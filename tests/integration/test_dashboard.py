"""Every query of the Grafana dashboard, evaluated by a real Prometheus scraping a real run.

A processor and both workers of the order saga run on the broker; orders are placed (some
declined, some unshippable), one twice (an ignored duplicate start) and one record that is not
Avro (a dead letter). Prometheus (the system's package: ``make prometheus``) scrapes the three
processes every second; then each panel's query must return data, and the completed count
Prometheus sees must be the number of ``SagaCompleted`` entries the journal got meanwhile (and
the SLA verdicts and failures by step, the journal's finished instances and failed attempts).
Then, with shipping stopped and a few orders waiting on it, a restarted processor counts the
same instances by status from its store.
Under CI=true a missing Prometheus fails the test.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from examples.order_fulfillment.scenario import plan_orders
from sagas.local import LocalProcess, free_port
from stream_processors.core.journal import JournalEntry, Kind
from stream_processors.kafka.config import producer_config
from tests.dashboard import load, queries
from tests.integration.saga_harness import (
    PARTITIONS,
    TOPICS,
    CommittedReader,
    SagaRun,
    publish_orders,
    restored_partitions,
    wait_for_log,
    wait_for_metric,
)

pytestmark = pytest.mark.kafka

SCRAPE_SECONDS = 1
FAILED_ATTEMPTS = (Kind.ATTEMPT_FAILED, Kind.STEP_FAILED)
BATCHES = 3


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        message = "no prometheus binary: run `make prometheus` (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


class Prometheus:
    """A Prometheus server of the system's package, scraping ``targets``, on a free port."""

    def __init__(self, binary: str, folder: Path, targets: list[int]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s"},
            "scrape_configs": [
                {
                    "job_name": "sagalog",
                    "scrape_interval": f"{SCRAPE_SECONDS}s",
                    "static_configs": [{"targets": [f"127.0.0.1:{port}" for port in targets]}],
                }
            ],
        }
        (folder / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.port = free_port()
        self.log = folder / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def wait_until(self, what: str, check: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():
                    return
            except OSError:
                pass  # not serving yet
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: {what} after {timeout:.0f} s")
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    binary = prometheus_binary()
    started: list[Prometheus] = []

    def start(processes: list[LocalProcess]) -> Prometheus:
        server = Prometheus(binary, tmp_path / "prometheus", [p.metrics_port for p in processes])
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_every_panel_of_the_dashboard_shows_data_from_a_real_run(
    saga: SagaRun, prometheus_for: Any
) -> None:
    orders = saga.plan(30, seed=13, failures=0.25)
    assert {o.expected for o in orders} == {"completed", "compensated", "failed"}
    journal = CommittedReader(saga.kafka.bootstrap, TOPICS.journal, from_end=True)
    processor = saga.start()
    prometheus = prometheus_for(saga.processes.started)
    up = "every target up"
    prometheus.wait_until(up, lambda: _targets_up(prometheus) == len(saga.processes.started), 60)

    # In batches a few scrapes apart: each counter then rises while scraped (a rate needs two
    # samples of a series, and a series is only exported from its first increment).
    producer = Producer(producer_config(saga.kafka.bootstrap, "dashboard-test"))
    for batch in range(BATCHES):
        placed = orders[batch::BATCHES]
        saga.publish(placed)
        publish_orders(saga.kafka.bootstrap, placed[:1])  # the same start again: ignored
        key = f"dlq-{saga.run_id}-{batch}".encode()
        producer.produce(TOPICS.sources[0], key=key, value=b"not Avro")  # a dead letter
        assert producer.flush(30) == 0
        saga.outcomes(placed)
        time.sleep(2 * SCRAPE_SECONDS)

    # What the journal got meanwhile (this run's, and any instance a former test left behind):
    # the processor's counters must say the same.
    entries = [JournalEntry.decode(m.value() or b"") for m in journal.read_to_end()]
    journal.close()
    kinds = Counter(entry.kind for entry in entries)
    completed = kinds[Kind.SAGA_COMPLETED]
    assert completed >= sum(o.expected == "completed" for o in orders)
    finished = completed + kinds[Kind.SAGA_COMPENSATED] + kinds[Kind.SAGA_FAILED]
    failed_attempts = Counter(
        entry.step for entry in entries if entry.kind in FAILED_ATTEMPTS and entry.command_id
    )
    journaled = (completed, finished, dict(failed_attempts))
    prometheus.wait_until(
        f"{journaled} (completed, SLA verdicts, failed attempts by step)",
        lambda: _counted(prometheus) == journaled,
        30,
    )
    assert processor.metric("sagalog_sagas_total", event="completed") == completed
    time.sleep(2 * SCRAPE_SECONDS)  # rates over the last scrapes: every series has two samples

    empty = {}
    for query in queries(load()):
        result = prometheus.query(query.expr)
        values = [float(series["value"][1]) for series in result]
        if not any(math.isfinite(value) for value in values):
            empty[f"{query.panel} {query.ref}"] = (query.expr, result)
    assert empty == {}, f"{sorted(empty)}\n{json.dumps(empty, indent=1)[:3000]}"

    _instances_by_status_survive_a_restart(saga, processor)


def _instances_by_status_survive_a_restart(saga: SagaRun, processor: LocalProcess) -> None:
    """With shipping stopped, paid orders wait on it (running); a processor restarted on the
    same store counts them again from the store."""
    shipping = next(p for p in saga.processes.started if "shipping" in p.log_path.name)
    shipping.stop()
    # Ids of their own (a plan numbers its orders from 0: those of the run's plan are taken).
    saga.publish(plan_orders(5, 0, 0, seed=14, run_id=f"{saga.run_id}-w"))
    wait_for_metric(processor, "sagalog_instances", lambda n: n >= 5, 30, status="running")
    # Instances left running by earlier runs on this broker are counted too, as the restore's
    # count goes through the store a slice per loop turn: wait for the count to settle.
    before = _settled(processor, "sagalog_instances", 60, status="running")
    processor.stop()
    again = saga.start_processor()
    wait_for_log(again, lambda text: len(restored_partitions(text)) == PARTITIONS, 60, "restore")
    wait_for_metric(again, "sagalog_instances", lambda n: n == before, 20, status="running")
    assert again.metrics_by_label("sagalog_instances", "status") == {
        "running": before,
        "waiting": 0,
        "compensating": 0,
        "parked": 0,
    }


def _settled(process: LocalProcess, name: str, timeout: float, **labels: str) -> float:
    """The metric's value once it has stayed the same for two seconds."""
    deadline = time.monotonic() + timeout
    last, since = process.metric(name, **labels), time.monotonic()
    while time.monotonic() - since < 2:
        assert time.monotonic() < deadline, f"{name}{labels} never settled (last {last})"
        time.sleep(0.2)
        value = process.metric(name, **labels)
        if value != last:
            last, since = value, time.monotonic()
    return last


def _counted(prometheus: Prometheus) -> tuple[float, float, dict[str, float]]:
    """What Prometheus last scraped: completed, SLA verdicts, failed attempts by step."""
    completed = _value(prometheus.query('sum(sagalog_sagas_total{event="completed"})'))
    verdicts = _value(prometheus.query("sum(sagalog_sla_total)"))
    by_step = prometheus.query("sum by (step) (sagalog_step_failures_total)")
    return completed, verdicts, {r["metric"]["step"]: float(r["value"][1]) for r in by_step}


def _targets_up(prometheus: Prometheus) -> int:
    active = prometheus.api("targets")["activeTargets"]
    return sum(1 for target in active if target["health"] == "up")


def _value(result: list[dict[str, Any]]) -> float:
    return float(result[0]["value"][1]) if result else math.nan
