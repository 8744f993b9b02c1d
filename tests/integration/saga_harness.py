"""Running the order-fulfilment saga's real processes against the broker, and reading what they did.

The engine is observed from the outside only: processes are ``sagas run`` / ``sagas worker``
subprocesses (so that they can be killed with SIGKILL like a real crash), and what they did is read
back from Kafka with ``read_committed`` consumers, the way any downstream reader would see it.

- ``SagaProcesses`` starts processors and workers for one test and stops every one it started;
- ``CommittedReader`` reads a topic's committed records, from its beginning or from where it was
  when the reader was made, optionally filtered, and can read "up to the current end";
- ``JournalFollower`` follows the journal and keeps the entries of one run's instances;
- ``publish_orders`` places planned orders.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from examples.order_fulfillment.saga import OrderFulfillment
from examples.order_fulfillment.scenario import PlannedOrder
from sagas.local import TERMINAL, LocalProcess
from sagas.publisher import Publisher
from stream_processors.journal import JournalEntry
from stream_processors.kafka_config import consumer_config
from stream_processors.restore import watermarks
from stream_processors.routing import ReceivedHeaders, header
from stream_processors.topics import SagaTopics

SAGA_TARGET = "examples.order_fulfillment.saga:OrderFulfillment"
WORKER_TARGETS = {
    "payments": "examples.order_fulfillment.services:payments",
    "shipping": "examples.order_fulfillment.services:shipping",
}
PARTITIONS = 8
TOPICS = SagaTopics.for_saga(OrderFulfillment.definition, PARTITIONS)
REPO_ROOT = Path(__file__).resolve().parents[2]

#: Commands one saga sends, by its terminal state: pay + ship; pay; pay + ship + refund.
COMMANDS_PER_OUTCOME = {"completed": 2, "failed": 1, "compensated": 3}


# -- processes ----------------------------------------------------------------------------------


@dataclass
class SagaProcesses:
    """Starts ``sagas`` subprocesses for one test; ``stop_all`` (a finalizer) stops them all."""

    bootstrap: str
    logs: Path
    started: list[LocalProcess] = field(default_factory=list)
    saga_target: str = SAGA_TARGET
    worker_targets: dict[str, str] = field(default_factory=lambda: dict(WORKER_TARGETS))
    env: dict[str, str] = field(default_factory=dict)

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> LocalProcess:
        log_path = self.logs / f"{len(self.started):02d}-{name}.log"
        environment = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            **self.env,
            **env,
        }
        process = LocalProcess(args, log_path, env=environment)
        self.started.append(process)
        return process.start()

    def processor(self, state_dir: Path, name: str = "processor") -> LocalProcess:
        """A ``sagas run`` of the saga whose store lives under ``state_dir``."""
        return self._start(name, ["run", self.saga_target], {"SAGALOG_STATE_DIR": str(state_dir)})

    def workers(self) -> list[LocalProcess]:
        """The saga's services (by default the order saga's payment and shipping)."""
        return [
            self._start(name, ["worker", target], {})
            for name, target in self.worker_targets.items()
        ]

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop(timeout=30)

    def log_tails(self, lines: int = 15) -> str:
        """The end of every process's log, for failure messages."""
        parts = []
        for process in self.started:
            text = process.log_path.read_text(errors="replace") if process.log_path.exists() else ""
            tail = "\n".join(text.splitlines()[-lines:])
            state = (
                "running"
                if process.running
                else f"exited {process.popen and process.popen.returncode}"
            )
            parts.append(f"--- {process.log_path.name} ({state})\n{tail}")
        return "\n".join(parts)


def log_text(process: LocalProcess) -> str:
    return process.log_path.read_text(errors="replace") if process.log_path.exists() else ""


def wait_for_log(
    process: LocalProcess,
    condition: Callable[[str], bool],
    timeout: float,
    what: str,
) -> str:
    """Wait until ``condition(log text)`` holds; returns the log text. Fails if the process dies."""
    deadline = time.monotonic() + timeout
    while True:
        text = log_text(process)
        if condition(text):
            return text
        if not process.running:
            raise AssertionError(f"{process.log_path.name} exited before {what}:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:.0f} s:\n{text[-3000:]}")
        time.sleep(0.2)


def restored_partitions(text: str) -> set[int]:
    """Inbox partitions the processor logged as restored."""
    return {int(p) for p in re.findall(r"restored partition (\d+):", text)}


def assigned_partitions(text: str) -> list[set[int]]:
    """Each inbox assignment the processor logged, in order."""
    return [
        {int(p) for p in re.findall(r"\d+", found)}
        for found in re.findall(r"assigned inbox partitions \[([\d, ]*)\]", text)
    ]


def wait_for_metric(
    process: LocalProcess,
    name: str,
    predicate: Callable[[float], bool],
    timeout: float,
    **labels: str,
) -> float:
    """Wait until the labelled metric satisfies ``predicate``; returns its value."""
    deadline = time.monotonic() + timeout
    value = 0.0
    while True:
        try:
            value = process.metric(name, **labels)
            if predicate(value):
                return value
        except OSError:
            pass  # not serving yet
        if not process.running:
            raise AssertionError(f"{process.log_path.name} exited while waiting for {name}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} stuck at {value} after {timeout:.0f} s")
        time.sleep(0.2)


# -- reading topics -----------------------------------------------------------------------------


class CommittedReader:
    """Reads the committed records of one topic, with no consumer group.

    ``from_end=True`` starts at the high watermarks of the moment the reader is made: make the
    reader before producing what the test is looking for. ``keep`` filters the records kept.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        from_end: bool = False,
        keep: Callable[[Message], bool] | None = None,
    ) -> None:
        self.topic = topic
        self.keep = keep
        # A group id is required by the client; the reader never joins the group nor commits.
        self._consumer = Consumer(
            consumer_config(bootstrap, "saga-test-reader", f"saga-test-reader-{time.time_ns()}")
        )
        metadata = self._consumer.list_topics(topic, timeout=15)
        self.partitions = sorted(metadata.topics[topic].partitions)
        self._start: dict[int, int] = {}
        assignment = []
        for partition in self.partitions:
            low, high = self._watermarks(partition)
            self._start[partition] = high if from_end else low
            offset = high if from_end else OFFSET_BEGINNING
            assignment.append(TopicPartition(topic, partition, offset))
        self._consumer.assign(assignment)

    def _watermarks(self, partition: int) -> tuple[int, int]:
        return watermarks(self._consumer, TopicPartition(self.topic, partition))

    def poll(self, seconds: float = 0.5) -> list[Message]:
        """Whatever committed records arrive within ``seconds`` (kept ones only)."""
        kept = []
        for message in self._consumer.consume(num_messages=5000, timeout=seconds):
            if message.error() is not None:
                continue
            if self.keep is None or self.keep(message):
                kept.append(message)
        return kept

    def read_to_end(self, timeout: float = 60) -> list[Message]:
        """Every committed record up to the topic's end as of this call.

        Done when the position of each partition reached the high watermark read at the start
        (under read_committed the last offsets are often transaction markers, never delivered).
        """
        ends = {}
        for partition in self.partitions:
            low, high = self._watermarks(partition)
            if high > max(low, self._start[partition]):
                ends[partition] = high
        kept: list[Message] = []
        deadline = time.monotonic() + timeout
        while True:
            kept += self.poll(0.2)
            positions = self._consumer.position([TopicPartition(self.topic, p) for p in ends])
            behind = {tp.partition: tp.offset for tp in positions if tp.offset < ends[tp.partition]}
            if not behind:
                return kept
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.topic}: positions {behind} short of {ends} after {timeout:.0f} s"
                )

    def close(self) -> None:
        self._consumer.close()


def count_committed(bootstrap: str, topic: str) -> int:
    """How many committed records ``topic`` holds now (all partitions, from the beginning)."""
    reader = CommittedReader(bootstrap, topic)
    try:
        return len(reader.read_to_end())
    finally:
        reader.close()


def key_prefix(prefix: str) -> Callable[[Message], bool]:
    encoded = prefix.encode()
    return lambda message: (message.key() or b"").startswith(encoded)


def header_prefix(name: str, prefix: str) -> Callable[[Message], bool]:
    return lambda message: (header(message.headers(), name) or "").startswith(prefix)


def header_of(message: Message, name: str) -> str | None:
    headers: ReceivedHeaders = message.headers()
    return header(headers, name)


class JournalFollower:
    """Follows the saga's journal from its current end; keeps entries of instances with a prefix.

    Make it before publishing the run's orders.
    """

    def __init__(self, bootstrap: str, instance_prefix: str, journal: str = TOPICS.journal) -> None:
        self.reader = CommittedReader(
            bootstrap, journal, from_end=True, keep=key_prefix(instance_prefix)
        )
        self.entries: dict[str, list[JournalEntry]] = {}
        self.outcomes: dict[str, str] = {}

    def _take(self, messages: Iterable[Message]) -> None:
        for message in messages:
            entry = JournalEntry.decode(message.value() or b"")
            self.entries.setdefault(entry.instance, []).append(entry)
            state = TERMINAL.get(entry.kind)
            if state is not None:
                self.outcomes.setdefault(entry.instance, state)

    def catch_up(self) -> None:
        """Take everything committed up to the journal's current end."""
        self._take(self.reader.read_to_end())

    def wait_for_outcomes(
        self,
        instances: Iterable[str],
        timeout: float,
        diagnostics: Callable[[], str] = lambda: "",
    ) -> dict[str, str]:
        """Follow until every instance has a terminal entry; returns {instance: state}."""
        wanted = set(instances)
        deadline = time.monotonic() + timeout
        while wanted - self.outcomes.keys():
            if time.monotonic() > deadline:
                missing = sorted(wanted - self.outcomes.keys())
                raise AssertionError(
                    f"{len(missing)} of {len(wanted)} sagas unfinished after {timeout:.0f} s, "
                    f"e.g. {missing[:3]}\n{diagnostics()}"
                )
            self._take(self.reader.poll(0.5))
        return {instance: self.outcomes[instance] for instance in wanted}

    def close(self) -> None:
        self.reader.close()


# -- publishing ---------------------------------------------------------------------------------


def publish_orders(bootstrap: str, orders: Iterable[PlannedOrder]) -> None:
    with Publisher(bootstrap, client_id="saga-test-publisher") as publisher:
        for order in orders:
            publisher.publish(order.event)
