"""The cluster phase of the chaos suite: the order saga on a three-broker cluster whose brokers
restart and crash under it.

``python -m chaos --cluster`` (``make chaos-cluster``, on its own ``KAFKA_BROKERS=3`` cluster) runs
chaos.run's run (same sagas, process kills, bad inputs, supervisor and invariants) while a
thread here drives the brokers through ``tools/kafka/broker.sh``:

1. a rolling restart: each node in turn is stopped gracefully (SIGTERM, wait for its exit) and
   started again, and the next waits until no partition is under-replicated;
2. then the node coordinating the processor's consumer group is killed with SIGKILL, stays down
   a while (its leaderships move only once the controller fences it) and is brought back.

Each event records what moved, read with the admin client: partition leaders (of the saga's
topics and of the internal ``__consumer_offsets`` and ``__transaction_state``, whose partition
leaders are the group and transaction coordinators) and the coordinator of each consumer group.

A second thread measures liveness. Every second it reads each process's progress counter (the
processor's inputs processed and events routed, a worker's commands handled) from its metrics,
the high watermarks of its input topics, and whether every partition has a leader on a live
broker. A process is stalled while input newer than its last progress waits and its counter
does not move (``Liveness``); the stall that counts is the part after the cluster
last had a leader for every partition, and it must stay under 30 s. No process may exit on its
own (the supervisor counts those it had to restart).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from chaos.run import (
    ROOT,
    SAGA,
    TOPICS,
    WORKERS,
    ChaosConfig,
    ChaosReport,
    Invariant,
    Supervisor,
    _ends,
    run_chaos,
)
from examples.order_fulfillment import services
from examples.order_fulfillment.saga import OrderFulfillment
from sagas.local import LocalProcess
from stream_processors.kafka.config import common

STALL_LIMIT = 30.0
PROCESSOR_GROUP = f"sagalog.{OrderFulfillment.definition.name}"
GROUPS = (PROCESSOR_GROUP, services.payments.group, services.shipping.group)
OFFSETS, TRANSACTIONS = "__consumer_offsets", "__transaction_state"
#: Each process's input topics, by what it runs (the second word of its command line).
INPUTS = {
    SAGA: (TOPICS.inbox, *TOPICS.sources),
    WORKERS["payments"]: tuple(services.payments.topics),
    WORKERS["shipping"]: tuple(services.shipping.topics),
}
#: The counters that move when a process does its work, by the first word of its command line.
PROGRESS = {
    "run": ("sagalog_inputs_processed_total", "sagalog_source_events_routed_total"),
    "worker": ("sagalog_worker_commands_total",),
}


@dataclass(frozen=True)
class ClusterOptions:
    rolling_restarts: int = 1
    sigkill: bool = True
    start_after: float = 10.0  # seconds into the run before the first broker event
    down_after_kill: float = 15.0  # a killed node stays down this long
    settle: float = 5.0  # between events
    heal_timeout: float = 240.0


@dataclass(frozen=True)
class View:
    """The cluster as the admin client sees it at one moment."""

    leaders: dict[tuple[str, int], int]
    under_replicated: int
    coordinators: dict[str, int]

    def led(self, down: set[int]) -> bool:
        """Every partition has a leader on a broker that is up."""
        return bool(self.leaders) and all(
            leader >= 0 and leader not in down for leader in self.leaders.values()
        )


def look(admin: AdminClient, groups: tuple[str, ...] = ()) -> View:
    metadata = admin.list_topics(timeout=5)
    leaders, under = {}, 0
    for name, topic in metadata.topics.items():
        for number, partition in topic.partitions.items():
            leaders[(name, number)] = partition.leader
            under += len(partition.isrs) < len(partition.replicas)
    coordinators = {}
    for group, future in (admin.describe_consumer_groups(list(groups)) if groups else {}).items():
        try:
            coordinators[group] = future.result(timeout=5).coordinator.id
        except (KafkaException, TimeoutError):  # its coordinator is moving: none for now
            coordinators[group] = -1
    return View(leaders, under, coordinators)


def _kind(topic: str) -> str:
    names = {
        OFFSETS: "group coordinators (__consumer_offsets)",
        TRANSACTIONS: "transaction coordinators (__transaction_state)",
    }
    return names.get(topic, "sagalog topics")


def moves(before: View, after: View) -> dict[str, Any]:
    """What changed between two views: partition leaders ("moved/all") by kind of topic, and
    each consumer group's coordinator ("before -> after", broker ids)."""
    moved: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for key, leader in after.leaders.items():
        total[_kind(key[0])] += 1
        moved[_kind(key[0])] += key in before.leaders and before.leaders[key] != leader
    groups = {
        group: f"{before.coordinators.get(group, -1)} -> {node}"
        for group, node in after.coordinators.items()
    }
    return {
        "leaders moved": {kind: f"{moved[kind]}/{total[kind]}" for kind in sorted(total)},
        "group coordinators": groups,
    }


@dataclass
class BrokerEvent:
    name: str
    node: int
    down_seconds: float = 0.0
    heal_seconds: float = 0.0
    healed: bool = False
    moved_when_down: dict[str, Any] = field(default_factory=dict)
    moved_after: dict[str, Any] = field(default_factory=dict)


class Brokers:
    """The cluster's nodes, through broker.sh (node i listens on base port + 3(i-1))."""

    def __init__(self, bootstrap: str) -> None:
        addresses = bootstrap.split(",")
        self.nodes = list(range(1, len(addresses) + 1))
        self.env = os.environ | {
            "KAFKA_PORT": addresses[0].rsplit(":", 1)[1],
            "KAFKA_BROKERS": str(len(addresses)),
            "PYTHON": sys.executable,
        }
        self.bootstrap = bootstrap
        self.down: set[int] = set()

    def admin(self) -> AdminClient:
        # A fresh client for each look: a long-lived one was seen to wait a minute on requests
        # to a broker that had restarted under it, which would be measured as the cluster's.
        return AdminClient(common(self.bootstrap, "chaos-cluster"))

    def node(self, command: str, node: int) -> None:
        script = str(ROOT / "tools" / "kafka" / "broker.sh")
        subprocess.run([script, command, str(node)], env=self.env, check=True, timeout=300)

    def view(self, groups: tuple[str, ...] = ()) -> View | None:
        try:
            return look(self.admin(), groups)
        except (KafkaException, TimeoutError):
            return None

    def wait(self, ready: Callable[[View], bool], timeout: float) -> View | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = self.view(GROUPS)
            if view is not None and ready(view):
                return view
            time.sleep(1)
        return None


class BrokerEvents(threading.Thread):
    """The rolling restart(s), then one SIGKILL; each event waits for the cluster to heal."""

    def __init__(
        self, brokers: Brokers, options: ClusterOptions, say: Callable[[str], None]
    ) -> None:
        super().__init__(daemon=True, name="broker-events")
        self.brokers = brokers
        self.options = options
        self.say = say
        self.events: list[BrokerEvent] = []
        self.error: str | None = None

    def run(self) -> None:
        try:
            time.sleep(self.options.start_after)
            for round_ in range(1, self.options.rolling_restarts + 1):
                for node in self.brokers.nodes:
                    self._event(f"rolling restart {round_}: node {node}", node, "node-stop")
            if self.options.sigkill:
                view = self.brokers.view(GROUPS)
                node = view.coordinators.get(PROCESSOR_GROUP, 1) if view else 1
                node = node if node in self.brokers.nodes else 1
                self._event(
                    f"SIGKILL node {node} (the processor group's coordinator)", node, "node-kill"
                )
        except Exception as error:  # reported as a failed invariant, not a silent thread death
            self.error = f"{type(error).__name__}: {error}"
            self.say(f"  cluster: the broker events stopped: {self.error}")
            for node in sorted(self.brokers.down):  # leave the cluster whole for the checks
                self.brokers.node("node-start", node)
            self.brokers.down.clear()

    def _event(self, name: str, node: int, how: str) -> None:
        brokers, options = self.brokers, self.options
        event = BrokerEvent(name, node)
        self.events.append(event)
        before = brokers.view(GROUPS)
        began = time.monotonic()
        brokers.down.add(node)
        brokers.node(how, node)
        self.say(f"  cluster: {name}: down")
        when_down = brokers.wait(lambda v: v.led(brokers.down), options.heal_timeout)
        if how == "node-kill":
            time.sleep(max(0.0, options.down_after_kill - (time.monotonic() - began)))
        brokers.node("node-start", node)
        brokers.down.discard(node)
        event.down_seconds = time.monotonic() - began
        healed = brokers.wait(
            lambda v: v.led(set()) and not v.under_replicated, options.heal_timeout
        )
        event.heal_seconds = time.monotonic() - began - event.down_seconds
        event.healed = healed is not None
        if before is not None and when_down is not None:
            event.moved_when_down = moves(before, when_down)
        if before is not None and healed is not None:
            event.moved_after = moves(before, healed)
        self.say(
            f"  cluster: {name}: back after {event.down_seconds:.1f} s, "
            f"{'healed' if event.healed else 'NOT healed'} {event.heal_seconds:.1f} s later; "
            f"moved while down: {event.moved_when_down.get('leaders moved')}"
        )
        time.sleep(options.settle)


@dataclass
class Clock:
    role: str
    value: float | None  # the progress counter when it last moved
    inputs: int  # the process's input topics' summed high watermarks then
    since: float | None = None  # when input newer than its last progress was first seen


class Liveness(threading.Thread):
    """Samples every process's progress each second; keeps the longest stall per role.

    A process stalls from the first sample that shows input written after its last progress
    (its input topics' high watermarks grew) until its progress counter moves: a worker that no
    command reached is idle, not stalled. Input that arrived before its last progress and is
    still unread starts no clock, so a stall at the very end of a run, once nothing new is
    written, is not seen; during the broker events orders keep arriving."""

    def __init__(self, brokers: Brokers, supervisor: Supervisor) -> None:
        super().__init__(daemon=True, name="liveness")
        self.brokers = brokers
        self.supervisor = supervisor
        self.inputs = sorted({topic for topics in INPUTS.values() for topic in topics})
        self.stop = threading.Event()
        self.longest: dict[str, float] = {}
        self.longest_after_leaders: dict[str, float] = {}
        self.unled_seconds = 0.0
        self._clocks: dict[int, Clock] = {}
        self._led_since: float | None = None
        self._sampled: float | None = None

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.sample()

    def sample(self) -> None:
        now = time.monotonic()
        view = self.brokers.view()
        if view is not None and view.led(self.brokers.down):
            self._led_since = self._led_since or now
        else:
            self._led_since = None
            self.unled_seconds += now - (self._sampled or now)
        self._sampled = now
        try:
            ends = {
                t: sum(p.values()) for t, p in _ends(self.supervisor.config, self.inputs).items()
            }
        except (KafkaException, TimeoutError, KeyError):
            return  # no input figures this second: clocks neither start nor stop
        running = dict(self.supervisor.running)
        for role, process in running.items():
            self._observe(role, process, now, ends)
        alive = {id(p) for p in running.values()}
        self._clocks = {k: c for k, c in self._clocks.items() if k in alive}

    def _observe(self, role: str, process: LocalProcess, now: float, ends: dict[str, int]) -> None:
        value = _progress(process)
        inputs = sum(ends.get(topic, 0) for topic in INPUTS.get(process.args[1], ()))
        clock = self._clocks.get(id(process))
        if clock is None or _moved(clock.value, value):
            previous = clock.value if clock is not None else None
            self._clocks[id(process)] = Clock(role, previous if value is None else value, inputs)
            return
        if clock.since is None:
            clock.since = now if inputs > clock.inputs else None
            return
        self.longest[role] = max(self.longest.get(role, 0.0), now - clock.since)
        if self._led_since is not None:
            counted = now - max(clock.since, self._led_since)
            self.longest_after_leaders[role] = max(
                self.longest_after_leaders.get(role, 0.0), counted
            )


def _progress(process: LocalProcess) -> float | None:
    """The process's progress counter now; None while it serves no metrics (starting, dying)."""
    names = PROGRESS.get(process.args[0] if process.args else "", ())
    try:
        totals = process.metrics()
    except OSError:
        return None
    return sum(totals.get(name, 0.0) for name in names)


def _moved(before: float | None, now: float | None) -> bool:
    return now is not None and now > (before if before is not None else 0.0)


@dataclass
class ClusterReport:
    chaos: ChaosReport
    events: list[BrokerEvent]
    longest_stall: dict[str, float]
    longest_stall_after_leaders: dict[str, float]
    seconds_without_leaders: float
    before: dict[str, Any]
    after: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.chaos.passed


def run_cluster(
    config: ChaosConfig, options: ClusterOptions, say: Callable[[str], None] = print
) -> ClusterReport:
    """chaos.run's run on the cluster in ``config.bootstrap``, with the broker events and the
    liveness measure; the cluster's invariants are added to the run's."""
    brokers = Brokers(config.bootstrap)
    events = BrokerEvents(brokers, options, say)
    monitors: list[Liveness] = []

    def watch(supervisor: Supervisor) -> None:
        monitors.append(Liveness(brokers, supervisor))
        monitors[0].start()
        events.start()

    spread = config.publish_seconds / max(1, config.processor_kills)
    config = replace(
        config,
        restart_broker=False,  # the broker events here replace the single broker's restart
        kill_broker=False,  # and its own SIGKILL of one node replaces the broker-kill phase
        # Give up on sagas that have not finished some minutes after the last order, rather
        # than after chaos.run's 15 minutes: a stalled engine is reported, not waited out.
        timeout=min(config.timeout, config.publish_seconds + 300),
        kill_every=(0.6 * spread, 1.4 * spread),
        watch=watch,
        busy=events.is_alive,
    )
    before = brokers.view(GROUPS)
    say(f"cluster phase: {len(brokers.nodes)} brokers at {config.bootstrap}")
    chaos = run_chaos(config, say)
    events.join(timeout=options.heal_timeout)
    for monitor in monitors:
        monitor.stop.set()
    after = brokers.view(GROUPS)
    report = ClusterReport(chaos, events.events, {}, {}, 0.0, _summary(before), _summary(after))
    for monitor in monitors:
        report.longest_stall = monitor.longest
        report.longest_stall_after_leaders = monitor.longest_after_leaders
        report.seconds_without_leaders = monitor.unled_seconds
    _check_cluster(report, options, events.error, after, say)
    return report


def _summary(view: View | None) -> dict[str, Any]:
    if view is None:
        return {}
    led_by: dict[str, dict[int, int]] = {}
    for (topic, _), leader in view.leaders.items():
        counts = led_by.setdefault(_kind(topic), {})
        counts[leader] = counts.get(leader, 0) + 1
    return {
        "partitions led by broker": led_by,
        "group coordinators": view.coordinators,
        "under-replicated": view.under_replicated,
    }


def _check_cluster(
    report: ClusterReport,
    options: ClusterOptions,
    error: str | None,
    after: View | None,
    say: Callable[[str], None],
) -> None:
    wanted = len(report.events) == options.rolling_restarts * 3 + options.sigkill
    healed = [e for e in report.events if e.healed]
    stalls = ", ".join(
        f"{role} {report.longest_stall.get(role, 0.0):.0f} s "
        f"({report.longest_stall_after_leaders.get(role, 0.0):.0f} s with every partition led)"
        for role in sorted(report.longest_stall.keys() | report.longest_stall_after_leaders.keys())
    )
    worst = max(report.longest_stall_after_leaders.values(), default=0.0)
    invariants = [
        Invariant(
            "broker events",
            error is None and wanted and len(healed) == len(report.events),
            f"{len(report.events)} events, {len(healed)} healed (leaders on live brokers, no "
            f"under-replicated partition) within {options.heal_timeout:.0f} s"
            + (f"; failed: {error}" if error else ""),
        ),
        Invariant(
            "liveness",
            worst <= STALL_LIMIT
            and bool(report.longest_stall_after_leaders or report.longest_stall),
            f"longest stall per process: {stalls or 'none measured'}; limit {STALL_LIMIT:.0f} s",
        ),
        Invariant(
            "no process exited on its own",
            report.chaos.crashes_restarted == 0,
            f"{report.chaos.crashes_restarted} exits the supervisor had to restart",
        ),
        Invariant(
            "cluster whole at the end",
            after is not None and after.led(set()) and not after.under_replicated,
            "every partition led, none under-replicated"
            if after is not None and after.led(set()) and not after.under_replicated
            else f"not whole: {_summary(after)}",
        ),
    ]
    report.chaos.invariants.extend(invariants)
    for invariant in invariants:
        say(f"{'PASS' if invariant.holds else 'FAIL'} {invariant.name}: {invariant.detail}")


def figures(report: ClusterReport) -> dict[str, Any]:
    """The phase's figures, for the JSON report."""
    chaos = report.chaos
    return {
        "sagas": chaos.sagas,
        "outcomes": dict(chaos.outcomes),
        "processor_kills": chaos.processor_kills,
        "worker_kills": chaos.worker_kills,
        "crashes_restarted": chaos.crashes_restarted,
        "bad_inputs": chaos.bad_inputs,
        "lost": chaos.lost,
        "duplicated": chaos.duplicated,
        "seconds": round(chaos.seconds, 1),
        "broker_events": [
            {
                "event": e.name,
                "down_seconds": round(e.down_seconds, 1),
                "heal_seconds": round(e.heal_seconds, 1),
                "healed": e.healed,
                "moved_when_down": e.moved_when_down,
                "moved_after_heal": e.moved_after,
            }
            for e in report.events
        ],
        "longest_stall_seconds": {k: round(v, 1) for k, v in report.longest_stall.items()},
        "longest_stall_with_every_partition_led_seconds": {
            k: round(v, 1) for k, v in report.longest_stall_after_leaders.items()
        },
        "seconds_without_a_leader_for_every_partition": round(report.seconds_without_leaders),
        "cluster_before": report.before,
        "cluster_after": report.after,
        "invariants": {i.name: {"holds": i.holds, "detail": i.detail} for i in chaos.invariants},
    }
