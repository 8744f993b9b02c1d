"""Running the order-fulfilment saga's real processes against the broker, and reading what they did.

The engine is observed from the outside only: processes are ``sagas run`` / ``sagas worker``
subprocesses (so that they can be killed with SIGKILL like a real crash), and what they did is read
back from Kafka with ``read_committed`` consumers, the way any downstream reader would see it.

- ``SagaProcesses`` starts processors and workers for one test and stops every one it started;
- ``CommittedReader`` reads a topic's committed records, from its beginning or from where it was
  when the reader was made, optionally filtered, and can read "up to the current end";
- ``JournalFollower`` follows the journal and keeps the entries of one run's instances;
- ``publish_orders`` places planned orders;
- ``set_topic_limit`` sets a topic's ``max.message.bytes``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from examples.order_fulfillment.saga import OrderFulfillment
from examples.order_fulfillment.scenario import PlannedOrder, plan_orders
from sagas.local import TERMINAL, LocalProcess, stop_all
from sagas.publisher import Publisher
from stream_processors.core.instance import Instance
from stream_processors.core.journal import JournalEntry, Kind
from stream_processors.core.model import SagaDefinition
from stream_processors.engine.routing import COMMAND_ID, INSTANCE, ReceivedHeaders, header
from stream_processors.kafka.config import consumer_config
from stream_processors.kafka.reading import watermarks
from stream_processors.kafka.topics import SagaTopics, ensure_topics
from stream_processors.tools.history import fold_until, read_history
from tests.conftest import KafkaCluster
from tests.integration.flaky_jobs import FlakyJobs, Job

SAGA_TARGET = "examples.order_fulfillment.saga:OrderFulfillment"
WORKER_TARGETS = {
    "payments": "examples.order_fulfillment.services:payments",
    "shipping": "examples.order_fulfillment.services:shipping",
}
PARTITIONS = 8
TOPICS = SagaTopics.for_saga(OrderFulfillment.definition, PARTITIONS)
REPO_ROOT = Path(__file__).resolve().parents[2]


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

    def _start(
        self, name: str, args: list[str], env: dict[str, str], program: list[str] | None = None
    ) -> LocalProcess:
        log_path = self.logs / f"{len(self.started):02d}-{name}.log"
        environment = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            **self.env,
            **env,
        }
        process = LocalProcess(args, log_path, env=environment, program=program)
        self.started.append(process)
        return process.start()

    def processor(
        self, state_dir: Path, name: str = "processor", args: tuple[str, ...] = ()
    ) -> LocalProcess:
        """A ``sagas run`` of the saga whose store lives under ``state_dir``."""
        return self._start(
            name, ["run", self.saga_target, *args], {"SAGALOG_STATE_DIR": str(state_dir)}
        )

    def workers(self) -> list[LocalProcess]:
        """The saga's services (by default the order saga's payment and shipping)."""
        return [self.worker(name) for name in self.worker_targets]

    def worker(self, name: str, *args: str) -> LocalProcess:
        """A ``sagas worker`` of the service ``name`` (a key of ``worker_targets``)."""
        return self._start(name, ["worker", self.worker_targets[name], *args], {})

    def program(self, name: str, command: list[str]) -> LocalProcess:
        """Any other program (a service in another language), stopped and logged like the rest."""
        return self._start(name, [], {}, program=command)

    def stop_all(self) -> None:
        stop_all(reversed(self.started))

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


def set_topic_limit(kafka: KafkaCluster, topic: str, limit: int) -> None:
    """Set ``topic``'s ``max.message.bytes`` (the largest record batch the broker takes)."""
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(
                "max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET
            )
        ],
    )
    for future in kafka.admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


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


# -- one test's run of the order saga -----------------------------------------------------------


@dataclass
class SagaRun:
    """One test's run of the order saga: its ids, state folder, processes and readers."""

    kafka: KafkaCluster
    tmp_path: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    processes: SagaProcesses = field(init=False)
    journal: JournalFollower = field(init=False)
    commands: list[CommittedReader] = field(init=False)
    dlq: CommittedReader = field(init=False)
    later: list[PlannedOrder] = field(default_factory=list)  # planned, published by the test

    def __post_init__(self) -> None:
        bootstrap = self.kafka.bootstrap
        self.processes = SagaProcesses(bootstrap, self.tmp_path / "logs")
        # Readers start at the topics' current ends: everything this run writes comes after.
        # On a fresh broker the topics must exist first, or the readers have no partitions
        # (the processor would create them a moment later, unseen by the readers).
        ensure_topics(TOPICS, bootstrap)
        self.journal = JournalFollower(bootstrap, self.prefix)
        self.commands = [
            CommittedReader(bootstrap, t, from_end=True, keep=header_prefix(INSTANCE, self.prefix))
            for t in TOPICS.commands
        ]
        self.dlq = CommittedReader(bootstrap, TOPICS.dlq, from_end=True)

    @property
    def prefix(self) -> str:
        """Every order id of this run starts with it (``plan_orders`` names them so)."""
        return f"order-{self.run_id}-"

    @property
    def state_dir(self) -> Path:
        """What the run's processors get as SAGALOG_STATE_DIR (the base of every saga's)."""
        return self.tmp_path / "state"

    @property
    def store_dir(self) -> Path:
        """The order saga's store folder (its slots) under ``state_dir``: ``--state-dir``."""
        return self.state_dir / TOPICS.saga

    def plan(self, count: int, seed: int, failures: float = 0.1) -> list[PlannedOrder]:
        return plan_orders(count, failures, failures, seed=seed, run_id=self.run_id)

    def start_processor(self, state_dir: Path | None = None) -> LocalProcess:
        return self.processes.processor(state_dir or self.state_dir)

    def start(self) -> LocalProcess:
        """A processor and both workers; returns the processor."""
        processor = self.start_processor()
        self.processes.workers()
        return processor

    def publish(self, orders: list[PlannedOrder]) -> None:
        publish_orders(self.kafka.bootstrap, orders)

    def outcomes(self, orders: list[PlannedOrder], timeout: float = 120) -> dict[str, str]:
        return self.journal.wait_for_outcomes(
            (o.event.order_id for o in orders), timeout, self.processes.log_tails
        )

    def committed_command_ids(self) -> Counter[str]:
        """Command ids of this run's commands committed on the command topics, with counts."""
        ids: Counter[str] = Counter()
        for reader in self.commands:
            for message in reader.read_to_end():
                ids[header_of(message, COMMAND_ID) or "<none>"] += 1
        return ids

    def close(self) -> None:
        try:
            self.processes.stop_all()
        finally:
            for reader in (self.journal.reader, *self.commands, self.dlq):
                reader.close()


# -- one test's run of FlakyJobs ----------------------------------------------------------------

FLAKY_TOPICS = SagaTopics.for_saga(FlakyJobs.definition, 4)
FLAKY_TARGET = "tests.integration.flaky_jobs:FlakyJobs"


@dataclass
class Jobs:
    """One test's run of FlakyJobs: processes, flags, journal, and its own job ids."""

    kafka: KafkaCluster
    tmp: Path
    processes: SagaProcesses
    journal: JournalFollower
    flags: Path
    run: str

    def job(self, mode: str) -> str:
        job_id = f"{self.run}-{mode}"
        with Publisher(self.kafka.bootstrap) as publisher:
            publisher.publish(Job(job_id=job_id, mode=mode))
        return job_id

    def flag(self, name: str, on: bool) -> None:
        path = self.flags / name
        if on:
            path.touch()
        else:
            path.unlink(missing_ok=True)

    def start(self) -> None:
        self.processor()
        self.processes.workers()

    def processor(self, *args: str) -> LocalProcess:
        return self.processes.processor(self.tmp / "state", args=args)

    def worker(self, machine: str) -> LocalProcess:
        """A FlakyJobs worker whose identity is kept in a folder of its own, as on another
        machine: it shares nothing with the other workers but the broker. The folder outlives
        the test, so the next test's worker takes its static membership back at once instead
        of waiting for it to expire."""
        state = REPO_ROOT / ".sagalog" / "test-machines" / machine
        return self.processes.worker("flaky", "--state-dir", str(state))

    def effects(self) -> list[str]:
        """The idempotency keys ``DoWork`` made its effect for (once each, by construction)."""
        folder = self.flags / "effects"
        return sorted(p.read_text() for p in folder.iterdir()) if folder.exists() else []

    def invocations(self) -> list[str]:
        """The command ids ``DoWork``'s handler was invoked with, in order, repeats included."""
        path = self.flags / "invocations"
        return path.read_text().split() if path.exists() else []

    @property
    def store_dir(self) -> Path:
        """FlakyJobs' store folder (its slots), as ``--state-dir`` names it."""
        return self.tmp / "state" / FLAKY_TOPICS.saga

    def entries(self, job_id: str) -> list[JournalEntry]:
        return self.journal.entries.get(job_id, [])

    def wait_for(self, job_id: str, kind: Kind, timeout: float = 60) -> JournalEntry:
        """Follow the journal until ``job_id`` has an entry of ``kind``; return the first."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.entries(job_id) if e.kind == kind.value]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                kinds = [e.kind for e in self.entries(job_id)]
                raise AssertionError(
                    f"{job_id}: no {kind.value} after {timeout:.0f} s; journal: {kinds}\n"
                    f"{self.processes.log_tails()}"
                )
            self.journal._take(self.journal.reader.poll(0.3))

    def sagas(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the ``sagas`` command line as an operator would."""
        return run_sagas(self.kafka.bootstrap, *args)


def sagas_cli(
    bootstrap: str,
    *args: str,
    cwd: Path = REPO_ROOT,
    path: tuple[Path, ...] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run the ``sagas`` command line as an operator would (``path``: more on PYTHONPATH)."""
    python_path = os.pathsep.join(str(p) for p in (*path, REPO_ROOT))
    env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "PYTHONPATH": python_path}
    return subprocess.run(
        [sys.executable, "-m", "sagas", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def run_sagas(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``sagas_cli``, failing the test unless the command exits 0."""
    result = sagas_cli(bootstrap, *args)
    assert result.returncode == 0, f"sagas {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def finished_instance(
    definition: SagaDefinition, bootstrap: str, instance_id: str, timeout: float = 60
) -> Instance:
    """The instance as its committed journal folds, once it has finished (polls its history)."""
    journal = SagaTopics.for_saga(definition).journal
    deadline = time.monotonic() + timeout
    while True:
        instance = fold_until(definition, read_history(journal, instance_id, bootstrap))
        if instance is not None and instance.status.finished:
            return instance
        assert time.monotonic() < deadline, f"{instance_id} did not finish: {instance}"
        time.sleep(0.5)
