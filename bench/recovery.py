"""Recovery: restoring snapshots, replaying the journal, and a kill -9 of one of two processors.

- ``restore``: the snapshots changelog is filled with N real snapshots (the engine's own
  encoding of an order saga just started, one per instance, on its instance's partition); a
  processor starts on an empty store and restores them all. The rate is the sum of records over
  the sum of seconds of the processor's own per-partition restore log lines.
- ``replay``: ``stream_processors.tools.replay.fold_partition`` over every journal partition, the
way
  ``sagas replay verify|rebuild`` reads it: journal entries decoded and folded per second.
- ``failover``: two processors and the workers under a steady load; one processor is killed
  with SIGKILL; the gap is the time from the kill to the first journal entry the survivor writes
  in each partition the dead one owned (the largest such gap is reported). Every saga must still
  end as planned.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psutil  # type: ignore[import-untyped]
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.common import (
    DEFINITION,
    PARTITIONS,
    TOPICS,
    fresh_saga_topics,
    owned_partitions,
    processor,
    ready_publisher,
)
from bench.end_to_end import FAILURES, SEED, started
from examples.order_fulfillment.measure import Results, now_ms, publish
from examples.order_fulfillment.scenario import plan_orders
from sagas.local import LocalProcess, journal_end, journal_outcomes_from
from stream_processors.core.decide import Input, decide
from stream_processors.core.instance import Instance, encode_snapshot
from stream_processors.engine.routing import SCHEDULE
from stream_processors.engine.transaction import planned
from stream_processors.kafka.config import consumer_config, producer_config
from stream_processors.kafka.reading import watermarks
from stream_processors.tools.replay import fold_partition

RESTORED = re.compile(r"restored partition (\d+): (\d+) changelog records .* in ([\d.]+)s")


def fill_snapshots(count: int, topic: str = TOPICS.snapshots) -> None:
    """``count`` snapshots of just-started order sagas in the changelog (or ``topic``), one per
    instance, with the schedule header the processor writes."""
    order = plan_orders(1, 0.0, 0.0, seed=1, run_id="restore")[0].event
    template = decide(DEFINITION, None, Input(order, order.encode()), now_ms()).instance
    assert template is not None
    producer = Producer(producer_config(None, "sagalog-bench-fill") | {"linger.ms": 20})
    encode = _snapshot_encoder(template)
    headers: list[tuple[str, str | bytes | None]] = [(SCHEDULE, planned(template)[2])]
    for number in range(count):
        instance_id = _restore_id(number)
        value = encode(instance_id)
        while True:
            try:
                producer.produce(topic, key=instance_id.encode(), value=value, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
        if number % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("snapshots not acknowledged")


def _restore_id(number: int) -> str:
    return f"order-restore-{number:07d}"


def _encoded(template: Instance, instance_id: str) -> bytes:
    data = replace(template.data, order_id=instance_id)  # type: ignore[type-var]
    return encode_snapshot(replace(template, instance_id=instance_id, data=data))


def _snapshot_encoder(template: Instance) -> Callable[[str], bytes]:
    """The encoded snapshot of ``template`` as instance (and order) ``instance_id``, made by
    writing the id into one encoding where the encoder puts it: the ids all have the same
    length, so only those characters differ (Avro strings are length-prefixed). Checked against
    the encoder on a few ids (it falls back to encoding each, should that fail); the schedule
    header is the same for all. Encoding each one took most of the memory phase's fill time."""
    first, second = _restore_id(0), _restore_id(1)
    encoded, other = _encoded(template, first), _encoded(template, second)
    size = len(first)
    at = [
        i
        for i in range(len(encoded) - size + 1)
        if encoded[i : i + size] == first.encode() and other[i : i + size] == second.encode()
    ]

    def encode(instance_id: str) -> bytes:
        value = bytearray(encoded)
        for i in at:
            value[i : i + size] = instance_id.encode()
        return bytes(value)

    for number in (0, 1, 1_234_567, 9_999_999):
        if encode(_restore_id(number)) != _encoded(template, _restore_id(number)):
            return lambda instance_id: _encoded(template, instance_id)
    return encode


def restore(count: int) -> tuple[dict[str, Any], LocalProcess]:
    """Restore ``count`` snapshots; returns the figures and the processor, still running."""
    fresh_saga_topics()
    fill_snapshots(count)
    process = processor().start()
    process.wait_for_metrics(
        lambda m: (
            m.get("sagalog_restored_records_total", 0) >= count
            and m.get("sagalog_restore_remaining_records") == 0
        ),
        timeout=900,
        what=f"the processor did not restore {count} snapshots",
    )
    records = seconds = 0.0
    for match in RESTORED.finditer(process.log_path.read_text()):
        records += int(match[2])
        seconds += float(match[3])
    return {
        "snapshots": count,
        "records_restored": int(records),
        "seconds": round(seconds, 3),
        "snapshots_per_second": round(records / seconds, 1) if seconds else None,
    }, process


def rss_bytes(process: LocalProcess, settle: float = 3.0) -> int:
    assert process.popen is not None
    time.sleep(settle)
    return int(psutil.Process(process.popen.pid).memory_info().rss)


def replay() -> dict[str, Any]:
    """Fold every partition of the journal as it is now (after the end-to-end runs)."""
    entries = 0
    instances = 0

    def counted(n: int) -> None:
        nonlocal entries
        entries += n

    began = time.monotonic()
    for partition in range(PARTITIONS):
        instances += len(fold_partition(DEFINITION, TOPICS.journal, partition, progress=counted))
    seconds = time.monotonic() - began
    return {
        "journal_entries": entries,
        "instances": instances,
        "seconds": round(seconds, 3),
        "entries_per_second": round(entries / seconds, 1) if seconds else None,
    }


def _entry_times(start: dict[int, int]) -> dict[int, list[int]]:
    """Each journal partition's entry timestamps (the entries' own ``at_ms``), from ``start``."""
    consumer = Consumer(consumer_config(None, "sagalog-bench", f"bench-{time.time_ns()}"))
    times: dict[int, list[int]] = {p: [] for p in start}
    try:
        ends = {p: watermarks(consumer, TopicPartition(TOPICS.journal, p))[1] for p in start}
        consumer.assign([TopicPartition(TOPICS.journal, p, o) for p, o in start.items()])
        tps = [TopicPartition(TOPICS.journal, p) for p in start]
        while any((tp.offset or 0) < ends[tp.partition] for tp in consumer.position(tps)):
            for message in consumer.consume(5000, timeout=0.2):
                if message.error() is None:
                    times[message.partition() or 0].append(message.timestamp()[1])
    finally:
        consumer.close()
    return times


def failover(rate: float, seconds: float) -> dict[str, Any]:
    """Two processors under ``rate`` orders per second; SIGKILL one after 5 s of load."""
    processes, run_id = started(processors=2)
    survivor, victim = processes["processor"], processes["processor-2"]
    try:
        for process in (survivor, victim):
            process.wait_for_metrics(
                lambda m: m.get("sagalog_restore_remaining_records") == 0, 60, "no partitions"
            )
        victim_partitions = sorted(owned_partitions(victim))
        warm = 5.0
        count = round(rate * (warm + seconds))
        orders = plan_orders(count, *FAILURES, seed=SEED + 2, run_id=f"{run_id}-kill")
        start = journal_end(TOPICS.journal)
        published: dict[str, int] = {}
        publisher = ready_publisher()
        load = threading.Thread(
            target=lambda: published.update(publish(orders, rate=rate, publisher=publisher))
        )
        load.start()
        time.sleep(warm)
        killed_ms = now_ms()
        victim.kill()
        load.join()
        ids = [order.event.order_id for order in orders]
        outcomes = journal_outcomes_from(TOPICS.journal, start, ids, 120)
        results = Results(orders, published, outcomes)
        times = _entry_times(start)
    finally:
        codes = {name: process.stop() for name, process in processes.items()}
    gaps = {p: min((t for t in times[p] if t > killed_ms), default=None) for p in victim_partitions}
    resumed = [t - killed_ms for t in gaps.values() if t is not None]
    return {
        "offered_per_second": rate,
        "orders": count,
        "finished": len(outcomes),
        "mismatches": len(results.mismatches),
        "missing": len(results.missing),
        "victim_partitions": victim_partitions,
        "resumed_all": len(resumed) == len(victim_partitions),
        "seconds_to_resume": round(max(resumed) / 1000, 2) if resumed else None,
        "seconds_to_first_resumed_partition": round(min(resumed) / 1000, 2) if resumed else None,
        "exit_codes": codes,
    }
