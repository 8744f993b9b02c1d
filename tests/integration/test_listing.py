"""``sagas list`` and the bulk operator actions on the real broker, with real processes.

The index is fed from the snapshots changelog the processor writes; what it lists is checked
against the journal (the record of what happened). A bulk ``cancel --where`` sends one action
per instance, which the processor journals with who and why; its ``--dry-run`` sends nothing.
Tombstones (finished instances expiring) leave the index, an index deleted and rebuilt from the
changelog lists exactly what the one fed incrementally did, and ``sagas index --follow`` keeps
one up to date by itself.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from sagas.cli import app
from stream_processors.core.journal import Kind
from stream_processors.tools.index import INDEX_FILE, Filters, Index, Page, remove_index
from tests.conftest import KafkaCluster
from tests.integration.saga_harness import FLAKY_TARGET, SAGA_TARGET, Jobs, SagaRun

pytestmark = pytest.mark.kafka


def _cli(kafka: KafkaCluster, *args: str) -> Result:
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "COLUMNS": "250"}
    return CliRunner().invoke(app, list(args), env=env)


def _ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def _listed(kafka: KafkaCluster, target: str, index: Path, *filters: str) -> list[dict[str, Any]]:
    output = _ok(
        _cli(
            kafka,
            "list",
            target,
            "--json",
            "--limit",
            "100000",
            "--state-dir",
            str(index),
            *filters,
        )
    )
    document = json.loads(output)
    assert document["total"] == len(document["instances"])
    instances: list[dict[str, Any]] = document["instances"]
    return instances


def _now_ms() -> int:
    return int(time.time() * 1000)


def _until(check: Any, timeout: float = 60) -> Any:
    """Call ``check`` until it returns something true; return that (or fail at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.5)


def test_list_matches_the_journal_and_bulk_cancel_is_applied(
    saga: SagaRun, kafka: KafkaCluster, tmp_path: Path
) -> None:
    index = tmp_path / "index"
    started = _now_ms()
    saga.start_processor()
    workers = saga.processes.workers()
    orders = saga.plan(30, seed=13, failures=0.2)
    saga.publish(orders)
    outcomes = saga.outcomes(orders)
    assert len(set(outcomes.values())) >= 2  # mixed outcomes, or the comparison proves little

    listed = {
        row["instance"]: row["status"]
        for row in _listed(kafka, SAGA_TARGET, index, "--started-after", str(started))
        if row["instance"].startswith(saga.prefix)
    }
    assert listed == outcomes
    counts = json.loads(
        _ok(
            _cli(
                kafka,
                "list",
                SAGA_TARGET,
                "--counts",
                "--json",
                "--state-dir",
                str(index),
                "--started-after",
                str(started),
            )
        )
    )
    assert counts == dict(Counter(outcomes.values()))
    failed = _listed(
        kafka, SAGA_TARGET, index, "--status", "failed", "--started-after", str(started)
    )
    assert {row["instance"] for row in failed} == {i for i, s in outcomes.items() if s == "failed"}
    one = orders[0].event
    by_field = _listed(kafka, SAGA_TARGET, index, "--field", f"order_id={one.order_id}")
    assert [row["instance"] for row in by_field] == [one.order_id]
    table = _ok(_cli(kafka, "list", SAGA_TARGET, "--state-dir", str(index), "--limit", "5"))
    assert "1-5 of" in table and "updated (UTC)" in table

    # Orders that wait on their payment: no worker answers.
    for worker in workers:
        worker.stop()
    waiting_since = _now_ms()
    stuck = saga.plan(40, seed=14, failures=0)[30:]  # ten more ids of this run
    saga.publish(stuck)
    ids = {order.event.order_id for order in stuck}
    where = ["--where", "status=running", "--where", f"started-after={waiting_since}"]

    def all_running() -> bool:
        rows = _listed(kafka, SAGA_TARGET, index, "--status", "running", "--step", "payment")
        return ids <= {row["instance"] for row in rows}

    _until(all_running)
    dry = _ok(
        _cli(
            kafka,
            "cancel",
            SAGA_TARGET,
            *where,
            "--dry-run",
            "--reason",
            "test",
            "--by",
            "x",
            "--state-dir",
            str(index),
        )
    )
    assert dry.startswith("would cancel 10 instances: ")
    assert set(dry.split(": ", 1)[1].strip().split(", ")) == ids
    sent = _ok(
        _cli(
            kafka,
            "cancel",
            SAGA_TARGET,
            *where,
            "--yes",
            "--reason",
            "stuck payments",
            "--by",
            "tester",
            "--state-dir",
            str(index),
        )
    )
    assert "cancel: 10 instances: applied 10" in sent  # each verdict waited for

    def cancelled() -> dict[str, list[str]]:
        saga.journal.catch_up()
        actions = {
            instance: [
                e.reason or ""
                for e in saga.journal.entries.get(instance, [])
                if e.kind == Kind.OPERATOR_ACTION.value
            ]
            for instance in ids
        }
        return actions if all(actions.values()) else {}

    actions = _until(cancelled)
    # One action each (the dry run sent none), journaled with who and why.
    assert all(reasons == ["cancel by tester: stuck payments"] for reasons in actions.values())
    saga.processes.workers()  # the payments in flight are answered, then refunded
    finished = saga.outcomes(stuck)
    assert set(finished.values()) <= {"compensated", "failed"}
    rows = {
        row["instance"]: row
        for row in _listed(kafka, SAGA_TARGET, index, "--started-after", str(waiting_since))
    }
    assert {i: rows[i]["status"] for i in ids} == finished
    assert all("cancelled by tester" in (rows[i]["reason"] or "") for i in ids)


def test_tombstones_leave_the_index_and_a_rebuild_lists_the_same(
    jobs: Jobs, kafka: KafkaCluster, tmp_path: Path
) -> None:
    # FlakyJobs has topics of its own: retention 0 expires nobody else's state.
    index = tmp_path / "index"
    followed = tmp_path / "followed"  # an index that `sagas index --follow` keeps up to date
    command = ["index", FLAKY_TARGET, "--follow", "--state-dir", str(followed)]
    follower = jobs.processes.program("index", [sys.executable, "-m", "sagas", *command])
    since = _now_ms()
    jobs.processor("--retention-hours", "0")
    ids = [jobs.job(f"ok-{n}") for n in range(6)]

    def listed_running() -> bool:
        rows = _listed(kafka, FLAKY_TARGET, index, "--started-after", str(since))
        return {row["instance"] for row in rows if row["status"] == "running"} == set(ids)

    _until(listed_running)  # no worker yet: every job waits on its work
    jobs.processes.workers()
    for job in ids:
        jobs.wait_for(job, Kind.SAGA_COMPLETED)

    def gone() -> bool:  # finished with retention 0: tombstoned, so out of the index
        return not _listed(kafka, FLAKY_TARGET, index, "--started-after", str(since))

    _until(gone)
    everything = _listed(kafka, FLAKY_TARGET, index)

    def followed_alike() -> bool:  # read without catching up: only the follower fed it
        if not (followed / INDEX_FILE).exists():
            return False
        reader = Index(followed / INDEX_FILE)
        try:
            rows = reader.page(Filters(), Page(limit=100_000))
        finally:
            reader.close()
        return [(r.instance, r.status) for r in rows] == [
            (r["instance"], r["status"]) for r in everything
        ]

    _until(followed_alike)
    assert follower.running
    remove_index(index / INDEX_FILE)
    assert _listed(kafka, FLAKY_TARGET, index) == everything
    assert not _listed(kafka, FLAKY_TARGET, index, "--started-after", str(since))
