"""The broker-kill phase of a chaos run: the broker, and nothing else, dies with SIGKILL.

Once the run's other disruptions are over, the phase stops the second processor (if one runs)
cleanly, publishes a steady trickle of orders of its own, waits until every process (the
processor, each worker) is committing output, then SIGKILLs the broker (no clean shutdown: open
transactions, group state and unflushed logs are left as a crash leaves them) and starts it
again ``down_seconds`` later. It measures, per process, the time from the broker being ready
(``broker.sh start`` returned: a client's metadata request was answered) to that process's next
committed output: a journal entry for the processor, a record on its ``<group>.handled`` topic
for a worker. An independent ``read_committed`` consumer, made after the broker is ready and
assigned at the ends of those topics, sees them, so nothing committed before the kill counts.

The workers' input must not depend on the processor (a stalled processor would make every
worker look stalled): the phase also writes commands straight to their topics, five a second,
with replies addressed to ``PROBE_REPLIES``, a topic no saga reads. Their instances are none of
the run's, so the run's invariants do not count them.

A process passes if its output resumes within ``resume_within`` seconds and it did not exit
meanwhile (it should recover in place: the supervisor restarting it is not recovery). The
orders of the phase that the broker acknowledged join the run's, so the run's invariants cover
them; one whose delivery the producer reported failed (a Kafka client's contract: the
publisher knows) is counted and shown with its error, not expected of the engine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_END, Consumer, KafkaError, Producer, TopicPartition

from examples.order_fulfillment import services
from examples.order_fulfillment.messages import CreateShippingLabel, MakePayment
from examples.order_fulfillment.scenario import PlannedOrder, plan_orders
from sagas.idempotency import handled_topic
from sagas.local import LocalProcess
from sagas.publisher import Publisher
from stream_processors.engine.routing import COMMAND_ID, INSTANCE, REPLY_TO, Headers
from stream_processors.kafka.config import consumer_config, producer_config
from stream_processors.kafka.topics import ensure_plain_topics

#: The output that shows each process committing: role -> topic.
OUTPUTS = {
    "payments": handled_topic(services.payments.group),
    "shipping": handled_topic(services.shipping.group),
}
#: Where the workers' replies to the phase's own commands go: a topic no saga reads.
PROBE_REPLIES = "chaos.broker-kill.inbox"


@dataclass
class Recovery:
    role: str
    #: Seconds from the broker being ready to the process's next committed output; None: none.
    seconds: float | None
    exited: bool


@dataclass
class BrokerKillReport:
    resume_within: float
    #: SIGKILL to the start command; the start command to a client's first answer.
    down_seconds: float = 0.0
    start_seconds: float = 0.0
    published: int = 0
    #: Orders the broker did not acknowledge: still queued at the end, failed (and why).
    unacknowledged: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)

    def passed(self) -> bool:
        return bool(self.recoveries) and all(self._ok(r) for r in self.recoveries)

    def _ok(self, recovery: Recovery) -> bool:
        return (
            not recovery.exited
            and recovery.seconds is not None
            and recovery.seconds <= self.resume_within
        )

    def detail(self) -> str:
        parts = []
        for r in self.recoveries:
            took = "no output" if r.seconds is None else f"{r.seconds:.1f} s"
            parts.append(f"{r.role} {took}{' (exited)' if r.exited else ''}")
        left_out = ""
        if self.failed or self.unacknowledged:
            left_out = (
                f"; {self.failed} orders not delivered ({'; '.join(self.failures)}) and "
                f"{self.unacknowledged} not acknowledged, left out of the invariants"
            )
        return (
            f"broker down {self.down_seconds:.0f} s, ready {self.start_seconds:.0f} s after its "
            f"start; output resumed (limit {self.resume_within:.0f} s): "
            + ", ".join(parts)
            + left_out
        )

    def figures(self) -> dict[str, object]:
        return {
            "down_seconds": round(self.down_seconds, 1),
            "start_seconds": round(self.start_seconds, 1),
            "published": self.published,
            "not_delivered": self.failed,
            "not_acknowledged": self.unacknowledged,
            "resumed_seconds": {
                r.role: None if r.seconds is None else round(r.seconds, 1) for r in self.recoveries
            },
            "exited": [r.role for r in self.recoveries if r.exited],
            "passed": self.passed(),
        }


class _Outputs:
    """When each role's output topic got committed records, seen by a consumer of its own
    assigned at the topics' ends when it is made."""

    def __init__(self, bootstrap: str, outputs: dict[str, str]) -> None:
        self.roles = {topic: role for role, topic in outputs.items()}
        self.first: dict[str, float] = {}
        settings = {"reconnect.backoff.max.ms": 500}
        group = f"chaos-outputs-{time.time_ns()}"
        self._consumer = Consumer(consumer_config(bootstrap, "chaos-outputs", group, **settings))
        assignment = []
        for topic in outputs.values():
            partitions = self._consumer.list_topics(topic, timeout=15).topics[topic].partitions
            assignment += [TopicPartition(topic, p, OFFSET_END) for p in partitions]
        self._consumer.assign(assignment)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._done.is_set():
            for message in self._consumer.consume(1000, timeout=0.1):
                role = self.roles.get(message.topic() or "")
                if message.error() is None and role is not None:
                    self.first.setdefault(role, time.monotonic())

    def all_seen(self) -> bool:
        return set(self.first) == set(self.roles.values())

    def close(self) -> None:
        self._done.set()
        self._thread.join(10)
        self._consumer.close()


class BrokerKill:
    """The phase, given what the run has: its supervisor's processes and a tick to call while
    waiting (which polls the run's journal watcher and restarts what died)."""

    def __init__(
        self,
        bootstrap: str,
        root: str,
        journal: str,
        running: dict[str, LocalProcess],
        tick: Callable[[], None],
        say: Callable[[str], None],
        down_seconds: float = 20.0,
        resume_within: float = 30.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.root = root
        self.port = bootstrap.rsplit(":", 1)[1]
        self.outputs = {"processor": journal, **OUTPUTS}
        self.running = running
        self.tick = tick
        self.say = say
        self.down_seconds = down_seconds
        self.report = BrokerKillReport(resume_within)

    def run(self, orders: list[PlannedOrder]) -> list[PlannedOrder]:
        """Kill and restart the broker while ``orders`` trickle in; returns those the broker
        acknowledged."""
        stop = threading.Event()
        published: list[PlannedOrder] = []
        ensure_plain_topics([PROBE_REPLIES], self.bootstrap)
        feeds = [
            threading.Thread(target=self._trickle, args=(orders, published, stop), daemon=True),
            threading.Thread(target=self._probe, args=(stop,), daemon=True),
        ]
        for feed in feeds:
            feed.start()
        try:
            self._warm()
            processes = {role: self.running[role] for role in self.outputs}
            self._kill_broker()
            ready = self._restart_broker()
            self._measure(ready, processes)
        finally:
            stop.set()
            for feed in feeds:
                feed.join(90)  # the trickle flushes for up to 60 s
        self.report.published = len(published)
        self.say(f"  broker kill: {self.report.detail()}")
        return published

    def _trickle(
        self, orders: list[PlannedOrder], published: list[PlannedOrder], stop: threading.Event
    ) -> None:
        """Place ``orders`` at 20 a second (they wait in the client while the broker is down);
        ``published`` gets those the broker acknowledged, the report those it did not."""
        publisher = Publisher(self.bootstrap, client_id="chaos-broker-kill")

        def acknowledged(order: PlannedOrder) -> Callable[[KafkaError | None, object], None]:
            return lambda error, _: None if error else published.append(order)

        try:
            for order in orders:
                if stop.wait(0.05):
                    break
                publisher.publish(order.event, on_delivery=acknowledged(order))
        finally:
            self.report.unacknowledged = publisher.flush(60)
            self.report.failed = publisher.failed
            self.report.failures = sorted({f.error for f in publisher.failures})

    def _probe(self, stop: threading.Event) -> None:
        """Commands for the workers, five a second, whatever the processor does."""
        producer = Producer(producer_config(self.bootstrap, "chaos-broker-kill-probe"))
        run = time.time_ns()
        number = 0
        while not stop.wait(0.2):
            number += 1
            instance = f"probe-{run}-{number}"
            commands = {
                "payment": MakePayment(
                    order_id=instance, customer_id="probe", amount_cents=100, card_token="tok"
                ),
                "shipping": CreateShippingLabel(order_id=instance, postcode="10115"),
            }
            for step, command in commands.items():
                headers: Headers = [
                    (REPLY_TO, PROBE_REPLIES.encode()),
                    (COMMAND_ID, f"chaos-probe/{instance}/{step}/1".encode()),
                    (INSTANCE, instance.encode()),
                ]
                topic = type(command).__topic__ or ""
                producer.produce(
                    topic, key=instance.encode(), value=command.encode(), headers=headers
                )
            producer.poll(0)
        producer.flush(30)

    def _warm(self, patience: float = 60.0) -> None:
        """Wait until every process commits output (a process restarted just before would
        still be restoring)."""
        outputs = _Outputs(self.bootstrap, self.outputs)
        try:
            deadline = time.monotonic() + patience
            while not outputs.all_seen() and time.monotonic() < deadline:
                self.tick()
            if not outputs.all_seen():
                quiet = set(self.outputs) - set(outputs.first)
                raise RuntimeError(f"no output from {sorted(quiet)} before the broker kill")
        finally:
            outputs.close()

    def _kill_broker(self) -> None:
        kind = self._state("kind")
        if kind == "docker":
            subprocess.run(["docker", "compose", "kill", "-s", "SIGKILL", "kafka"], check=True)
        else:
            os.kill(int(self._state("broker.pid")), signal.SIGKILL)
        killed = time.monotonic()
        self.say(f"  kill -9 broker; starting it again in {self.down_seconds:.0f} s")
        while time.monotonic() - killed < self.down_seconds:
            self.tick()
        self.report.down_seconds = time.monotonic() - killed

    def _restart_broker(self) -> float:
        """Start the broker; returns the moment a client's metadata request was answered."""
        began = time.monotonic()
        subprocess.run(
            [os.path.join(self.root, "tools", "kafka", "broker.sh"), "start"],
            # Our own broker, even when the caller's environment names its address.
            env=os.environ | {"KAFKA_PORT": self.port, "KAFKA_BOOTSTRAP_SERVERS": ""},
            check=True,
            timeout=180,
        )
        ready = time.monotonic()
        self.report.start_seconds = ready - began
        return ready

    def _measure(self, ready: float, processes: dict[str, LocalProcess]) -> None:
        """Follow the outputs from their ends now, up to twice the allowed time (a process
        slower than allowed is measured, not just failed)."""
        outputs = _Outputs(self.bootstrap, self.outputs)
        try:
            while (
                not outputs.all_seen() and time.monotonic() - ready < 2 * self.report.resume_within
            ):
                self.tick()
        finally:
            outputs.close()
        for role, process in processes.items():
            seen = outputs.first.get(role)
            exited = self.running.get(role) is not process or not process.running
            self.report.recoveries.append(
                Recovery(role, None if seen is None else seen - ready, exited)
            )

    def _state(self, name: str) -> str:
        path = os.path.join(self.root, ".kafka", self.port, name)
        with open(path) as file:
            return file.read().strip()


def phase_orders(count: int, failure_rate: float, seed: int, run: str) -> list[PlannedOrder]:
    """The phase's own orders: ids apart from the run's."""
    return plan_orders(count, failure_rate, failure_rate, seed=seed + 1, run_id=f"{run}-bk")
