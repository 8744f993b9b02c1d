"""The instance index (``sagas list``): query time at 1,000,000 instances, and how far behind a
live snapshots changelog it stays.

- ``query``: synthetic order-saga instances (statuses, times over 30 days, 100,000 customers)
  go through ``row_of`` into a fresh index file, with no broker; then each query ``sagas list``
  makes is timed (the page and the counts by status it prints with it): the 100 most recent
  failed, a field of the state equal to a value, the counts of everything.
- ``lag``: snapshots are produced to a fresh changelog for ``seconds``, paced at ``rate`` per
  second and then as fast as one producer can, while another process follows it with
  ``IndexFeed`` (what ``sagas index --follow`` runs). Lag of a batch is the time from the write
  of its oldest record to the commit of the SQLite transaction that holds it.

``python -m bench.index_query [--instances N] [--seconds S] [--rate R]``, or the ``index``
phase of ``python -m bench``.
"""

from __future__ import annotations

import multiprocessing
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from bench.common import admin, delete_topics
from examples.order_fulfillment.messages import OrderState
from stream_processors.core.instance import Instance, Status, StepState, StepStatus, encode_snapshot
from stream_processors.kafka.config import producer_config
from stream_processors.tools.index import Change, FieldEquals, Filters, Index, Page, row_of
from stream_processors.tools.index_feed import FOLLOW_POLL, IndexFeed

TOPIC = "bench_index.snapshots"
#: Snapshots an order saga writes: at most one per input (start, payment reply, shipping reply,
#: and the odd timer), fewer when its inputs share a transaction; 3.4 were counted on a lightly
#: loaded run. The changelog's rate at saturation is taken as this x sagas/s, an upper bound.
SNAPSHOTS_PER_SAGA = 5
PARTITIONS = 8
DAY_MS = 24 * 3600 * 1000
#: The share of each status among the synthetic instances (most have finished).
MIX = (
    (Status.COMPLETED, 0.80),
    (Status.RUNNING, 0.08),
    (Status.COMPENSATED, 0.05),
    (Status.FAILED, 0.04),
    (Status.NEEDS_ATTENTION, 0.02),
    (Status.COMPENSATING, 0.01),
)
CUSTOMER = Filters(fields=(FieldEquals("customer_id", "customer-004242"),))
STEP = StepState(StepStatus.PENDING, "cmd", 1, 0, node="payment")


def synthetic(number: int, rng: random.Random, now_ms: int) -> Instance:
    """One order-saga instance as a processor would snapshot it."""
    status = rng.choices([s for s, _ in MIX], [w for _, w in MIX])[0]
    started = now_ms - rng.randrange(30 * DAY_MS)
    active = status in (Status.RUNNING, Status.COMPENSATING)
    return Instance(
        instance_id=f"order-{number:08d}",
        saga_version=rng.choice((1, 1, 1, 2)),
        status=status,
        seq=rng.randrange(3, 12),
        started_at_ms=started,
        updated_at_ms=started + rng.randrange(60_000),
        reason="payment: PaymentFailed" if status is Status.FAILED else None,
        steps={"payment": STEP} if active else {},
        completed=(),
        data=OrderState(
            order_id=f"order-{number:08d}",
            customer_id=f"customer-{rng.randrange(100_000):06d}",
            amount_cents=rng.randrange(500, 50_000),
            card_token="tok_visa",
            postcode="10115",
        ),
    )


def build(path: Path, count: int, batch: int = 20_000) -> float:
    """Fill a fresh index with ``count`` instances through ``row_of``; returns rows/s."""
    index = Index(path)
    rng = random.Random(13)
    now = int(time.time() * 1000)
    began = time.perf_counter()
    for first in range(0, count, batch):
        changes = [
            Change(n % PARTITIONS, n, f"order-{n:08d}", row_of(synthetic(n, rng, now), n % 8))
            for n in range(first, min(count, first + batch))
        ]
        index.apply(changes)
    seconds = time.perf_counter() - began
    index.close()
    return count / seconds


def _timed(run: Callable[[], object], repeat: int = 5) -> dict[str, float]:
    """Cold (first) and median of ``repeat`` warm runs, in milliseconds."""
    times = []
    for _ in range(repeat + 1):
        began = time.perf_counter()
        run()
        times.append((time.perf_counter() - began) * 1000)
    return {"first_ms": round(times[0], 1), "median_ms": round(statistics.median(times[1:]), 1)}


def _listing(index: Index, filters: Filters) -> Callable[[], object]:
    """What ``sagas list`` asks the index: one page of 100 and the counts by status."""
    return lambda: (index.page(filters, Page(limit=100)), index.counts(filters))


def measure_query(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sagalog-index-") as folder:
        path = Path(folder) / "index.sqlite3"
        rows_per_second = build(path, count)
        index = Index(path)
        try:
            unindexed = _timed(_listing(index, CUSTOMER), repeat=2)
            began = time.perf_counter()
            index.index_fields(["customer_id"])
            indexing_seconds = time.perf_counter() - began
            failed = Filters(statuses=("failed",))
            customer = CUSTOMER
            both = Filters(statuses=("failed",), fields=customer.fields)
            found = index.page(failed, Page(limit=100))
            figures = {
                "instances": index.total(),
                "build_rows_per_second": round(rows_per_second),
                "file_mb": round(path.stat().st_size / 1e6, 1),
                "recent_failed_100": _timed(_listing(index, failed)),
                "recent_failed_page_only": _timed(lambda: index.page(failed, Page(limit=100))),
                "state_field_unindexed": unindexed,
                "index_field_seconds": round(indexing_seconds, 1),
                "state_field": _timed(_listing(index, customer)),
                "state_field_page_only": _timed(lambda: index.page(customer, Page(limit=100))),
                "state_field_and_status": _timed(_listing(index, both)),
                "counts_all": _timed(lambda: index.counts(Filters())),
                "state_field_matches": index.total(customer),
                "plan_recent_failed": index.explain(failed, Page(limit=100)),
                "plan_state_field": index.explain(customer, Page(limit=100)),
            }
            assert len(found) == min(100, index.total(failed))
            assert all(r.status == "failed" for r in found)
            assert [r.updated_at_ms for r in found] == sorted(
                (r.updated_at_ms for r in found), reverse=True
            )
        finally:
            index.close()
    return figures


# -- lag ------------------------------------------------------------------------------------


def _follow(path: str, bootstrap: str | None, stop: Any, out: Any) -> None:
    """In its own process: follow ``TOPIC`` into an index; send each batch's (count, lag ms)."""
    index = Index(path)
    feed = IndexFeed(index, TOPIC, bootstrap)
    batches: list[tuple[int, int, float]] = []
    while not stop.is_set():
        fed = feed.poll(FOLLOW_POLL)  # as ``sagas index --follow`` does
        if fed.read and fed.oldest_ms is not None:
            batches.append((fed.read, fed.oldest_ms, time.time() * 1000 - fed.oldest_ms))
    feed.close()
    index.close()
    out.put(batches)


def _records(rng: random.Random, instances: int = 20_000) -> Iterator[tuple[bytes, bytes]]:
    """Snapshots of ``instances`` instances, updated over and over (as a changelog sees them)."""
    now = int(time.time() * 1000)
    pool = [
        (f"order-{n:08d}".encode(), encode_snapshot(synthetic(n, rng, now)))
        for n in range(instances)
    ]
    while True:
        yield from pool


def _produce(
    producer: Producer, records: Iterator[tuple[bytes, bytes]], seconds: float, rate: float | None
) -> int:
    """Produce for ``seconds``, at ``rate`` per second (None: as fast as it goes)."""
    began = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - began) < seconds:
        if rate is not None and sent >= elapsed * rate:
            time.sleep(0.001)
            continue
        key, value = next(records)
        try:
            producer.produce(TOPIC, key=key, value=value)
            sent += 1
        except BufferError:
            producer.poll(0.01)
        if sent % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    return sent


def _fresh_topic() -> None:
    delete_topics([TOPIC])
    client = admin()  # kept while its futures are pending: a freed client cancels them
    for _, future in client.create_topics([NewTopic(TOPIC, PARTITIONS, 1)]).items():
        future.result(timeout=30)
    time.sleep(1)  # leaders settle


def _lag_figures(
    batches: list[tuple[int, int, float]], start_ms: float, end_ms: float, sent: int, seconds: float
) -> dict[str, Any]:
    window = [b for b in batches if start_ms <= b[1] < end_ms]
    lags = sorted(lag for _, _, lag in window)
    applied = sum(n for n, _, _ in window)
    applied_at = [oldest + lag for _, oldest, lag in window]
    span_s = (max(applied_at) - min(applied_at)) / 1000 if len(window) > 1 else 0
    return {
        "produced_per_second": round(sent / seconds),
        "indexed": applied,
        "indexed_per_second": round(applied / span_s) if span_s else None,
        "lag_p50_ms": round(lags[len(lags) // 2]) if lags else None,
        "lag_p99_ms": round(lags[int(len(lags) * 0.99)]) if lags else None,
        "lag_max_ms": round(lags[-1]) if lags else None,
    }


def measure_lag(seconds: float, rate: float, bootstrap: str | None = None) -> dict[str, Any]:
    _fresh_topic()
    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    rng = random.Random(7)
    records = _records(rng)
    producer = Producer(producer_config(bootstrap, "sagalog-bench-index") | {"linger.ms": 5})
    with tempfile.TemporaryDirectory(prefix="sagalog-index-lag-") as folder:
        follower = context.Process(
            target=_follow, args=(str(Path(folder) / "index.sqlite3"), bootstrap, stop, out)
        )
        follower.start()
        time.sleep(3)  # the follower is assigned and waiting
        phases = {}
        for name, pace in (("paced", rate), ("max_rate", None)):
            start_ms = time.time() * 1000
            sent = _produce(producer, records, seconds, pace)
            end_ms = time.time() * 1000
            time.sleep(3)  # let it drain before the next phase
            phases[name] = (start_ms, end_ms, sent)
        stop.set()
        batches = out.get(timeout=60)
        follower.join(30)
    figures: dict[str, Any] = {"seconds_each": seconds, "paced_rate": rate}
    for name, (start_ms, end_ms, sent) in phases.items():
        figures[name] = _lag_figures(batches, start_ms, end_ms, sent, seconds)
    delete_topics([TOPIC])
    return figures


def measure(count: int, seconds: float, rate: float) -> dict[str, Any]:
    return {"query": measure_query(count), "lag": measure_lag(seconds, rate)}


def main(
    instances: Annotated[
        int, typer.Option(help="Instances in the index (0: no query part)")
    ] = 1_000_000,
    seconds: Annotated[float, typer.Option(help="Seconds of each production phase")] = 20,
    rate: Annotated[
        float, typer.Option(help="Snapshots/s of the paced phase (saturation's snapshot rate)")
    ] = 6_000,
    skip_lag: Annotated[bool, typer.Option(help="Only the query part (no broker)")] = False,
) -> None:
    """Time the index's queries at N instances, and its lag behind a live changelog."""
    figures: dict[str, Any] = {"query": measure_query(instances)} if instances else {}
    typer.echo(figures)
    if not skip_lag:
        figures["lag"] = measure_lag(seconds, rate)
        typer.echo(figures["lag"])


if __name__ == "__main__":
    typer.run(main)
