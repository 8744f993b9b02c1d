"""The limits: plain confluent-kafka transactional pipes in Python, nothing of Sagalog's.

Each does the least any exactly-once processor must do: consume a batch, produce records for
each input, and every 100 ms commit one transaction holding the produced records and the
consumed offsets. What it produces per input is its *shape* (``Output``):

- the **limit pipe** copies each input to one sink record (``measure``);
- the **same-shape pipe** (``bench.same_shape``) produces, per input, the very records the
  engine wrote for one input (journal entries, command, snapshot: same bytes, headers, topics
  and partitions), with no logic.

``python -m bench.limit SOURCE GROUP SHAPE.json`` runs a pipe until SIGTERM (a separate OS
process, like the processor); ``run_pipe`` starts one on a pre-filled source and times its drain.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from bench.common import (
    BASE,
    Drain,
    OneCommit,
    coordinator_ready,
    delete_topics,
    fill,
    follow_drain,
    order_records,
)
from stream_processors.kafka.config import consumer_config, producer_config
from stream_processors.kafka.topics import ensure_plain_topics

SOURCE, SINK, GROUP = "bench.limit.source", "bench.limit.sink", "bench.limit"
COMMIT_INTERVAL = 0.1


@dataclass(frozen=True)
class Output:
    """One record a pipe produces per input, keyed by the input's key.

    ``value`` None copies the input's value. ``same_partition`` writes it to the input's
    partition number (the engine's journal and snapshots, co-partitioned with the inbox);
    otherwise the producer's partitioner places it by key (the engine's commands).
    """

    topic: str
    value: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    same_partition: bool = False

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["value"] = None if self.value is None else base64.b64encode(self.value).decode()
        out["headers"] = [[k, base64.b64encode(v).decode()] for k, v in self.headers]
        return out

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Output:
        value = data.get("value")
        headers = data.get("headers") or []
        assert isinstance(headers, list)
        return cls(
            topic=str(data["topic"]),
            value=None if value is None else base64.b64decode(str(value)),
            headers=[(str(k), base64.b64decode(v)) for k, v in headers],
            same_partition=bool(data.get("same_partition")),
        )


def save_shape(outputs: Sequence[Output], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([output.to_json() for output in outputs]))


def load_shape(path: Path) -> list[Output]:
    return [Output.from_json(item) for item in json.loads(path.read_text())]


def _produce(producer: Producer, message: Message, outputs: Sequence[Output]) -> None:
    partition = message.partition() or 0
    for output in outputs:
        value = message.value() if output.value is None else output.value
        headers: list[tuple[str, str | bytes | None]] = list(output.headers)
        while True:
            try:
                if output.same_partition:
                    producer.produce(output.topic, value, message.key(), partition, headers=headers)
                else:
                    producer.produce(output.topic, value, message.key(), headers=headers)
                break
            except BufferError:
                producer.poll(0.01)


def _commit(producer: Producer, consumer: Consumer, source: str, offsets: dict[int, int]) -> None:
    tps = [TopicPartition(source, p, o) for p, o in offsets.items()]
    for attempt in range(20):
        try:
            producer.send_offsets_to_transaction(tps, consumer.consumer_group_metadata(), 30)
            break
        except KafkaException as error:
            if not error.args[0].retriable() or attempt == 19:
                raise
            time.sleep(0.05)
    producer.commit_transaction(30)


def pipe(source: str, group: str, outputs: Sequence[Output]) -> None:
    """Consume ``source``, produce ``outputs`` per input, commit every 100 ms, until SIGTERM."""
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    producer = Producer(producer_config(None, "bench-limit", f"bench-limit-{uuid.uuid4().hex}"))
    producer.init_transactions(60)
    consumer = Consumer(consumer_config(None, "bench-limit", group))
    consumer.subscribe([source])
    offsets: dict[int, int] = {}
    began: float | None = None
    while not stopping:
        for message in consumer.consume(1000, timeout=COMMIT_INTERVAL):
            if message.error():
                continue
            if began is None:
                producer.begin_transaction()
                began = time.monotonic()
            _produce(producer, message, outputs)
            offsets[message.partition() or 0] = (message.offset() or 0) + 1
        if began is not None and time.monotonic() - began >= COMMIT_INTERVAL:
            _commit(producer, consumer, source, offsets)
            offsets.clear()
            began = None
        producer.poll(0)
    consumer.close()


def run_pipe(
    source: str, group: str, outputs: Sequence[Output], records: int, timeout: float
) -> Drain:
    """Run a pipe process over a pre-filled ``source`` of ``records``; time its drain. A drain
    seen as one commit (on a fresh broker, the first pipe's commits can stay unreadable until
    it is done) is run once more by a new group over the same records: the second run meets
    coordinators already loaded."""
    try:
        return _run_pipe(source, group, outputs, records, timeout)
    except OneCommit as error:
        print(f"{group}: {error}; draining again with a new group")
        return _run_pipe(source, f"{group}-again", outputs, records, timeout)


def _run_pipe(
    source: str, group: str, outputs: Sequence[Output], records: int, timeout: float
) -> Drain:
    log = (BASE / "logs" / f"{group}.log").resolve()
    shape = BASE / f"{group}.shape.json"
    save_shape(outputs, shape)
    log.parent.mkdir(parents=True, exist_ok=True)
    coordinator_ready(group, source)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.limit", source, group, str(shape)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        return follow_drain(group, source, records, timeout, lambda: process.poll() is None)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def measure(records: int, timeout: float = 300) -> dict[str, float]:
    """Pre-fill the pipe's source with ``records`` OrderPlaced inputs; time the pipe's drain."""
    delete_topics([SOURCE, SINK])
    ensure_plain_topics([SOURCE, SINK], partitions=8)
    fill(SOURCE, order_records(records, "limit"))
    drain = run_pipe(SOURCE, GROUP, [Output(SINK)], records, timeout)
    return {
        "records": records,
        "measured_records": drain.records,
        "seconds": round(drain.seconds, 3),
        "records_per_second": round(drain.per_second, 1),
    }


if __name__ == "__main__":
    pipe(sys.argv[1], sys.argv[2], load_shape(Path(sys.argv[3])))
