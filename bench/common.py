"""What the measurements share: sizes per mode, fresh topics, pre-filled topics, drain rates.

Every measurement starts from fresh topics (``fresh_saga_topics`` deletes and recreates the
order saga's topics, its command and source topics), so that one phase's leftovers (commands
no worker took, say) never reach the next. Processors keep one store folder for the whole run
(``STATE``): restarting with the same identity, they take their partitions back at once instead
of waiting for a dead static member's session to time out.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    ResourceType,
)

from examples.order_fulfillment.saga import OrderFulfillment
from examples.order_fulfillment.scenario import plan_orders
from sagas.idempotency import handled_topic
from sagas.local import LocalProcess
from sagas.publisher import Publisher
from stream_processors.kafka.config import (
    bootstrap_servers,
    common,
    consumer_config,
    producer_config,
)
from stream_processors.kafka.reading import watermarks
from stream_processors.kafka.topics import SagaTopics, ensure_plain_topics, ensure_topics

BASE = Path(".sagalog/bench")
STATE = BASE / "state"
PARTITIONS = 8
#: The fewest partitions two processor processes can share: the end-to-end phase runs again
#: with these, since a transaction's cost grows with the partitions it spans
#: (docs/benchmarks.md, 2026-12-03 16:05).
FEW_PARTITIONS = 2
DEFINITION = OrderFulfillment.definition
TOPICS = SagaTopics.for_saga(DEFINITION, PARTITIONS)
PROCESSOR_GROUP = f"sagalog.{DEFINITION.name}"
WORKER_GROUPS = ("sagalog.worker.payments", "sagalog.worker.shipping")


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does; ``quick`` fits ``make bench-quick`` in 5 minutes."""

    pipe_records: int  # inputs for the limit pipes and the engine, the same N for all
    saturation_orders: int  # orders published at once to find end-to-end saturation
    latency_seconds: float  # how long orders are paced at a quarter of saturation
    memory_instances: tuple[int, ...]  # instances restored for each memory case
    failover_seconds: float  # load kept up after the kill -9
    faust_orders: int
    temporal_workflows: int
    fixed_rates: tuple[float, ...] = (10.0, 50.0)  # sagas/s at which all three systems are timed
    fixed_rate_seconds: float = 30  # how long each fixed rate is kept up
    control_flow_orders: int = 10_000  # the construct-heavy saga's burst (bench.control_flow)
    index_instances: int = 1_000_000  # instances in the index whose queries are timed
    index_seconds: float = 20  # how long snapshots are produced at each rate the index follows
    tracing_records: int | None = None  # inputs of each tracing run (None: pipe_records)
    tracing_rounds: int = 3  # runs with tracing off, and as many on, alternating
    saturation_rounds: int = 3  # end-to-end saturation bursts, the median reported

    @classmethod
    def quick(cls) -> Sizes:
        # What makes the quick run's 5 minutes (a 2-core machine, 2026-12-01): the tracing
        # runs were a quarter of it (six of 50,000 inputs), so they are fewer and smaller here.
        memory = (10_000, 30_000, 100_000)
        return cls(
            30_000,
            2_000,
            5,
            memory,
            10,
            300,
            100,
            fixed_rate_seconds=3,
            control_flow_orders=600,
            index_instances=60_000,
            index_seconds=3,
            tracing_records=20_000,
            tracing_rounds=1,
            # One burst: three made a quick run on a slow machine 4 min 49 s with its set-up.
            saturation_rounds=1,
        )

    @classmethod
    def full(cls) -> Sizes:
        memory = (10_000, 100_000, 1_000_000)
        # Tracing's figure is a ratio (on over off, medians of three runs each): six runs of
        # 200,000 inputs give it, where six of the engine's 1,000,000 took 20 minutes or more.
        return cls(
            1_000_000,
            20_000,
            30,
            memory,
            25,
            10_000,
            2_000,
            fixed_rate_seconds=20,
            tracing_records=200_000,
        )


def admin() -> AdminClient:
    return AdminClient(common(None, "sagalog-bench-admin") | {"log_level": 4})


def saga_topic_names(topics: SagaTopics = TOPICS) -> list[str]:
    """A saga's topics (by default the order saga's), its command and source topics too."""
    commands = list(topics.commands)
    return [
        *topics.co_partitioned(),
        topics.dlq,
        *commands,
        *(f"{topic}.dlq" for topic in commands),
        *topics.sources,
    ]


def delete_topics(names: Iterable[str], timeout: float = 60) -> None:
    """Delete the topics that exist among ``names`` and wait until the broker forgets them."""
    client = admin()
    existing = set(client.list_topics(timeout=15).topics)
    doomed = [name for name in names if name in existing]
    if not doomed:
        return
    for future in client.delete_topics(doomed, operation_timeout=30).values():
        try:
            future.result(timeout=60)
        except KafkaException as error:
            if error.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                raise
    deadline = time.monotonic() + timeout
    while set(doomed) & set(client.list_topics(timeout=15).topics):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not deleted after {timeout}s: {doomed}")
        time.sleep(0.2)


def fresh_saga_topics(partitions: int = PARTITIONS) -> None:
    """The order saga's topics, empty and new, with ``partitions`` each; the workers'
    ``.handled`` topics go too, so that a worker recreates its own as wide as the command
    topics (a worker transaction spans the partitions it writes there). The broker drops the
    committed offsets of a deleted topic, so its consumer groups start the new one from the
    beginning."""
    delete_topics([*saga_topic_names(), *(handled_topic(group) for group in WORKER_GROUPS)])
    topics = SagaTopics.for_saga(DEFINITION, partitions)
    ensure_topics(topics, extra=[f"{topic}.dlq" for topic in topics.commands])


def fill(
    topic: str,
    records: Iterable[tuple[bytes, bytes]],
    headers: Callable[[int], list[tuple[str, bytes]]] | None = None,
) -> int:
    """Produce (key, value) records to ``topic`` as fast as the producer takes them; the
    ``n``th with ``headers(n)``, if given."""
    producer = Producer(producer_config(None, "sagalog-bench-fill") | {"linger.ms": 20})
    count = 0
    for key, value in records:
        extra = {} if headers is None else {"headers": headers(count)}
        while True:
            try:
                producer.produce(topic, key=key, value=value, **extra)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
        if count % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError(f"pre-filling {topic}: records not acknowledged")
    return count


@functools.cache  # the engine's runs (tracing's too) all take the same N inputs
def order_records(count: int, run_id: str) -> list[tuple[bytes, bytes]]:
    """``count`` OrderPlaced inputs as (key, value): what the inbox holds after routing."""
    return [
        (order.event.order_id.encode(), order.event.encode())
        for order in plan_orders(count, 0.0, 0.0, seed=1, run_id=run_id)
    ]


def topic_size(topic: str) -> int:
    """Records (and transaction markers) in ``topic``: the sum of its partitions' ends."""
    consumer = Consumer(common(None, "sagalog-bench-size") | {"group.id": "bench-size"})
    try:
        partitions = consumer.list_topics(topic, timeout=15).topics[topic].partitions
        return sum(watermarks(consumer, TopicPartition(topic, p))[1] for p in partitions)
    finally:
        consumer.close()


@dataclass(frozen=True)
class Drain:
    """A group working through a backlog, seen through its committed offsets."""

    records: int  # committed between the first and the last observation used
    seconds: float

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


def groups_emptied(groups: Iterable[str], timeout: float = 60) -> None:
    """Wait until no member is left in ``groups``. A static member that stopped does not leave
    its group: it stays, holding its partitions, until its session times out (10 s), and
    processes of another identity that join meanwhile get only the rest of the partitions."""
    client = admin()
    deadline = time.monotonic() + timeout
    while True:
        futures = client.describe_consumer_groups(list(groups), request_timeout=15)
        members = []
        for future in futures.values():
            try:
                members += [member.member_id for member in future.result().members]
            except KafkaException as error:
                if error.args[0].name() != "GROUP_ID_NOT_FOUND":
                    raise
        if not members:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(members)} members still in {list(groups)} after {timeout}s")
        time.sleep(0.5)


class OneCommit(RuntimeError):
    """A drain whose first commit seen was already its last: nothing to time."""


def coordinator_ready(group: str, topic: str, timeout: float = 60) -> None:
    """Wait until ``group``'s committed offsets on ``topic`` can be read: on a fresh broker the
    group coordinator loads for a while, and a drain followed from then on would see its first
    commit only when the whole drain is done ("went in one commit")."""
    consumer = Consumer(common(None, "sagalog-bench-drain") | {"group.id": group, "log_level": 4})
    try:
        partitions = consumer.list_topics(topic, timeout=15).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        deadline = time.monotonic() + timeout
        while True:
            try:
                consumer.committed(tps, timeout=10)
                return
            except KafkaException as error:
                moving = error.args[0].retriable() or error.args[0].name() == "NOT_COORDINATOR"
                if time.monotonic() > deadline or not moving:
                    raise
                time.sleep(0.1)
    finally:
        consumer.close()


def follow_drain(
    group: str,
    topic: str,
    total: int,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    interval: float = 0.02,
) -> Drain:
    """Poll ``group``'s committed offsets on ``topic`` until they add up to ``total``.

    The clock starts at the first commit seen, and the records that commit covered are left
    out, so start-up (joining the group, restoring) is not counted: records per second of
    steady processing, measured the same way for every pipe.

    ``timeout`` is how long the committed offsets may stand still, not how long the whole drain
    may take: on a machine slower than usual the drain takes longer and is still measured, while
    a pipe that stopped committing fails after ``timeout`` seconds.
    """
    consumer = Consumer(common(None, "sagalog-bench-drain") | {"group.id": group, "log_level": 4})
    try:
        partitions = consumer.list_topics(topic, timeout=15).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        deadline = time.monotonic() + timeout
        first: tuple[float, int] | None = None
        last = -1
        while time.monotonic() < deadline:
            try:
                found = consumer.committed(tps, timeout=10)
            except KafkaException as error:  # a coordinator still moving, on a new broker
                if not error.args[0].retriable() and error.args[0].name() != "NOT_COORDINATOR":
                    raise
                time.sleep(interval)
                continue
            committed = sum(max(tp.offset, 0) for tp in found)
            now = time.monotonic()
            if committed > last:  # progress: the pipe has another ``timeout`` to go on
                last, deadline = committed, now + timeout
            if first is None and committed > 0:
                first = (now, committed)
            if committed >= total and first is not None:
                if committed == first[1]:
                    raise OneCommit(f"{total} records went in one commit: make N larger")
                return Drain(committed - first[1], now - first[0])
            if not alive():
                raise RuntimeError(f"the process draining {topic} exited")
            time.sleep(interval)
        raise TimeoutError(
            f"{group} committed nothing more of {topic} for {timeout:.0f} s "
            f"({max(last, 0)} of {total} records)"
        )
    finally:
        consumer.close()


def processor(
    name: str = "processor",
    *args: str,
    env: dict[str, str] | None = None,
    code: Path | None = None,
) -> LocalProcess:
    """A ``sagas run`` of the order saga on the bench's store folder (not started), with
    ``env`` added to its environment; ``code``: the project tree it runs from (the current one
    by default), since ``python -m`` imports from the working directory first."""
    env = {"SAGALOG_STATE_DIR": str(STATE.resolve()), **(env or {})}
    log = BASE / "logs" / f"{name}.log"
    log.unlink(missing_ok=True)
    command = ["run", "examples.order_fulfillment.saga:OrderFulfillment"]
    arguments = [*command, "--partitions", str(PARTITIONS), *args]
    return LocalProcess(arguments, log, env=env, cwd=code.resolve() if code else None)


ASSIGNED = re.compile(r"assigned inbox partitions \[([\d, ]*)\]")


def owned_partitions(process: LocalProcess) -> set[int]:
    """The inbox partitions a processor owns, from the last assignment in its log."""
    found = ASSIGNED.findall(process.log_path.read_text())
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else set()


def stop_all(processes: Iterable[LocalProcess]) -> None:
    for process in processes:
        process.stop()


def machine() -> dict[str, object]:
    """The facts a reader needs to compare these numbers with theirs."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        meminfo = Path("/proc/meminfo").read_text()
        match = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
        memory_gb = round(int(match[1]) / 1024 / 1024, 1) if match else None
    except OSError:
        memory_gb = None
    kafka_version = "unknown"
    pom = Path("tools/kafka/pom.xml")
    if pom.exists():
        found = re.search(r"<kafka.version>(.*)</kafka.version>", pom.read_text())
        kafka_version = found[1] if found else kafka_version
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.version(),
        "librdkafka": confluent_kafka.libversion()[0],
        "kafka": kafka_version,
        "load_average_at_start": list(os.getloadavg()),
        "busy_processes_at_start": busy_processes(),
        "broker_settings": broker_settings(),
        "pure_core": pure_core_speed(),
    }


#: Inputs of the host's calibration (``pure_core_speed``): about 1 s of CPU at 20,000/s.
CALIBRATION_INPUTS = 20_000


def pure_core_speed(inputs: int = CALIBRATION_INPUTS) -> dict[str, Any]:
    """How fast this host runs the engine's own per-input work, without Kafka: the start shape
    of ``tools/profile_core.py``, best of 3 (``inputs_per_second`` holds the 3, ascending).

    The same code ran 1.8 times as fast on the host of 2026-12-05 as on that of 12-04
    (docs/benchmarks.md), and only this figure tells a faster host from a faster engine when
    two runs are compared. ``error`` instead when the script failed."""
    script = Path(__file__).resolve().parents[1] / "tools" / "profile_core.py"
    command = [sys.executable, str(script), "-n", str(inputs), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip() or f"exit code {done.returncode}")[-500:]}
    figures: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return figures


#: KIP-890's partition verification: a check per partition added to each transaction
#: (docs/benchmarks.md, 2026-12-04).
VERIFICATION = "transaction.partition.verification.enable"
#: Broker settings that shape a transaction's latency, recorded with every run: a run on a
#: broker without the verification is not comparable.
LATENCY_SETTINGS = (VERIFICATION,)


def broker_resources(client: AdminClient, **options: Any) -> list[ConfigResource]:
    """One broker-config resource per broker of the cluster (``options``: what to alter)."""
    brokers = sorted(client.list_topics(timeout=10).brokers)
    return [ConfigResource(ResourceType.BROKER, str(broker), **options) for broker in brokers]


def broker_settings() -> dict[str, str]:
    """``LATENCY_SETTINGS`` as the bench's broker has them (one value per setting; brokers that
    disagree are listed as ``a/b``); empty when the broker cannot be asked."""
    client = admin()
    try:
        resources = broker_resources(client)
        described = [f.result(timeout=10) for f in client.describe_configs(resources).values()]
    except KafkaException:
        return {}
    return {
        name: "/".join(sorted({entries[name].value for entries in described if name in entries}))
        for name in LATENCY_SETTINGS
    }


def busy_processes() -> list[str]:
    """Other test, saga or broker processes on the machine (not ours): noise for the numbers."""
    found = subprocess.run(
        ["pgrep", "-af", "sagas |pytest|kafka.Kafka"], capture_output=True, text=True, check=False
    )
    ours = f".kafka/{bootstrap_servers().rsplit(':', 1)[-1]}/"  # the bench's own broker
    mine = str(os.getpid())
    return [
        line
        for line in found.stdout.splitlines()
        if line and not line.startswith(mine) and ours not in line
    ]


WARM_UP_TOPIC = "bench.publisher.warmup"


def ready_publisher() -> Publisher:
    """A publisher whose producer already has its id and connection.

    A new idempotent producer's first records wait about half a second for its producer id,
    while their timestamps say when ``produce`` was called: a paced run's first orders would
    count that half second as latency. One record to a topic of the bench's own, acknowledged,
    gets it over with. (Schemas are not recorded: the warm-up saga already recorded them.)
    """
    publisher = Publisher(client_id="sagalog-bench", record_schemas=False)
    ensure_plain_topics([WARM_UP_TOPIC], partitions=1)
    event = plan_orders(1, 0.0, 0.0, seed=1, run_id="warm-publisher")[0].event
    publisher.publish(event, topic=WARM_UP_TOPIC)
    if publisher.flush(30):
        raise RuntimeError("the bench's publisher could not deliver its warm-up record")
    return publisher


def topic_ends(topic: str) -> dict[int, int]:
    """Each partition's end offset of ``topic`` now: where a later ``read_topic`` starts."""
    consumer = Consumer(consumer_config(None, "sagalog-bench", f"bench-{time.time_ns()}"))
    try:
        partitions = consumer.list_topics(topic, timeout=15).topics[topic].partitions
        return {p: watermarks(consumer, TopicPartition(topic, p))[1] for p in partitions}
    finally:
        consumer.close()


def read_topic(
    topic: str, start: dict[int, int] | None = None, per_partition: int | None = None
) -> list[Message]:
    """The committed records of ``topic`` from ``start`` (default: the beginning) to its end
    now, at most ``per_partition`` of each partition (read_committed, no group)."""
    consumer = Consumer(consumer_config(None, "sagalog-bench", f"bench-{time.time_ns()}"))
    records: list[Message] = []
    try:
        partitions = consumer.list_topics(topic, timeout=15).topics[topic].partitions
        ends = {p: watermarks(consumer, TopicPartition(topic, p))[1] for p in partitions}
        begin = {p: (start or {}).get(p, 0) for p in partitions}
        todo = {p for p in partitions if ends[p] > begin[p]}
        counts = dict.fromkeys(partitions, 0)
        consumer.assign([TopicPartition(topic, p, begin[p]) for p in todo])
        deadline = time.monotonic() + 300
        while todo and time.monotonic() < deadline:
            for message in consumer.consume(5000, timeout=0.2):
                p = message.partition() or 0
                if message.error() is None and p in todo:
                    records.append(message)
                    counts[p] += 1
            # The position moves past transaction markers too, so it reaches the end offset.
            for tp in consumer.position([TopicPartition(topic, p) for p in todo]):
                if (tp.offset or 0) >= ends[tp.partition] or counts[tp.partition] >= (
                    per_partition or 2**62
                ):
                    todo.discard(tp.partition)
    finally:
        consumer.close()
    return records
