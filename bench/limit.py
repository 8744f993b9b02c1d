"""The limit: a plain confluent-kafka transactional pipe in Python, nothing of Sagalog's.

It does the least any exactly-once processor must do: consume a batch, produce one record per
input, and every 100 ms commit one transaction holding the produced records and the consumed
offsets. Its records per second on the same broker, inputs and record sizes are the ceiling the
engine is compared with. ``python -m bench.limit SOURCE SINK GROUP`` runs the pipe until SIGTERM
(a separate OS process, like the processor); ``measure`` pre-fills SOURCE and times the drain.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from bench.common import BASE, delete_topics, fill, follow_drain, order_records
from stream_processors.kafka.config import consumer_config, producer_config
from stream_processors.kafka.topics import ensure_plain_topics

SOURCE, SINK, GROUP = "bench.limit.source", "bench.limit.sink", "bench.limit"
COMMIT_INTERVAL = 0.1


def pipe(source: str, sink: str, group: str) -> None:
    """Consume ``source``, produce each record to ``sink``, commit every 100 ms, until SIGTERM."""
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
            while True:
                try:
                    producer.produce(sink, key=message.key(), value=message.value())
                    break
                except BufferError:
                    producer.poll(0.01)
            offsets[message.partition() or 0] = (message.offset() or 0) + 1
        if began is not None and time.monotonic() - began >= COMMIT_INTERVAL:
            tps = [TopicPartition(source, p, o) for p, o in offsets.items()]
            for attempt in range(20):
                try:
                    producer.send_offsets_to_transaction(
                        tps, consumer.consumer_group_metadata(), 30
                    )
                    break
                except KafkaException as error:
                    if not error.args[0].retriable() or attempt == 19:
                        raise
                    time.sleep(0.05)
            producer.commit_transaction(30)
            offsets.clear()
            began = None
        producer.poll(0)
    consumer.close()


def measure(records: int, timeout: float = 300) -> dict[str, float]:
    """Pre-fill the pipe's source with ``records`` OrderPlaced inputs; time the pipe's drain."""
    delete_topics([SOURCE, SINK])
    ensure_plain_topics([SOURCE, SINK], partitions=8)
    fill(SOURCE, order_records(records, "limit"))
    log = (BASE / "logs" / "limit.log").resolve()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.limit", SOURCE, SINK, GROUP],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        drain = follow_drain(GROUP, SOURCE, records, timeout, lambda: process.poll() is None)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    return {
        "records": records,
        "measured_records": drain.records,
        "seconds": round(drain.seconds, 3),
        "records_per_second": round(drain.per_second, 1),
    }


if __name__ == "__main__":
    pipe(*sys.argv[1:4])
