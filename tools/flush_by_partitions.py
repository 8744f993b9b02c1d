"""How long a transaction's flush and commit take, by the number of partitions it writes.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python tools/flush_by_partitions.py [--rounds 25]
    ... python tools/flush_by_partitions.py --verification   # the broker's check on and off

One transactional producer configured as the engine's (``producer_config``) writes one 200-byte
record to each of P partitions of fresh 8-partition topics, then flushes and commits; the p50 of
each over ``--rounds`` transactions, for P from 1 to 48. librdkafka sends one partition per
Produce request, at most 5 in flight per connection for an idempotent producer, so the flush
grows with P: the floor under each hop of a saga at moderate load (docs/benchmarks.md,
2026-12-03 16:05). On a broker started a minute before, every figure was several times higher
and erratic: run it on a broker that has been working for a while.

``--verification`` times each row twice, interleaved, with the broker's
``transaction.partition.verification.enable`` (KIP-890 part 1, on by default since Kafka 3.6)
on and off, and leaves it on. The broker then checks with the transaction coordinator, before it
appends the first records of a transaction to a partition, that the partition is in the
transaction: a round trip inside the broker that a librdkafka producer pays on top of its own
AddPartitionsToTxn (docs/benchmarks.md, 2026-12-04). The check guards against hanging
transactions, so this is a measurement, never a setting to run with.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import typer  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry  # type: ignore[attr-defined]  # noqa: E402

from bench.common import VERIFICATION, admin, broker_resources, delete_topics  # noqa: E402
from stream_processors.kafka.config import producer_config  # noqa: E402
from stream_processors.kafka.topics import ensure_plain_topics  # noqa: E402

PARTITIONS = 8
TOPICS = 6
COUNTS = (1, 2, 4, 8, 16, 32, 48)
WARM_UP = 20  # transactions over every partition before the timed ones


def fresh_topics() -> list[str]:
    names = [f"sagalog-flush-{uuid.uuid4().hex[:8]}-{n}" for n in range(TOPICS)]
    ensure_plain_topics(names, None, PARTITIONS)
    return names


def timed(producer: Producer, partitions: list[tuple[str, int]]) -> tuple[float, float]:
    """(flush ms, commit ms) of one transaction writing a record to each of ``partitions``."""
    producer.begin_transaction()
    for topic, partition in partitions:
        producer.produce(topic, value=b"x" * 200, key=b"k", partition=partition)
    began = time.perf_counter()
    producer.flush(30)
    flushed = time.perf_counter()
    producer.commit_transaction(30)
    return (flushed - began) * 1000, (time.perf_counter() - flushed) * 1000


def verify_partitions(enabled: bool) -> None:
    """Set the brokers' partition verification, broker by broker."""
    client = admin()
    entry = ConfigEntry(
        VERIFICATION,
        "true" if enabled else "false",
        incremental_operation=AlterConfigOpType.SET,
    )
    resources = broker_resources(client, incremental_configs=[entry])
    for future in client.incremental_alter_configs(resources).values():
        future.result()


@contextmanager
def verification_restored() -> Iterator[None]:
    """Whatever happens inside, the broker verifies partitions again afterwards."""
    try:
        yield
    finally:
        verify_partitions(True)


def row(producer: Producer, partitions: list[tuple[str, int]], rounds: int) -> str:
    """'flush p50  commit p50' of ``rounds`` transactions over ``partitions``."""
    times = [timed(producer, partitions) for _ in range(rounds)]
    flush = statistics.median(t[0] for t in times)
    commit = statistics.median(t[1] for t in times)
    return f"{flush:6.1f} ms  {commit:7.1f} ms"


def main(
    rounds: Annotated[int, typer.Option(help="Transactions per row")] = 25,
    verification: Annotated[
        bool, typer.Option(help="Each row with the broker's partition verification on, then off")
    ] = False,
) -> None:
    names = fresh_topics()
    every = [(topic, p) for topic in names for p in range(PARTITIONS)]
    producer = Producer(producer_config(None, "sagalog-flush", f"sagalog-flush-{uuid.uuid4()}"))
    producer.init_transactions(30)
    try:
        # Not counted: the first transactions find the coordinator, and the first records on a
        # new partition were 3-10x slower than the later ones (a broker just started, more).
        for _ in range(WARM_UP):
            timed(producer, every)
        if not verification:
            print("partitions  flush p50  commit p50")
            for count in COUNTS:
                print(f"{count:10d}  {row(producer, every[:count], rounds)}", flush=True)
            return
        with verification_restored():
            print("partitions  verified: flush p50  commit p50   unverified: flush p50  commit p50")
            for count in COUNTS:
                verify_partitions(True)
                on = row(producer, every[:count], rounds)
                verify_partitions(False)
                off = row(producer, every[:count], rounds)
                print(f"{count:10d}            {on}              {off}", flush=True)
    finally:
        producer.flush(10)
        delete_topics(names)


if __name__ == "__main__":
    typer.run(main)
