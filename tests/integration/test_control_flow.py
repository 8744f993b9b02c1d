"""The construct-heavy saga on the real broker: 500 at once, the parent's processor killed twice.

The fulfilment example (``examples/control_flow``) runs a Choice, a Sleep, a Parallel of two
compensable branches, a Map over the order's lines and an ``invoicing`` child saga for each
order. Its processor, the child's processor and the three services run as OS processes; 500
orders drawn over every path (``scenario.plan_orders``) are published at once, and the
parent's processor is killed with SIGKILL twice mid-run (once it has ended 100 of them, and its
next incarnation once it has ended 150), each time restarted at once on its own state folder.
Judged only by what the processes committed, read back ``read_committed``:

- every order ends as its data implies (completed, failed through a Fail node or a refused
  courier, compensated through a failed branch, a map beyond its tolerance or a refused
  invoice), and every invoicing child that was started ends as the order implies;
- on every command topic (the parent's two and the child's) each command id of the run is
  committed exactly once, the ids are the ones the journals record as sent, and each order sent
  as many commands as its data implies; each child start is committed once on the child's inbox,
  for exactly the orders that reach invoicing.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from examples.control_flow import measure
from examples.control_flow.measure import CHILD, PARENT, PARTITIONS
from examples.control_flow.scenario import PlannedOrder, plan_orders
from sagas.local import LocalProcess
from sagas.publisher import Publisher
from stream_processors.core.journal import Kind
from stream_processors.engine.routing import COMMAND_ID, INSTANCE, PARENT_INSTANCE
from tests.conftest import KafkaCluster
from tests.integration.saga_harness import (
    CommittedReader,
    JournalFollower,
    SagaProcesses,
    header_of,
    header_prefix,
    key_prefix,
    restored_partitions,
    wait_for_log,
)

pytestmark = pytest.mark.kafka

ORDERS = 500
#: The parent's processor is killed once it has ended 100 orders (by its own count: some are
#: still in its open transaction), and its restarted incarnation once it has ended 150: within a
#: second of its restore, while it works through its outage's backlog (in the runs seen, before
#: any of those ends was committed: a large transaction aborted). A later kill would come after
#: the run: the backlog goes quickly.
KILL_AFTER = (100, 150)
ENDED = ("completed", "compensated", "failed")
SERVICES = {name: f"examples.control_flow.services:{name}" for name in measure.SERVICES}
SENT = (Kind.COMMAND_SENT.value, Kind.COMPENSATION_SENT.value)


def _all_restored(log: str) -> bool:
    return restored_partitions(log) == set(range(PARTITIONS))


@dataclass
class Kill:
    ended_before: int  # orders whose end was committed when the processor was killed
    restored_s: float  # from the kill until the restarted one restored every inbox partition
    resumed_s: float | None = None  # from the kill until the restarted one ended an order


@dataclass
class FlowRun:
    """One run: its processes, readers of every topic it writes, and its own order ids."""

    kafka: KafkaCluster
    tmp: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    kills: list[Kill] = field(default_factory=list)
    killed_at: float = 0.0  # monotonic time of the last kill

    def __post_init__(self) -> None:
        bootstrap = self.kafka.bootstrap
        # Before the readers: readers made before the topics exist would see no partitions.
        measure.ensure_all_topics(bootstrap)
        logs = self.tmp / "logs"
        self.parent = SagaProcesses(
            bootstrap,
            logs,
            saga_target="examples.control_flow.saga:Fulfilment",
            worker_targets=SERVICES,
        )
        self.child = SagaProcesses(
            bootstrap, logs, saga_target="examples.control_flow.saga:Invoicing", worker_targets={}
        )
        self.journal = JournalFollower(bootstrap, self.prefix, journal=PARENT.journal)
        self.child_journal = JournalFollower(bootstrap, self.prefix, journal=CHILD.journal)
        self.commands = [
            CommittedReader(bootstrap, t, from_end=True, keep=header_prefix(INSTANCE, self.prefix))
            for t in (*PARENT.commands, *CHILD.commands)
        ]
        self.child_starts = CommittedReader(
            bootstrap, CHILD.inbox, from_end=True, keep=header_prefix(PARENT_INSTANCE, self.prefix)
        )
        self.dead_letters = [
            CommittedReader(bootstrap, t, from_end=True, keep=key_prefix(self.prefix))
            for t in (PARENT.dlq, CHILD.dlq)
        ]

    @property
    def prefix(self) -> str:
        return f"fo-{self.run_id}-"

    def start_parent(self) -> LocalProcess:
        return self.parent.processor(self.tmp / "state" / "parent")

    def start(self) -> LocalProcess:
        """Every process, ready: the kills must land while orders are under way, not before."""
        child = self.child.processor(self.tmp / "state" / "child")
        workers = self.parent.workers()
        parent = self.start_parent()
        for processor in (child, parent):
            wait_for_log(processor, _all_restored, 90, "the restore of every inbox partition")
        for worker in workers:
            wait_for_log(worker, lambda text: " serving " in text, 90, "a serving worker")
        return parent

    def publish(self, orders: list[PlannedOrder]) -> None:
        """All at once: every order is under way together when the first kill comes."""
        with Publisher(self.kafka.bootstrap, client_id="control-flow-test") as publisher:
            for order in orders:
                publisher.publish(order.event)

    def ended(self) -> int:
        self.journal.catch_up()
        return len(self.journal.outcomes)

    def kill_and_restart(self, processor: LocalProcess, after: int) -> LocalProcess:
        """Kill -9 the parent's processor once it has ended ``after`` orders; restart it at
        once and wait for its restore."""
        self.wait_until_ended(processor, after)
        processor.kill()
        killed = time.monotonic()
        before = self.ended()
        restarted = self.start_parent()
        wait_for_log(restarted, _all_restored, 60, "the restore of every inbox partition")
        self.kills.append(Kill(before, time.monotonic() - killed))
        self.killed_at = killed
        return restarted

    def wait_until_ended(self, processor: LocalProcess, count: int) -> None:
        """Until ``processor`` ended ``count`` orders, by its own count: it leads the committed
        journal, and the run is too quick to wait for that. Notes when the last restart resumed."""
        deadline = time.monotonic() + 120
        while True:
            ended = sum(processor.metric("sagalog_sagas_total", event=e) for e in ENDED)
            if ended and self.kills and self.kills[-1].resumed_s is None:
                self.kills[-1].resumed_s = time.monotonic() - self.killed_at
            if ended >= count:
                return
            assert time.monotonic() < deadline, f"the processor never ended {count} orders"
            time.sleep(0.02)

    def command_ids(self) -> tuple[Counter[str], Counter[str]]:
        """Committed command ids of the run (with counts), and commands per order."""
        ids: Counter[str] = Counter()
        per_order: Counter[str] = Counter()
        for reader in self.commands:
            for message in reader.read_to_end():
                ids[header_of(message, COMMAND_ID) or "<none>"] += 1
                if reader.topic in PARENT.commands:
                    per_order[header_of(message, INSTANCE) or "<none>"] += 1
        return ids, per_order

    def journaled_sends(self) -> set[str]:
        """Command ids the journals of both sagas record as sent (child starts included)."""
        self.journal.catch_up()
        self.child_journal.catch_up()
        entries = [*self.journal.entries.values(), *self.child_journal.entries.values()]
        return {e.command_id for history in entries for e in history if e.kind in SENT}

    def close(self) -> None:
        try:
            self.parent.stop_all()
            self.child.stop_all()
        finally:
            readers = [*self.commands, self.child_starts, *self.dead_letters]
            for reader in (self.journal.reader, self.child_journal.reader, *readers):
                reader.close()

    def diagnostics(self) -> str:
        return self.parent.log_tails() + "\n" + self.child.log_tails()


@pytest.fixture
def flow(kafka: KafkaCluster, tmp_path: Path) -> Iterator[FlowRun]:
    run = FlowRun(kafka, tmp_path)
    try:
        yield run
    finally:
        run.close()


def test_500_construct_heavy_sagas_survive_two_kill_9_of_the_parent_processor(
    flow: FlowRun,
) -> None:
    began = time.monotonic()
    orders = plan_orders(ORDERS, seed=20261130, run_id=flow.run_id)
    processor = flow.start()
    flow.publish(orders)

    for after in KILL_AFTER:
        processor = flow.kill_and_restart(processor, after)
    flow.wait_until_ended(processor, 1)
    assert all(k.ended_before < ORDERS for k in flow.kills), f"a kill came too late: {flow.kills}"

    by_id = {o.event.order_id: o for o in orders}
    outcomes = flow.journal.wait_for_outcomes(by_id, 150, flow.diagnostics)
    assert outcomes == {i: o.expected.outcome for i, o in by_id.items()}
    children = {f"{i}-invoice": o.expected.child for i, o in by_id.items() if o.expected.child}
    child_outcomes = flow.child_journal.wait_for_outcomes(children, 60, flow.diagnostics)
    assert child_outcomes == children

    ids, per_order = flow.command_ids()
    starts = flow.child_starts.read_to_end()
    start_ids = Counter(header_of(m, COMMAND_ID) or "<none>" for m in starts)
    repeated = {i: n for i, n in (ids + start_ids).items() if n != 1}
    assert not repeated, f"command ids committed more than once: {list(repeated.items())[:5]}"
    assert set(ids) | set(start_ids) == flow.journaled_sends()
    assert per_order == Counter(
        {i: o.expected.commands for i, o in by_id.items() if o.expected.commands}
    )
    started_for = Counter(header_of(m, PARENT_INSTANCE) for m in starts)
    assert started_for == Counter({i: 1 for i, o in by_id.items() if o.expected.child})

    assert not [m for reader in flow.dead_letters for m in reader.read_to_end()]
    runtime = time.monotonic() - began
    paths = Counter(o.path for o in orders)
    print(
        f"\n{ORDERS} orders {dict(Counter(outcomes.values()))} paths {dict(paths)}; "
        f"children {dict(Counter(child_outcomes.values()))}; {sum(ids.values())} commands and "
        f"{len(start_ids)} child starts, each id once; kills {flow.kills}; {runtime:.1f} s"
    )
