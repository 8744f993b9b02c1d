"""End to end: the order saga with its two workers, each a separate OS process.

Saturation: a burst of orders published at once; completed sagas per second from the first
publish to the last terminal journal entry (``measure.Results.sagas_per_second``): the median of
a few such bursts (``median_round``: bursts in one run on this 2-core machine have differed by
up to 45 %, 910 and 1,399 sagas/s, docs/benchmarks.md 2026-12-03 16:05), each round's rate kept
beside it. Latency: orders paced at a quarter of the first burst's rate, then at common fixed
rates (10 and 50 sagas/s, the rates at which the peers are timed too); each saga's time from its
publish (the record's Kafka timestamp) to its terminal journal entry, p50 and p99, and for each
paced run the per-hop breakdown read from the records' own timestamps (``bench.hops``). The
other bursts come after the paced runs. All reuse the demo's machinery
(``examples.order_fulfillment.measure``), and all check that every saga ended as planned.

``measure`` takes the saga's partition count: the bench runs it with 8 (``PARTITIONS``, the
table's main figures) and, last of all, with 2 (``FEW_PARTITIONS``), each at its own
saturation. At a given rate a transaction spans about four partitions per inbox partition it
has inputs from (journal, snapshots, two command topics), and its commit grows with that
count; the two runs show what the choice costs in latency and gives in headroom.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from bench import hops
from bench.common import (
    BASE,
    PARTITIONS,
    PROCESSOR_GROUP,
    TOPICS,
    WORKER_GROUPS,
    fresh_saga_topics,
    groups_emptied,
    ready_publisher,
)
from examples.order_fulfillment.measure import (
    Journal,
    Results,
    publish,
    start_processes,
    wait_until_ready,
)
from examples.order_fulfillment.scenario import PlannedOrder, plan_orders
from sagas.local import LocalProcess, journal_end, journal_outcomes_from, percentile

SEED = 7
GROUPS = (PROCESSOR_GROUP, *WORKER_GROUPS)
#: ``summary``'s counts, summed over saturation's rounds.
TOTALLED = ("orders", "finished", "mismatches", "missing")
FAILURES = (0.03, 0.03)  # payment, shipping: as in the demo


def run_orders(orders: list[PlannedOrder], rate: float | None, timeout: float) -> Results:
    start = journal_end(TOPICS.journal)
    published = publish(orders, rate=rate, publisher=ready_publisher())
    ids = [order.event.order_id for order in orders]
    return Results(orders, published, journal_outcomes_from(TOPICS.journal, start, ids, timeout))


def summary(results: Results) -> dict[str, Any]:
    latencies = results.latencies_ms()
    return {
        "orders": len(results.orders),
        "finished": len(results.outcomes),
        "mismatches": len(results.mismatches),
        "missing": len(results.missing),
        "sagas_per_second": round(results.sagas_per_second() or 0.0, 1),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


def started(
    processors: int = 1, partitions: int = PARTITIONS
) -> tuple[dict[str, LocalProcess], str]:
    """Fresh topics of ``partitions`` each, the processor(s) and both workers, past a warm-up
    saga.

    Another partition count gets processes of another identity (their own folder): a static
    member that rejoins its group is handed its previous assignment without a rebalance, so
    one that had partitions 0 and 1 of a 2-partition topic kept just those once the topic was
    recreated with 8 (seen: the warm-up saga never finished). A new identity joins, which
    rebalances; but the old one's partitions wait for its session to expire (10 s), so that is
    waited for first: a burst meanwhile measured 343 sagas/s instead of about 3,000."""
    fresh_saga_topics(partitions)
    base = BASE
    if partitions != PARTITIONS:
        base = BASE / f"{partitions}-partitions"
        groups_emptied(GROUPS)
    processes = start_processes(base, partitions, processors)
    run_id = uuid.uuid4().hex[:8]
    try:
        journal = Journal(TOPICS.journal, journal_end(TOPICS.journal))
        wait_until_ready(processes["processor"], journal, run_id, SEED, 120)
    except BaseException:
        for process in processes.values():
            process.stop()
        raise
    return processes, run_id


#: The processor's transaction commit histogram (``sagalog_transaction_commit_seconds``).
COMMIT_SUM, COMMIT_COUNT = (f"sagalog_transaction_commit_seconds_{x}" for x in ("sum", "count"))


def commits_between(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The processor's commits between two readings of its metrics: how many, and their mean
    duration. A slow paced run with slow commits points at the broker (a young one took five
    times as long per commit, docs/benchmarks.md 2026-12-03 19:15), not at the engine."""
    count = after.get(COMMIT_COUNT, 0.0) - before.get(COMMIT_COUNT, 0.0)
    seconds = after.get(COMMIT_SUM, 0.0) - before.get(COMMIT_SUM, 0.0)
    mean = round(1000 * seconds / count, 1) if count > 0 else None
    return {"count": round(count), "mean_ms": mean}


def paced(
    orders: list[PlannedOrder], rate: float, processor: LocalProcess, timeout: float = 120
) -> dict[str, Any]:
    """Orders at ``rate`` per second: latency, where the time went hop by hop, and what the
    processor's commits took meanwhile."""
    start = hops.starts()
    before = processor.metrics()
    results = run_orders(orders, rate, timeout)
    ids = {order.event.order_id for order in orders}
    return summary(results) | {
        "offered_per_second": round(rate, 1),
        "hops": hops.breakdown(start, ids),
        "processor_commits": commits_between(before, processor.metrics()),
    }


def fixed_rate_orders(rate: float, seconds: float, run_id: str) -> list[PlannedOrder]:
    """The orders of a fixed-rate run: the same for every system (same seed per rate)."""
    count = max(10, round(rate * seconds))
    return plan_orders(count, *FAILURES, seed=SEED + 10 + int(rate), run_id=f"{run_id}-{rate:g}")


def burst(orders: int, round_number: int, run_id: str) -> dict[str, Any]:
    """One saturation round: ``orders`` published at once, followed to their ends."""
    planned = plan_orders(
        orders, *FAILURES, seed=SEED + 100 * round_number, run_id=f"{run_id}-sat{round_number}"
    )
    return summary(run_orders(planned, None, 300))


def median_round(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The round of median rate (``summary``'s figures), with every round's rate in the order
    run; orders, finished, mismatches and missing are the sums over all rounds, so that a
    saga lost in any round shows."""
    median = sorted(runs, key=lambda run: run["sagas_per_second"])[len(runs) // 2]
    totals = {key: sum(run[key] for run in runs) for key in TOTALLED}
    return median | totals | {"rounds_sagas_per_second": [run["sagas_per_second"] for run in runs]}


def measure(
    saturation_orders: int,
    latency_seconds: float,
    fixed_rates: Sequence[float] = (),
    fixed_seconds: float = 0,
    saturation_rounds: int = 1,
    partitions: int = PARTITIONS,
) -> dict[str, Any]:
    processes, run_id = started(partitions=partitions)
    try:
        # The paced runs follow the first burst, as they did when there was one: the rounds
        # after it would put two more bursts' records on the topics they run on.
        first = burst(saturation_orders, 0, run_id)
        rate = max(1.0, first["sagas_per_second"] / 4)
        count = max(10, round(rate * latency_seconds))
        quarter_orders = plan_orders(count, *FAILURES, seed=SEED + 1, run_id=f"{run_id}-lat")
        processor = processes["processor"]
        quarter = paced(quarter_orders, rate, processor)
        fixed = {
            f"{fixed:g}": paced(fixed_rate_orders(fixed, fixed_seconds, run_id), fixed, processor)
            for fixed in fixed_rates
        }
        rounds = [burst(saturation_orders, n, run_id) for n in range(1, saturation_rounds)]
        saturated = median_round([first, *rounds])
    finally:
        codes = {name: process.stop() for name, process in processes.items()}
    return {
        "partitions": partitions,
        "saturation": saturated,
        "quarter_load": quarter,
        "fixed_rates": fixed,
        "exit_codes": codes,
    }
