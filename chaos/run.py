"""One chaos run of the order saga: crashes, a broker restart and bad input; then the invariants.

The run places orders with injected business failures at a steady rate while it SIGKILLs the
processor every 2 to 5 seconds (a second processor is alive every other period), SIGKILLs each
worker a few times, restarts the broker once, and mixes the bad-input corpus into the inbox and
the source topic. A supervisor restarts whatever died, as systemd or Kubernetes would. Last,
with nothing else killed around it, the broker is SIGKILLed and started again 20 s later, and
every process must commit output again within 30 s of it being ready (``chaos.broker_kill``).

Then it checks, reading the topics rather than trusting the engine's counters:

1. every saga ended in exactly the state its injected outcome implies, with exactly the journal
   that outcome implies (no entry lost or repeated, duplicate replies left no trace);
2. every command id is on the command topics once (committed records), and as many commands
   were sent as the outcomes imply;
3. every reply the saga accepted is the one the worker group recorded for that command id on
   its handled topic (a worker that ran a command twice still shows one effect);
4. the journal folds to exactly the stored snapshots (``sagas replay --verify``);
5. the dead-letter topic holds each dead-letterable bad input exactly once, with its reason.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from chaos.bad_inputs import BadInput, corpus, duplicate_reply
from chaos.broker_kill import BrokerKill, BrokerKillReport, phase_orders
from examples.order_fulfillment import services
from examples.order_fulfillment.saga import OrderFulfillment
from examples.order_fulfillment.scenario import (
    COMMANDS_PER_OUTCOME,
    EXPECTED_HISTORY,
    PlannedOrder,
    plan_orders,
)
from sagas.idempotency import recorded_replies
from sagas.local import JournalWatcher, LocalProcess, journal_end, stop_all
from sagas.publisher import DeliveryFailed, Publisher
from stream_processors.core.journal import Kind
from stream_processors.engine.routing import COMMAND_ID, DLQ_REASON, INSTANCE, header
from stream_processors.engine.schema_history import SchemaHistory
from stream_processors.kafka.config import consumer_config, producer_config
from stream_processors.kafka.reading import committed_records, watermarks
from stream_processors.kafka.topics import SagaTopics, ensure_topics
from stream_processors.tools.replay import verify

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SAGA = "examples.order_fulfillment.saga:OrderFulfillment"
WORKERS = {
    "payments": "examples.order_fulfillment.services:payments",
    "shipping": "examples.order_fulfillment.services:shipping",
}
TOPICS = SagaTopics.for_saga(OrderFulfillment.definition, 8)


@dataclass
class ChaosConfig:
    sagas: int = 10_000
    publish_seconds: float = 45.0
    kill_every: tuple[float, float] = (2.0, 5.0)
    processor_kills: int = 10
    worker_kills: int = 3  # each worker
    restart_broker: bool = True
    kill_broker: bool = True  # the broker-kill phase (chaos.broker_kill), at the end
    bad_inputs: int = 2  # of each kind
    failure_rate: float = 0.05  # of payments, and of shipments
    max_record_bytes: int = 100_000
    timeout: float = 900.0
    seed: int = 7
    bootstrap: str = "127.0.0.1:9092"
    work_dir: Path = field(default_factory=lambda: ROOT / ".sagalog" / "chaos")
    #: Hooks of the cluster phase (chaos.cluster): ``watch`` gets the supervisor once the
    #: processes are up; the run goes on while ``busy()`` holds.
    watch: Callable[[Supervisor], None] | None = None
    busy: Callable[[], bool] = lambda: False


@dataclass
class Invariant:
    name: str
    holds: bool
    detail: str


@dataclass
class ChaosReport:
    sagas: int = 0
    processor_kills: int = 0
    worker_kills: int = 0
    broker_restarts: int = 0
    crashes_restarted: int = 0
    bad_inputs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    #: Orders whose event the broker never acknowledged: not placed, so not counted as lost.
    undelivered: int = 0
    duplicated: int = 0
    seconds: float = 0.0
    invariants: list[Invariant] = field(default_factory=list)
    broker_kill: BrokerKillReport | None = None

    @property
    def passed(self) -> bool:
        return bool(self.invariants) and all(i.holds for i in self.invariants)


class Supervisor:
    """Keeps the run's processes up: restarts anything that dies, kills on request."""

    def __init__(self, config: ChaosConfig, report: ChaosReport) -> None:
        self.config = config
        self.report = report
        self.wanted: dict[str, list[str]] = {}
        self.running: dict[str, LocalProcess] = {}
        self.started = 0
        self.env = {
            "KAFKA_BOOTSTRAP_SERVERS": config.bootstrap,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "SAGALOG_STATE_DIR": str(config.work_dir / "state"),
        }

    def want(self, role: str, args: list[str]) -> None:
        self.wanted[role] = args
        self._start(role)

    def unwant(self, role: str, gently: bool = False) -> None:
        """Stop ``role`` for good: SIGKILL, or SIGTERM if ``gently``."""
        self.wanted.pop(role, None)
        process = self.running.pop(role, None)
        if process is not None:
            process.stop() if gently else process.kill()

    def _start(self, role: str) -> None:
        self.started += 1
        log = self.config.work_dir / "logs" / f"{self.started:03d}-{role}.log"
        self.running[role] = LocalProcess(list(self.wanted[role]), log, env=self.env).start()

    def kill(self, role: str) -> None:
        """SIGKILL ``role`` and start it again at once (a crash and its supervisor's restart)."""
        self.running[role].kill()
        self._start(role)

    def ensure(self) -> None:
        for role in self.wanted:
            if not self.running[role].running:
                self.report.crashes_restarted += 1
                self._start(role)

    def stop_all(self) -> None:
        stop_all(self.running.values())
        self.running.clear()
        self.wanted.clear()

    def tails(self) -> str:
        return "\n".join(
            f"--- {role}\n{process.log_tail(8)}" for role, process in self.running.items()
        )


def _restart_broker(config: ChaosConfig) -> None:
    port = config.bootstrap.rsplit(":", 1)[1]
    subprocess.run(
        [str(ROOT / "tools" / "kafka" / "broker.sh"), "restart"],
        env=os.environ | {"KAFKA_PORT": port, "PYTHON": str(ROOT / ".venv" / "bin" / "python")},
        check=True,
        timeout=180,
    )


def _publish(
    config: ChaosConfig, orders: list[PlannedOrder], stop: threading.Event, undelivered: set[str]
) -> None:
    """Place the orders at a steady rate over ``publish_seconds``. An order whose event the
    broker did not acknowledge (its delivery report failed) goes into ``undelivered``: it was
    never placed, and ``_check`` leaves it out, saying how many (the broker-kill phase does the
    same with its own orders)."""

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            undelivered.add((message.key() or b"").decode(errors="replace"))

    try:
        with Publisher(config.bootstrap, client_id="chaos-orders") as publisher:
            began = time.monotonic()
            for number, order in enumerate(orders):
                if stop.is_set():
                    return
                due = began + config.publish_seconds * number / len(orders)
                time.sleep(max(0.0, due - time.monotonic()))
                publisher.publish(order.event, on_delivery=delivered)
    except DeliveryFailed as failed:  # each failure was logged, with its key, by the publisher
        log.warning("chaos orders: %s", failed)


def _send_bad(config: ChaosConfig, inputs: list[BadInput]) -> None:
    producer = Producer(producer_config(config.bootstrap, "chaos-bad-inputs"))
    for bad in inputs:
        producer.produce(bad.topic, key=bad.key, value=bad.value, headers=bad.headers)
    if producer.flush(60):
        raise RuntimeError("bad inputs were not acknowledged")


def _ends(config: ChaosConfig, topics: list[str]) -> dict[str, dict[int, int]]:
    consumer = Consumer(consumer_config(config.bootstrap, "chaos", f"chaos-{time.time_ns()}"))
    try:
        ends = {}
        for topic in topics:
            partitions = consumer.list_topics(topic, timeout=15).topics[topic].partitions
            ends[topic] = {p: watermarks(consumer, TopicPartition(topic, p))[1] for p in partitions}
        return ends
    finally:
        consumer.close()


def _read_from(config: ChaosConfig, topic: str, start: dict[int, int]) -> list[Message]:
    """Every committed record of ``topic`` after ``start``, up to its end now."""
    return list(committed_records(topic, config.bootstrap, start))


def run_chaos(config: ChaosConfig, say: Callable[[str], None] = print) -> ChaosReport:
    report = ChaosReport(sagas=config.sagas)
    run = uuid.uuid4().hex[:8]
    rng = random.Random(config.seed)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    ensure_topics(TOPICS, config.bootstrap)
    history = SchemaHistory(config.bootstrap)
    # The checks decode the whole journal, which may hold records of writers other than this
    # process's classes (a Java service's OrderPlaced v2, say): read them as `sagas replay` does.
    history.serve_unknown()
    orders = plan_orders(
        config.sagas, config.failure_rate, config.failure_rate, seed=config.seed, run_id=run
    )
    expected = {o.event.order_id: o.expected for o in orders}
    bad = corpus(run, TOPICS.inbox, TOPICS.sources[0], config.max_record_bytes, history)
    bad = bad * config.bad_inputs
    starts = _ends(config, [TOPICS.dlq, *TOPICS.commands, *TOPICS.sources])
    watcher = JournalWatcher(
        TOPICS.journal,
        journal_end(TOPICS.journal, config.bootstrap),
        config.bootstrap,
        keep=expected.__contains__,
    )
    supervisor = Supervisor(config, report)
    run_args = ["run", SAGA, "--max-record-bytes", str(config.max_record_bytes)]
    supervisor.want("processor", run_args)
    for role, target in WORKERS.items():
        supervisor.want(role, ["worker", target, "--state-dir", str(config.work_dir / role)])
    stop = threading.Event()
    undelivered: set[str] = set()
    publisher = threading.Thread(
        target=_publish, args=(config, orders, stop, undelivered), daemon=True
    )
    began = time.monotonic()

    def elapsed() -> float:
        return time.monotonic() - began

    publisher.start()
    if config.watch is not None:
        config.watch(supervisor)
    say(f"chaos run {run}: {config.sagas} sagas over {config.publish_seconds:.0f} s")

    worker_kills = sorted(
        (rng.uniform(1, config.publish_seconds), role)
        for role in WORKERS
        for _ in range(config.worker_kills)
    )
    broker_at = config.publish_seconds * 0.4 if config.restart_broker else None
    bad_at = [config.publish_seconds * share for share in (0.2, 0.5, 0.8)]
    pending_bad = [bad[i::3] for i in range(3)]
    next_kill = began + rng.uniform(*config.kill_every)
    next_report = began + 5
    duplicates_sent = 0
    try:
        while time.monotonic() - began < config.timeout:
            watcher.poll(0.2)
            now = time.monotonic() - began
            finished = len(watcher.outcomes) == len(expected)
            if finished and report.processor_kills >= config.processor_kills and not config.busy():
                break
            if time.monotonic() >= next_kill and report.processor_kills < config.processor_kills:
                supervisor.kill("processor")
                report.processor_kills += 1
                if "second" in supervisor.wanted:  # a second processor half of the time
                    supervisor.unwant("second")
                else:
                    supervisor.want("second", run_args)
                say(
                    f"  {now:5.1f}s kill -9 processor #{report.processor_kills}, "
                    f"{len(watcher.outcomes)}/{len(expected)} finished"
                )
                next_kill = time.monotonic() + rng.uniform(*config.kill_every)
            while worker_kills and worker_kills[0][0] <= now:
                _, role = worker_kills.pop(0)
                supervisor.kill(role)
                report.worker_kills += 1
                say(f"  {elapsed():5.1f}s kill -9 {role}")
            if broker_at is not None and now >= broker_at:
                say(f"  {elapsed():5.1f}s restarting the broker")
                _restart_broker(config)
                report.broker_restarts += 1
                broker_at = None
            while bad_at and now >= bad_at[0]:
                bad_at.pop(0)
                _send_bad(config, pending_bad.pop(0))
            if not duplicates_sent and len(watcher.outcomes) > 50:
                accepted = [
                    e
                    for entries in list(watcher.entries.values())[: config.bad_inputs]
                    for e in entries
                    if e.kind == Kind.INPUT_ACCEPTED.value
                ][: config.bad_inputs]
                _send_bad(config, [duplicate_reply(run, TOPICS.inbox, e) for e in accepted])
                duplicates_sent = len(accepted)
            supervisor.ensure()
            if time.monotonic() >= next_report:
                say(f"  {elapsed():5.1f}s {len(watcher.outcomes)}/{len(expected)} finished")
                next_report = time.monotonic() + 5
        if config.kill_broker:  # last, with nothing else killed around it
            orders += _kill_broker(config, report, supervisor, watcher, expected, run, say)
        # Nothing more to break: let everything still in flight finish, then stop cleanly.
        deadline = time.monotonic() + 120
        while len(watcher.outcomes) < len(expected) and time.monotonic() < deadline:
            watcher.poll(0.5)
            supervisor.ensure()
    finally:
        stop.set()
        publisher.join(timeout=60)
        supervisor.stop_all()
        watcher.poll(1.0)
        watcher.close()
    report.seconds = time.monotonic() - began
    report.bad_inputs = len(bad) + duplicates_sent
    if report.broker_kill is not None:
        broker_kill = report.broker_kill
        report.invariants.append(
            Invariant("progress after a broker SIGKILL", broker_kill.passed(), broker_kill.detail())
        )
    report.undelivered = len(undelivered)
    placed = [o for o in orders if o.event.order_id not in undelivered]
    _check(config, report, run, placed, watcher, bad, starts, say)
    return report


def _kill_broker(
    config: ChaosConfig,
    report: ChaosReport,
    supervisor: Supervisor,
    watcher: JournalWatcher,
    expected: dict[str, str],
    run: str,
    say: Callable[[str], None],
) -> list[PlannedOrder]:
    """The broker-kill phase (``chaos.broker_kill``) with one processor; returns its orders."""

    def tick() -> None:
        try:
            watcher.poll(0.2)
        except KafkaException:  # the broker is down: the watcher reads on later
            time.sleep(0.2)
        supervisor.ensure()

    supervisor.unwant("second", gently=True)
    planned = phase_orders(3_000, config.failure_rate, config.seed, run)
    expected |= {o.event.order_id: o.expected for o in planned}  # for the watcher to keep
    phase = BrokerKill(config.bootstrap, str(ROOT), TOPICS.journal, supervisor.running, tick, say)
    published = phase.run(planned)
    acknowledged = {o.event.order_id for o in published}
    for order in planned:
        if order.event.order_id not in acknowledged:
            del expected[order.event.order_id]
    report.broker_kill = phase.report
    return published


def _check(
    config: ChaosConfig,
    report: ChaosReport,
    run: str,
    orders: list[PlannedOrder],
    watcher: JournalWatcher,
    bad: list[BadInput],
    starts: dict[str, dict[int, int]],
    say: Callable[[str], None],
) -> None:
    expected = {o.event.order_id: o.expected for o in orders}
    outcomes = {i: o.state for i, o in watcher.outcomes.items()}
    report.outcomes = Counter(outcomes.values())
    report.lost = len(set(expected) - set(outcomes))
    wrong = {i: (expected[i], s) for i, s in outcomes.items() if expected[i] != s}
    where = _unended(config, set(expected) - set(outcomes), watcher, starts)
    add = report.invariants.append
    add(
        Invariant(
            "terminal states",
            not wrong and not report.lost,
            f"{len(outcomes)}/{len(expected)} ended as implied, {len(wrong)} wrong, "
            f"{report.lost} without an end{where}"
            + (
                f"; {report.undelivered} orders left out, not acknowledged by the broker"
                if report.undelivered
                else ""
            ),
        )
    )

    bad_histories = 0
    for instance, entries in watcher.entries.items():
        shape = [(e.kind, e.step) for e in entries]
        if shape != EXPECTED_HISTORY[expected[instance]] or [e.seq for e in entries] != list(
            range(len(entries))
        ):
            bad_histories += 1
    add(
        Invariant(
            "journals",
            bad_histories == 0,
            f"{len(watcher.entries) - bad_histories} journals exactly as their outcome "
            f"implies, {bad_histories} not (duplicate replies left no entry)",
        )
    )

    ids: Counter[str] = Counter()
    for topic in TOPICS.commands:
        for message in _read_from(config, topic, starts[topic]):
            if header(message.headers(), INSTANCE) in expected:
                ids[header(message.headers(), COMMAND_ID) or "?"] += 1
    implied = sum(COMMANDS_PER_OUTCOME[o.expected] for o in orders)
    report.duplicated = sum(n - 1 for n in ids.values() if n > 1)
    add(
        Invariant(
            "commands exactly once",
            report.duplicated == 0 and sum(ids.values()) == implied,
            f"{len(ids)} command ids, {sum(ids.values())} committed commands "
            f"({implied} implied), {report.duplicated} duplicated",
        )
    )

    mismatched, checked = _effects(config, watcher)
    add(
        Invariant(
            "one effect per command",
            mismatched == 0 and checked > 0,
            f"{checked} accepted replies equal the worker's recorded reply, {mismatched} differ",
        )
    )

    verified = verify(OrderFulfillment.definition, TOPICS, config.bootstrap)
    add(
        Invariant(
            "journal folds to snapshots",
            not verified.differences and not verified.in_flight,
            f"{verified.instances} instances verified, {len(verified.differences)} differ",
        )
    )

    reasons: Counter[str] = Counter()
    for message in _read_from(config, TOPICS.dlq, starts[TOPICS.dlq]):
        if header(message.headers(), "chaos.run") == run:
            reasons[header(message.headers(), DLQ_REASON) or "?"] += 1
    wanted = Counter(b.reason for b in bad if b.reason is not None)
    add(
        Invariant(
            "dead letters",
            reasons == wanted,
            f"{sum(reasons.values())} dead-lettered of {sum(wanted.values())} bad inputs "
            f"that should be: {dict(sorted(reasons.items()))}",
        )
    )
    for invariant in report.invariants:
        say(f"{'PASS' if invariant.holds else 'FAIL'} {invariant.name}: {invariant.detail}")


def _unended(
    config: ChaosConfig,
    unended: set[str],
    watcher: JournalWatcher,
    starts: dict[str, dict[int, int]],
) -> str:
    """Where the sagas without an end stopped, to tell a stalled engine from a lost event:
    how many have their event on the source topic (by partition) and how many a journal."""
    if not unended:
        return ""
    placed: Counter[int] = Counter()
    for topic in TOPICS.sources:
        for message in _read_from(config, topic, starts[topic]):
            if (message.key() or b"").decode(errors="replace") in unended:
                placed[message.partition() or 0] += 1
    journaled = Counter(
        watcher.entries[i][-1].kind if watcher.entries.get(i) else "none" for i in unended
    )
    return (
        f" ({sum(placed.values())} of them placed, by source partition "
        f"{dict(sorted(placed.items()))}; "
        f"last journal entry: {dict(journaled)}; e.g. {sorted(unended)[:3]})"
    )


def _effects(config: ChaosConfig, watcher: JournalWatcher) -> tuple[int, int]:
    """Compare each accepted reply with the reply the worker recorded for its command id."""
    recorded: dict[str, bytes] = {}
    for worker in (services.payments, services.shipping):
        recorded |= recorded_replies(worker.group, config.bootstrap)
    mismatched = checked = 0
    for entries in watcher.entries.values():
        for entry in entries:
            if entry.kind == Kind.INPUT_ACCEPTED.value and entry.command_id in recorded:
                checked += 1
                mismatched += recorded[entry.command_id] != entry.record
    return mismatched, checked
