"""The order saga with services in Java: examples/java_shipping on a real broker.

Sagalog's processor and the Python payments worker run as usual; shipping is the Java worker
(the Kafka Java client and Apache Avro, no Sagalog code), and the orders come from the Java
producer. The two languages share only Kafka, the headers and the Avro schemas: the saga ends
as each order's injected failure implies only if every record each side writes is read by the
other, and lands on the partition the other expects.

The Java build (Maven) is a session fixture and is skipped when its sources have not changed
since the last build; the first build on a machine downloads Avro and Maven's plugins.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Message

from examples.order_fulfillment.messages import (
    CreateShippingLabel,
    OrderPlaced,
    ShippingFailed,
    ShippingLabelCreated,
)
from sagas.local import LocalProcess
from stream_processors.codecs.avro import parse
from stream_processors.codecs.records import decode_record
from stream_processors.engine.routing import COMMAND_ID, INSTANCE
from stream_processors.kafka.topics import ensure_topics
from tests.conftest import KafkaCluster
from tests.integration.saga_harness import (
    REPO_ROOT,
    TOPICS,
    CommittedReader,
    JournalFollower,
    SagaProcesses,
    header_of,
    header_prefix,
    key_prefix,
    run_sagas,
    wait_for_log,
)

pytestmark = pytest.mark.kafka

JAVA_PROJECT = REPO_ROOT / "examples" / "java_shipping"
JAR = JAVA_PROJECT / "target" / "java-shipping.jar"
#: Written after a successful build: the build is skipped while no source is newer.
BUILT = JAVA_PROJECT / "target" / "built.stamp"
#: The Java producer's second schema version, as the test records it for orders.events.
ORDER_PLACED_V2 = "examples/java_shipping/OrderPlaced-v2.avsc"
SOURCE_TOPIC = OrderPlaced.__topic__
SHIPPING_TOPIC = CreateShippingLabel.__topic__
JAVA_GROUP = "java.worker.shipping"


def _build_inputs() -> list[Path]:
    """What the jar is made of: the pom, the Java sources and every schema it packs."""
    return [
        JAVA_PROJECT / "pom.xml",
        *JAVA_PROJECT.glob("*.avsc"),
        *(JAVA_PROJECT / "src").rglob("*.java"),
        *(REPO_ROOT / "schemas" / "examples" / "orders").glob("*.avsc"),
    ]


@pytest.fixture(scope="session")
def java_shipping_jar() -> Path:
    """The example's jar, built with Maven unless it is newer than all its inputs."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        message = f"{' and '.join(missing)} not found: the Java example needs Java 17+ and Maven"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    newest = max(path.stat().st_mtime for path in _build_inputs())
    if BUILT.exists() and JAR.exists() and BUILT.stat().st_mtime >= newest:
        return JAR
    build = subprocess.run(
        ["mvn", "-q", "-B", "package"],
        cwd=JAVA_PROJECT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if build.returncode != 0 or not JAR.exists():
        pytest.fail(f"mvn -q -B package failed:\n{(build.stdout + build.stderr)[-5000:]}")
    BUILT.touch()
    return JAR


@dataclass
class JavaServices:
    """The saga's processor, the Python payments worker and the Java shipping worker."""

    kafka: KafkaCluster
    jar: Path
    processes: SagaProcesses
    shipping: LocalProcess

    def produce(self, run_id: str, count: int, *options: str) -> dict[str, str]:
        """Place ``count`` orders with the Java producer; returns {order id: expected outcome}."""
        command = ["java", "-jar", str(self.jar), "produce", "--bootstrap", self.kafka.bootstrap]
        command += ["--run-id", run_id, "--count", str(count), *options]
        placed = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert placed.returncode == 0, f"{' '.join(command)}:\n{placed.stdout}{placed.stderr}"
        lines = [json.loads(line) for line in placed.stdout.splitlines() if line.strip()]
        assert len(lines) == count, placed.stdout[-2000:] + placed.stderr[-2000:]
        return {line["order_id"]: line["expected"] for line in lines}


def _assigned(log: str) -> set[int]:
    """The command partitions the Java worker logged as assigned (positions known)."""
    found: set[int] = set()
    for listed in re.findall(rf"assigned {re.escape(SHIPPING_TOPIC)} partitions \[([^\]]*)\]", log):
        found |= {int(p) for p in re.findall(r"(\d+)@", listed)}
    return found


@pytest.fixture(scope="module")
def services(
    kafka: KafkaCluster, java_shipping_jar: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JavaServices]:
    """Sagalog's processor, the payments worker in Python and the shipping worker in Java.

    The Python shipping worker does not run: every shipping command is the Java worker's.
    """
    ensure_topics(TOPICS, kafka.bootstrap)
    tmp = tmp_path_factory.mktemp("java-services")
    processes = SagaProcesses(kafka.bootstrap, tmp / "logs")
    try:
        processes.processor(tmp / "state")
        processes.worker("payments")
        # A new group starts at the topic's end: commands of earlier tests are not this run's.
        # It is serving once it logs its partitions with their positions.
        worker = ["java", "-jar", str(java_shipping_jar), "worker", "--bootstrap", kafka.bootstrap]
        shipping = processes.program(
            "java-shipping", [*worker, "--group", JAVA_GROUP, "--offset-reset", "latest"]
        )
        wanted = set(range(TOPICS.partitions))
        wait_for_log(shipping, lambda log: _assigned(log) >= wanted, 60, "shipping assignment")
        yield JavaServices(kafka, java_shipping_jar, processes, shipping)
    finally:
        processes.stop_all()


def _reference(prefix: str, key: str) -> str:
    """services.py's reference: what the Java worker must derive from the same key."""
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@dataclass
class RunReaders:
    """What one run reads back, each from the topic's end before the run's orders are placed."""

    journal: JournalFollower
    orders: CommittedReader
    commands: CommittedReader
    replies: CommittedReader
    dlq: CommittedReader

    @classmethod
    def before(cls, bootstrap: str, prefix: str) -> RunReaders:
        def shipping_reply(message: Message) -> bool:
            return key_prefix(prefix)(message) and "/shipping/" in (
                header_of(message, COMMAND_ID) or ""
            )

        return cls(
            journal=JournalFollower(bootstrap, prefix),
            orders=CommittedReader(bootstrap, SOURCE_TOPIC, from_end=True, keep=key_prefix(prefix)),
            commands=CommittedReader(
                bootstrap, SHIPPING_TOPIC, from_end=True, keep=header_prefix(INSTANCE, prefix)
            ),
            replies=CommittedReader(bootstrap, TOPICS.inbox, from_end=True, keep=shipping_reply),
            dlq=CommittedReader(bootstrap, TOPICS.dlq, from_end=True, keep=key_prefix(prefix)),
        )

    def close(self) -> None:
        for reader in (self.journal.reader, self.orders, self.commands, self.replies, self.dlq):
            reader.close()


@pytest.fixture
def readers(kafka: KafkaCluster) -> Iterator[tuple[str, RunReaders]]:
    """A fresh run id (order ids ``order-<run>...``) and its readers."""
    run = uuid.uuid4().hex[:8]
    made = RunReaders.before(kafka.bootstrap, f"order-{run}")
    try:
        yield run, made
    finally:
        made.close()


def _check_run(services: JavaServices, readers: RunReaders, expected: dict[str, str]) -> None:
    """Every saga ends as its order implies; each shipping command got one right reply from
    the Java worker; nothing of the run was dead-lettered."""
    outcomes = readers.journal.wait_for_outcomes(
        expected, timeout=90, diagnostics=services.processes.log_tails
    )
    wrong = {order: (outcomes[order], want) for order, want in expected.items()
             if outcomes[order] != want}  # fmt: skip
    assert not wrong, (
        f"{len(wrong)} sagas ended otherwise (got, expected): {list(wrong.items())[:5]}"
    )

    # Every saga is done, so every shipping command and its reply are committed by now.
    commands = Counter(header_of(m, COMMAND_ID) for m in readers.commands.read_to_end())
    shipped = {order for order, want in expected.items() if want != "failed"}
    assert {f"order_fulfillment/{order}/shipping/1" for order in shipped} == set(commands)
    assert set(commands.values()) == {1}, "a shipping command was sent twice"
    replies = readers.replies.read_to_end()
    answered = Counter(header_of(m, COMMAND_ID) for m in replies)
    assert answered == commands, "each shipping command must get exactly one reply"
    for message in replies:
        reply = decode_record(message.value())
        order = reply.order_id  # type: ignore[attr-defined]
        assert message.key() == order.encode()  # keyed by sagalog.instance
        if expected[order] == "compensated":
            assert reply == ShippingFailed(order_id=order, reason="cannot ship there")
        else:
            key = f"order_fulfillment/{order}/shipping"
            assert reply == ShippingLabelCreated(
                order_id=order, tracking_number=_reference("trk", key)
            )

    dead = readers.dlq.read_to_end()
    assert not dead, [(m.key(), header_of(m, "sagalog.dlq.reason")) for m in dead[:5]]


def _fingerprints(readers: RunReaders) -> set[bytes]:
    """The writer fingerprints of the run's orders on the source topic (single-object header)."""
    return {(m.value() or b"")[2:10] for m in readers.orders.read_to_end()}


def test_java_shipping_worker_serves_300_orders_from_the_java_producer(
    services: JavaServices, readers: tuple[str, RunReaders]
) -> None:
    run, read = readers
    rates = ["--payment-failure-rate", "0.1", "--shipping-failure-rate", "0.1"]
    expected = services.produce(run, 300, "--seed", "17", *rates)
    assert set(Counter(expected.values())) == {"completed", "failed", "compensated"}
    _check_run(services, read, expected)
    assert _fingerprints(read) == {OrderPlaced.__avro__.fingerprint}


def test_orders_in_order_placed_v2_complete_once_the_schema_is_registered(
    services: JavaServices, readers: tuple[str, RunReaders]
) -> None:
    """A foreign writer's newer schema, recorded with ``sagas schemas register``, is read as
    the saga's OrderPlaced (the added field dropped): nothing is dead-lettered."""
    run, read = readers
    run_sagas(
        services.kafka.bootstrap, "schemas", "register", ORDER_PLACED_V2, "--topic", SOURCE_TOPIC
    )
    rates = ["--payment-failure-rate", "0.1", "--shipping-failure-rate", "0.1"]
    expected = services.produce(run, 100, "--seed", "29", "--v2", *rates)
    _check_run(services, read, expected)
    v2 = parse(json.loads((REPO_ROOT / ORDER_PLACED_V2).read_text()))
    assert v2.fingerprint != OrderPlaced.__avro__.fingerprint
    assert _fingerprints(read) == {v2.fingerprint}
