"""The hostile-input fuzz run: legitimate orders beside everything in ``chaos.hostile``.

One processor and the two example workers run, signing commands and replies or not
(``FuzzConfig.signing``). The run publishes legitimate orders at a steady rate and, among them:

- the untargeted corpus (source topic, inbox, command topics; sizes at and just over every limit
  of the default settings);
- targeted forgeries, with the payments worker paused so that they arrive while the real
  command waits: a ``MakePayment`` carrying the id the saga will give a real command, sent
  before the order (it would poison the worker's memory of handled commands); a forged
  ``PaymentCompleted`` for orders whose card is declined, and a forged ``CommandFailed`` for
  good ones, both with the right command id;
- unknown operator actions to live orders, and a storm of records with random schema
  fingerprints, during which the latency of legitimate orders is measured.

Then, reading the topics and the processes: no process exited on its own; every legitimate
order ended as planned (with signing off, the forgeries' targets are left out: there, a forgery
may change an outcome, which is what signing is for); every hostile record expected on a
dead-letter topic is there exactly once with one of its expected reasons; the inputs expected
to be ignored were counted as ignored; and the p99 of legitimate orders during the storm is
reported beside the p99 before it.
"""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
)

from chaos import hostile
from chaos.hostile import IGNORED, Hostile
from chaos.run import ROOT, SAGA, TOPICS, WORKERS
from examples.order_fulfillment.scenario import PlannedOrder, plan_orders
from sagas.local import JournalWatcher, LocalProcess, journal_end, percentile, stop_all
from sagas.publisher import Publisher
from stream_processors.core.decide import command_id
from stream_processors.core.journal import Kind
from stream_processors.engine.routing import DLQ_REASON, header
from stream_processors.kafka.config import common, consumer_config, producer_config
from stream_processors.kafka.reading import committed_records, watermarks
from stream_processors.kafka.topics import ensure_plain_topics, ensure_topics

#: Lets the fuzz producer write records as large as the topics take (see ``_prepare``).
PRODUCER_LIMIT = 12_000_000
#: The signing keys of a signed run (key id and secret), given to every process.
SIGNING_ENV = "SAGALOG_SIGNING_KEYS"


@dataclass
class FuzzConfig:
    sagas: int = 1_000
    publish_seconds: float = 30.0
    signing: bool = True
    forgeries: int = 3  # targets of each kind of forgery
    storm: int = 5_000  # records of random fingerprints
    timeout: float = 300.0
    seed: int = 11
    bootstrap: str = "127.0.0.1:9092"
    work_dir: Path = field(default_factory=lambda: ROOT / ".sagalog" / "fuzz")


@dataclass
class FuzzReport:
    signing: bool = False
    legitimate: int = 0
    hostile: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    exited: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    p99_before_ms: float | None = None
    p99_storm_ms: float | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.problems and not self.exited


def _signing_env(signing: bool) -> dict[str, str]:
    if not signing:
        return {}
    secret = base64.b64encode(os.urandom(32)).decode()
    return {SIGNING_ENV: f"fuzz:{secret}"}


class _Processes:
    """The processor and the workers; none is restarted: one that exits is a failure."""

    def __init__(self, config: FuzzConfig, env: dict[str, str]) -> None:
        self.config = config
        self.env = env | {
            "KAFKA_BOOTSTRAP_SERVERS": config.bootstrap,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "SAGALOG_STATE_DIR": str(config.work_dir / "state"),
        }
        self.running: dict[str, LocalProcess] = {}
        self.exited: list[str] = []

    def start(self, role: str) -> None:
        args = ["run", SAGA] if role == "processor" else ["worker", WORKERS[role]]
        log = self.config.work_dir / "logs" / f"{role}-{len(self.exited)}-{time.time_ns()}.log"
        self.running[role] = LocalProcess(args, log, env=self.env).start()

    def pause(self, role: str) -> None:
        """Stop ``role`` cleanly (SIGTERM): the run asks for it, it is not a crash."""
        self.running.pop(role).stop(timeout=30)

    def check(self) -> None:
        for role, process in list(self.running.items()):
            if not process.running:
                self.exited.append(f"{role} exited by itself: {process.log_tail(6)}")
                del self.running[role]

    def stop_all(self) -> None:
        self.check()
        stop_all(self.running.values())


def _send(bootstrap: str, records: Iterable[Hostile]) -> int:
    producer = Producer(
        producer_config(bootstrap, "fuzz-hostile") | {"message.max.bytes": PRODUCER_LIMIT}
    )
    count = 0
    for record in records:
        producer.produce(record.topic, key=record.key, value=record.value, headers=record.headers)
        producer.poll(0)
        count += 1
    if producer.flush(60):
        raise RuntimeError("hostile records were not acknowledged")
    return count


def _prepare(config: FuzzConfig) -> dict[str, dict[int, int]]:
    """The topics, and the dead-letter topics' ends before the run."""
    ensure_topics(TOPICS, config.bootstrap)
    dlqs = [hostile.SAGA_DLQ, hostile.PAYMENTS_DLQ, hostile.SHIPPING_DLQ]
    ensure_plain_topics(dlqs[1:], config.bootstrap)
    _raise_limit(config, hostile.PAYMENTS, hostile.HUGE_COMMAND + 100_000)
    probe = Consumer(consumer_config(config.bootstrap, "fuzz", f"fuzz-{time.time_ns()}"))
    try:
        ends: dict[str, dict[int, int]] = {}
        for topic in dlqs:
            partitions = probe.list_topics(topic, timeout=15).topics[topic].partitions
            ends[topic] = {p: watermarks(probe, TopicPartition(topic, p))[1] for p in partitions}
        return ends
    finally:
        probe.close()


def _raise_limit(config: FuzzConfig, topic: str, limit: int) -> None:
    """What a service that owns ``topic`` may do: let it take records up to ``limit`` bytes."""
    admin = AdminClient(common(config.bootstrap, "fuzz-admin"))
    resource = ConfigResource(
        "topic",
        topic,
        incremental_configs=[
            ConfigEntry(
                "max.message.bytes",
                str(limit),
                incremental_operation=AlterConfigOpType.SET,
            )
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def _publish(
    config: FuzzConfig, orders: list[PlannedOrder], seconds: float, sent: dict[str, float]
) -> None:
    with Publisher(config.bootstrap, client_id="fuzz-orders") as publisher:
        began = time.monotonic()
        for number, order in enumerate(orders):
            due = began + seconds * number / max(1, len(orders))
            time.sleep(max(0.0, due - time.monotonic()))
            sent[order.event.order_id] = time.time() * 1000
            publisher.publish(order.event)


def _wait(
    watcher: JournalWatcher,
    processes: _Processes,
    done: Callable[[], bool],
    timeout: float,
) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        watcher.poll(0.2)
        processes.check()
    return True


def _payment_sent(watcher: JournalWatcher, order_id: str) -> str | None:
    for entry in watcher.entries.get(order_id, []):
        if entry.kind == Kind.COMMAND_SENT.value and entry.step == "payment":
            return entry.command_id
    return None


def run_fuzz(config: FuzzConfig, say: Callable[[str], None] = print) -> FuzzReport:
    report = FuzzReport(signing=config.signing)
    run = uuid.uuid4().hex[:8]
    config.work_dir.mkdir(parents=True, exist_ok=True)
    starts = _prepare(config)
    orders = plan_orders(config.sagas, 0.1, 0.1, seed=config.seed, run_id=run)
    n = config.forgeries
    declined = [o for o in orders if o.expected == "failed"][:n]
    good = [o for o in orders if o.expected == "completed"]
    retried, poisoned = good[:n], good[n : 2 * n]
    targets = {o.event.order_id for o in [*declined, *retried, *poisoned]}
    untargeted = [o for o in orders if o.event.order_id not in targets]
    first, second = untargeted[: len(untargeted) // 2], untargeted[len(untargeted) // 2 :]

    records = hostile.corpus(run)
    legit_odd = {r.order_id: "completed" for r in records if r.order_id}
    expected = {o.event.order_id: o.expected for o in orders} | legit_odd
    watcher = JournalWatcher(
        TOPICS.journal,
        journal_end(TOPICS.journal, config.bootstrap),
        config.bootstrap,
        keep=expected.__contains__,
    )
    processes = _Processes(config, _signing_env(config.signing))
    began = time.monotonic()
    sent: list[Hostile] = []
    published: dict[str, float] = {}
    ignored: Counter[str] = Counter()
    try:
        for role in ("processor", *WORKERS):
            processes.start(role)
        say(f"fuzz run {run}: signing {'on' if config.signing else 'off'}")
        # 1. Forgeries while the payments worker is away: a command sent before its order,
        #    then forged replies to the real commands waiting for it.
        processes.pause("payments")
        sent += [hostile.forged_command(run, o.event.order_id) for o in poisoned]
        _send(config.bootstrap, sent)
        _publish(config, [*declined, *retried, *poisoned], 1.0, published)
        if not _wait(
            watcher,
            processes,
            lambda: all(_payment_sent(watcher, t) for t in targets),
            60,
        ):
            report.problems.append("the forgeries' targets never sent their payments")
        replies = [
            hostile.forged_reply(
                run,
                o.event.order_id,
                command_id(TOPICS.saga, o.event.order_id, "payment", 1),
                transient=o in retried,
            )
            for o in [*declined, *retried]
        ]
        _send(config.bootstrap, replies)
        sent += replies
        time.sleep(2)  # the forged replies reach the processor before the real ones exist
        processes.start("payments")
        # 2. The corpus and unknown operator actions, among the first half of the orders.
        publisher = threading.Thread(
            target=_publish, args=(config, first, config.publish_seconds / 2, published)
        )
        publisher.start()
        time.sleep(1)
        live = [o.event.order_id for o in first[:5]]
        extra = hostile.unknown_operator_actions(run, live)
        _send(config.bootstrap, [*records, *extra])
        sent += [*records, *extra]
        publisher.join()
        _wait(watcher, processes, lambda: all(o in watcher.outcomes for o in _ids(first)), 60)
        # 3. The second half of the orders, during a storm of unknown fingerprints.
        storm = hostile.fingerprint_storm(run, config.storm)
        publisher = threading.Thread(
            target=_publish, args=(config, second, config.publish_seconds / 2, published)
        )
        publisher.start()
        _send(config.bootstrap, storm)
        sent += storm
        publisher.join()
        _wait(watcher, processes, lambda: set(expected) <= watcher.outcomes.keys(), config.timeout)
        ignored = _ignored(processes)
    finally:
        processes.stop_all()
        watcher.poll(1.0)
        watcher.close()
    report.seconds = time.monotonic() - began
    report.exited = processes.exited
    report.legitimate = len(expected)
    report.hostile = Counter(r.kind for r in sent)
    _check_outcomes(config, report, expected, watcher, targets)
    _check_dead_letters(config, report, run, sent, starts)
    _check_ignored(report, sent, ignored)
    if watcher.foreign:
        report.problems.append(f"the journal holds {watcher.foreign} records that are not entries")
    # Before the storm: the later half of the first orders, once every process has warmed up.
    report.p99_before_ms = _p99(watcher, published, _ids(first[len(first) // 2 :]))
    report.p99_storm_ms = _p99(watcher, published, _ids(second))
    return report


def _ids(orders: list[PlannedOrder]) -> list[str]:
    return [o.event.order_id for o in orders]


def _p99(watcher: JournalWatcher, published: dict[str, float], ids: list[str]) -> float | None:
    latencies = sorted(
        watcher.outcomes[i].at_ms - published[i]
        for i in ids
        if i in watcher.outcomes and i in published
    )
    return percentile(latencies, 99)


def _check_outcomes(
    config: FuzzConfig,
    report: FuzzReport,
    expected: dict[str, str],
    watcher: JournalWatcher,
    targets: set[str],
) -> None:
    checked = (
        expected if config.signing else {k: v for k, v in expected.items() if k not in targets}
    )
    for order_id, state in checked.items():
        outcome = watcher.outcomes.get(order_id)
        report.outcomes[outcome.state if outcome else "missing"] += 1
        if outcome is None or outcome.state != state:
            got = outcome.state if outcome else "no end"
            report.problems.append(f"order {order_id[:60]} ended {got}, planned {state}")


def _check_dead_letters(
    config: FuzzConfig,
    report: FuzzReport,
    run: str,
    sent: list[Hostile],
    starts: dict[str, dict[int, int]],
) -> None:
    found: dict[str, Counter[str]] = {}
    for topic, start in starts.items():
        for message in committed_records(topic, config.bootstrap, start):
            headers = message.headers()
            if header(headers, "chaos.run") != run:
                continue
            kind = header(headers, "chaos.kind") or "?"
            reason = header(headers, DLQ_REASON) or "?"
            found.setdefault(kind, Counter())[f"{topic}:{reason}"] += 1
    expected = {r.kind: r.expectation(config.signing) for r in sent}
    wanted = Counter(r.kind for r in sent if expected[r.kind] is not None)
    for kind, count in wanted.items():
        where = expected[kind]
        assert where is not None
        allowed = {f"{where[0]}:{reason}" for reason in where[1]}
        seen = found.get(kind, Counter())
        right = sum(n for place, n in seen.items() if place in allowed)
        if right != count or sum(seen.values()) != count:
            report.problems.append(
                f"{kind}: {count} sent, dead-lettered {dict(seen) or 'nowhere'}; "
                f"expected {sorted(allowed)}"
            )
    unchecked = {r.kind for r in sent if r.forged and not config.signing}
    for kind in (set(expected) - wanted.keys() - unchecked) & found.keys():
        report.problems.append(f"{kind}: expected no dead letter, found {dict(found[kind])}")


def _ignored(processes: _Processes) -> Counter[str]:
    """The processor's count of ignored inputs, by reason."""
    processor = processes.running.get("processor")
    if processor is None:
        return Counter()
    url_samples = processor.metrics_by_label("sagalog_inputs_ignored_total", "reason")
    return Counter({reason: int(value) for reason, value in url_samples.items()})


def _check_ignored(report: FuzzReport, sent: list[Hostile], ignored: Counter[str]) -> None:
    """Inputs meant to be ignored were counted so, under one of their reasons."""
    wanted = Counter(r.kind for r in sent if r.expect_topic == IGNORED)
    if report.signing:  # unsigned, they never reach decide: dead-lettered as bad-signature
        return
    for kind, count in wanted.items():
        reasons = next(r for r in sent if r.kind == kind).reasons
        counted = sum(ignored.get(reason, 0) for reason in reasons)
        if counted < count:
            report.problems.append(
                f"{kind}: {count} sent, {counted} counted as ignored ({sorted(reasons)}); "
                f"the processor ignored {dict(ignored)}"
            )
