"""Would several transactional producers per process ("lanes") shorten a commit?

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python tools/transaction_lanes.py [--records 1]
    ... python tools/transaction_lanes.py --unverified   # with the broker's check off

The question behind it: at a quarter of saturation, one processor transaction writes to up to 32
partitions (journal, snapshots and two command topics, 8 partitions each), and its flush grows
with the partitions it writes (``tools/flush_by_partitions.py``). Kafka Streams' first
exactly-once mode gave each task a producer of its own. Split the same work over N producers,
each owning the inbox partitions p with p % N == its number, and committing at the same time
from threads of its own: does a round of commits then end sooner?

Each round writes ``--records`` 150-byte records to each of the 32 partitions, adds the next
offset of the lane's inbox partitions, and commits. The p50 and p90 of a round's wall time
over ``--rounds`` rounds (10 warm-up rounds not counted), for 1, 2, 4 and 8 lanes, repeated
``--repeats`` times. Lanes share nothing in the process but the GIL, which every client call
releases. The answer on this machine is in docs/benchmarks.md, 2026-12-04.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import typer  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from bench.common import delete_topics  # noqa: E402
from stream_processors.kafka.config import consumer_config, producer_config  # noqa: E402
from stream_processors.kafka.topics import ensure_plain_topics  # noqa: E402
from tools.flush_by_partitions import verification_restored, verify_partitions  # noqa: E402

PARTITIONS = 8
OUTPUTS = ("journal", "snapshots", "command-a", "command-b")
LANES = (1, 2, 4, 8)
WARM_UP = 10


class Lane:
    """One transactional producer and the inbox partitions it owns."""

    def __init__(self, name: str, owned: list[int], consumed: Consumer) -> None:
        self.producer = Producer(producer_config(None, "sagalog-lanes", name))
        self.producer.init_transactions(30)
        self.owned = owned
        self.group = consumed.consumer_group_metadata()
        self.next = dict.fromkeys(owned, 0)

    def commit(self, outputs: list[str], inbox: str, records: int) -> None:
        """One transaction: ``records`` records to each owned partition of every output."""
        producer = self.producer
        producer.begin_transaction()
        for partition in self.owned:
            for topic in outputs:
                for _ in range(records):
                    producer.produce(topic, value=b"x" * 150, key=b"k", partition=partition)
            self.next[partition] += 1
        producer.flush(30)
        offsets = [TopicPartition(inbox, p, self.next[p]) for p in self.owned]
        producer.send_offsets_to_transaction(offsets, self.group, 30)
        producer.commit_transaction(30)


def round_ms(lanes: list[Lane], outputs: list[str], inbox: str, records: int) -> float:
    """The wall time of one round: every lane commits once, all at the same time."""
    began = time.perf_counter()
    if len(lanes) == 1:
        lanes[0].commit(outputs, inbox, records)
    else:
        threads = [
            threading.Thread(target=lane.commit, args=(outputs, inbox, records)) for lane in lanes
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return (time.perf_counter() - began) * 1000


def measured(count: int, topics: list[str], records: int, rounds: int, run: str) -> str:
    """'p50  p90' of ``rounds`` rounds with ``count`` lanes."""
    *outputs, inbox = topics
    consumed = Consumer(consumer_config(None, "sagalog-lanes", f"sagalog-lanes-{run}"))
    lanes = [
        Lane(f"sagalog-lanes-{run}-{count}-{n}", list(range(n, PARTITIONS, count)), consumed)
        for n in range(count)
    ]
    try:
        times = [round_ms(lanes, outputs, inbox, records) for _ in range(WARM_UP + rounds)]
        kept = sorted(times[WARM_UP:])
        return f"{statistics.median(kept):6.1f} ms  {kept[int(0.9 * (len(kept) - 1))]:6.1f} ms"
    finally:
        for lane in lanes:
            lane.producer.flush(10)
        consumed.close()


def main(
    records: Annotated[int, typer.Option(help="Records per partition per round")] = 1,
    rounds: Annotated[int, typer.Option(help="Timed rounds per row")] = 50,
    repeats: Annotated[int, typer.Option(help="Times the whole table is measured")] = 2,
    unverified: Annotated[
        bool, typer.Option(help="With the broker's partition verification off (turned on after)")
    ] = False,
) -> None:
    run = uuid.uuid4().hex[:8]
    topics = [f"sagalog-lanes-{run}-{name}" for name in (*OUTPUTS, "inbox")]
    ensure_plain_topics(topics, None, PARTITIONS)
    try:
        with verification_restored():
            verify_partitions(not unverified)
            print(f"{PARTITIONS * len(OUTPUTS)} partitions, {records} record(s) each per round")
            print("repeat  lanes  round p50  round p90")
            for repeat in range(repeats):
                for count in LANES:
                    row = measured(count, topics, records, rounds, run)
                    print(f"{repeat:6d}  {count:5d}  {row}", flush=True)
    finally:
        delete_topics(topics)


if __name__ == "__main__":
    typer.run(main)
