"""``make demo``: the order-fulfilment saga end to end on a real broker, with a results table.

This module owns the demo's orchestration and its report, nothing else: it creates the saga's
topics, starts the processor and the payment and shipping workers as separate OS processes
(``sagas.local.LocalProcess``), publishes orders whose failures are injected through their data
(``scenario.plan_orders``), follows each saga's terminal state on the journal topic
(``sagas.local.journal_outcomes_from``: what the engine committed, not its own counters), prints a
table, and stops the processes it started. It exits 0 only if every saga ended in the state its
injected outcome implies. It will not start next to another processor of the same saga on the
same broker (see ``main``): the two would share its topics and consumer group.

    python -m examples.order_fulfillment.demo --orders 5000 --shipping-failure-rate 0.1

Kafka is found through ``KAFKA_BOOTSTRAP_SERVERS`` (default 127.0.0.1:9092); ``make demo`` sets
it. Logs go to ``.sagalog/demo/logs/``, the processor's store to ``.sagalog/demo/state/``.
"""

from __future__ import annotations

import math
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaException
from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from examples.order_fulfillment.saga import OrderFulfillment
from examples.order_fulfillment.scenario import PlannedOrder, plan_orders
from sagas.local import LocalProcess, Outcome, journal_end, journal_outcomes_from
from sagas.publisher import Publisher
from stream_processors.kafka_config import bootstrap_servers, common
from stream_processors.topics import SagaTopics, ensure_topics

DEMO_DIR = Path(".sagalog/demo")
SAGA = "examples.order_fulfillment.saga:OrderFulfillment"
WORKERS = ("payments", "shipping")
STATES = ("completed", "compensated", "failed")
SHOWN = 10  # wrong or missing instances listed on failure
LOG_LINES = 25  # lines of each process's log shown on failure
GROUP_WAIT = 15  # seconds for a just-stopped processor to leave its group (session timeout 10 s)

console = Console(highlight=False)
app = typer.Typer(add_completion=False)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Journal:
    """The saga's journal topic, and its end offsets before this run published anything.

    The journal is kept forever (and shared with every earlier run and test on this broker);
    this run's sagas are new, so their entries all lie after ``start``.
    """

    topic: str
    start: dict[int, int]


@dataclass(frozen=True)
class Results:
    """What the journal says happened to the planned orders, against what was expected."""

    orders: list[PlannedOrder]
    published_ms: dict[str, int]  # order id -> publish time (see ``publish``)
    outcomes: dict[str, Outcome]  # order id -> first terminal journal entry

    @property
    def seen(self) -> Counter[str]:
        return Counter(outcome.state for outcome in self.outcomes.values())

    @property
    def expected(self) -> Counter[str]:
        return Counter(order.expected for order in self.orders)

    @property
    def mismatches(self) -> list[tuple[str, str, str]]:
        """(order id, expected state, state reached) for each saga that ended differently."""
        return [
            (order.event.order_id, order.expected, outcome.state)
            for order in self.orders
            if (outcome := self.outcomes.get(order.event.order_id)) is not None
            and outcome.state != order.expected
        ]

    @property
    def missing(self) -> list[str]:
        """Orders with no terminal journal entry (including any that were never acknowledged)."""
        return [o.event.order_id for o in self.orders if o.event.order_id not in self.outcomes]

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.missing

    def latencies_ms(self) -> list[int]:
        """Terminal entry's ``at_ms`` minus publish time, for each finished, published saga."""
        return sorted(
            outcome.at_ms - self.published_ms[order_id]
            for order_id, outcome in self.outcomes.items()
            if order_id in self.published_ms
        )

    def sagas_per_second(self) -> float | None:
        """Finished sagas / (last terminal entry - first publish): orders / ... on success."""
        if not self.outcomes or not self.published_ms:
            return None
        span_ms = max(o.at_ms for o in self.outcomes.values()) - min(self.published_ms.values())
        return len(self.outcomes) / (span_ms / 1000) if span_ms > 0 else None


def percentile(sorted_values: Sequence[int], p: float) -> int | None:
    """Nearest-rank percentile of already sorted values (None when there are none)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def wait_for_empty_group(group: str, timeout: float) -> int:
    """Wait until the consumer group has no members; returns how many it still has at timeout.

    A group that does not exist, or cannot be described, counts as empty.
    """
    # log_level 4: warnings and errors only (not the info line librdkafka prints on closing).
    admin = AdminClient(common(None, "sagalog-demo-admin") | {"log_level": 4})
    deadline = time.monotonic() + timeout
    while True:
        try:
            future = admin.describe_consumer_groups([group], request_timeout=10)[group]
            members = len(future.result().members)
        except KafkaException:
            members = 0
        if members == 0 or time.monotonic() > deadline:
            return members
        time.sleep(0.5)


def start_processes(partitions: int) -> dict[str, LocalProcess]:
    """The processor and both workers, each its own OS process with a fresh log."""
    logs = DEMO_DIR / "logs"
    env = {"SAGALOG_STATE_DIR": str((DEMO_DIR / "state").resolve())}
    commands = {"processor": ["run", SAGA, "--partitions", str(partitions)]} | {
        name: ["worker", f"examples.order_fulfillment.services:{name}"] for name in WORKERS
    }
    processes = {}
    for name, args in commands.items():
        log_path = logs / f"{name}.log"
        log_path.unlink(missing_ok=True)  # each log holds this run only
        processes[name] = LocalProcess(args, log_path, env=dict(env)).start()
    return processes


def wait_until_ready(
    processor: LocalProcess, journal: Journal, run_id: str, seed: int, timeout: float
) -> None:
    """Return once a saga can go end to end without waiting for any process to start.

    Two gates. First the processor's ``sagalog_restore_remaining_records`` gauge: it has no
    sample until the processor's partition-assignment callback sets it, and that callback
    leaves it at 0 once every assigned partition's store is restored from the changelog; so
    "present and 0" means the processor joined its group, owns partitions and restored them
    (and ``wait_for_metrics`` fails fast if the process exits). That says nothing about the
    workers, and the gauge also reads 0 between two partitions' restores, so the second gate is
    a warm-up saga: one order, published and followed to its terminal journal entry. It has
    passed through the processor (all of whose assigned partitions are restored inside one
    callback, before any record is consumed) and through both workers' consumer groups. The
    warm-up order has its own id and is not counted in the results.
    """
    processor.wait_for_metrics(
        lambda samples: samples.get("sagalog_restore_remaining_records") == 0,
        timeout,
        "the processor did not get its partitions and restore its store",
    )
    warmup = plan_orders(1, 0.0, 0.0, seed=seed, run_id=f"{run_id}-warmup")[0]
    with Publisher(client_id="sagalog-demo") as publisher:
        publisher.publish(warmup.event)
    outcome = journal_outcomes_from(
        journal.topic, journal.start, [warmup.event.order_id], timeout
    ).get(warmup.event.order_id)
    if outcome is None:
        raise TimeoutError(f"the warm-up saga {warmup.event.order_id} did not finish in {timeout}s")
    if outcome.state != warmup.expected:
        raise RuntimeError(f"the warm-up saga ended {outcome.state}, not {warmup.expected}")


def publish(orders: list[PlannedOrder], on_ack: Callable[[], None]) -> dict[str, int]:
    """Publish every order; returns {order id: publish time in ms} for those acknowledged.

    The publish time is the record's own Kafka timestamp, read from the delivery report: a
    CreateTime that librdkafka stamps from the wall clock when ``produce`` is called, i.e. the
    moment of publishing (not of the acknowledgement), on the same clock as the processor's
    journal ``at_ms``. ``time.time()`` just before ``produce`` is the fallback if a report has
    no timestamp. Orders whose delivery failed are left out, and so end up "missing".
    """
    published: dict[str, int] = {}

    def delivered(order_id: str, sent_ms: int) -> Callable[[Any, Any], None]:
        def callback(error: Any, message: Any) -> None:
            if error is not None:
                console.print(f"[red]publishing {order_id} failed: {error}[/red]")
                return
            kind, stamp = message.timestamp()
            published[order_id] = sent_ms if kind == TIMESTAMP_NOT_AVAILABLE else stamp
            on_ack()

        return callback

    publisher = Publisher(client_id="sagalog-demo")
    for order in orders:
        order_id = order.event.order_id
        publisher.publish(order.event, on_delivery=delivered(order_id, _now_ms()))
    if remaining := publisher.flush(60):
        console.print(f"[red]{remaining} orders were not acknowledged within 60s[/red]")
    return published


def run_orders(orders: list[PlannedOrder], journal: Journal, timeout: float) -> Results:
    """Publish the orders and follow them to their terminal states, with progress bars."""
    columns = (
        TextColumn("{task.description:>9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        acked = progress.add_task("published", total=len(orders))
        finished = progress.add_task("finished", total=len(orders))
        published = publish(orders, lambda: progress.advance(acked))
        outcomes = journal_outcomes_from(
            journal.topic,
            journal.start,
            [order.event.order_id for order in orders],
            timeout,
            progress=lambda count: progress.update(finished, completed=count),
        )
    return Results(orders, published, outcomes)


def results_table(results: Results) -> Table:
    seen, expected = results.seen, results.expected
    latencies = results.latencies_ms()
    rate = results.sagas_per_second()
    table = Table(title="order fulfilment: results")
    table.add_column("")
    table.add_column("sagas", justify="right")
    table.add_column("expected", justify="right")
    table.add_row("orders", str(len(results.orders)), "")
    for state in STATES:
        table.add_row(state, str(seen[state]), str(expected[state]))
    for state in sorted(set(seen) - set(STATES)):  # e.g. needs_attention: never expected
        table.add_row(state, str(seen[state]), "0")
    table.add_row("mismatches", str(len(results.mismatches)), "0")
    table.add_row("missing", str(len(results.missing)), "0")
    table.add_section()
    table.add_row("sagas per second", "-" if rate is None else f"{rate:,.0f}", "")
    for p in (50, 99):
        value = percentile(latencies, p)
        table.add_row(f"p{p} latency (ms)", "-" if value is None else f"{value:,}", "")
    return table


def report_failures(results: Results) -> None:
    for order_id, wanted, got in results.mismatches[:SHOWN]:
        console.print(f"  {order_id}: expected {wanted}, ended {got}")
    if len(results.mismatches) > SHOWN:
        console.print(f"  ... and {len(results.mismatches) - SHOWN} more that ended differently")
    for order_id in results.missing[:SHOWN]:
        console.print(f"  {order_id}: no terminal state")
    if len(results.missing) > SHOWN:
        console.print(f"  ... and {len(results.missing) - SHOWN} more with no terminal state")


def show_logs(processes: dict[str, LocalProcess]) -> None:
    for process in processes.values():
        console.rule(f"last {LOG_LINES} lines of {process.log_path}")
        console.print(process.log_tail(LOG_LINES) or "(empty)", markup=False)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so that ``finally`` stops the processes on SIGTERM too


@app.command()
def main(
    orders: Annotated[int, typer.Option(min=1, help="Orders to publish")] = 1000,
    payment_failure_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of orders whose card is declined")
    ] = 0.03,
    shipping_failure_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of orders that cannot be shipped")
    ] = 0.03,
    seed: Annotated[
        int | None, typer.Option(help="Seed for which orders fail (default: random)")
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds to wait for start-up, and for the sagas")
    ] = 120,
    partitions: Annotated[
        int, typer.Option(min=1, help="Partitions of the saga's topics, when creating them")
    ] = 8,
) -> None:
    """Run the order-fulfilment saga end to end and check every saga's outcome."""
    if payment_failure_rate + shipping_failure_rate > 1:
        raise typer.BadParameter("the two failure rates add up to more than 1")
    seed = random.randrange(2**32) if seed is None else seed
    run_id = uuid.uuid4().hex[:8]
    planned = plan_orders(orders, payment_failure_rate, shipping_failure_rate, seed, run_id)
    topics = SagaTopics.for_saga(OrderFulfillment.definition, partitions)
    console.print(
        f"demo: {orders:,} orders, payment failure rate {payment_failure_rate:g}, shipping "
        f"failure rate {shipping_failure_rate:g}, seed {seed}, run {run_id}, "
        f"Kafka at {bootstrap_servers()}"
    )
    created = ensure_topics(topics)
    console.print(f"topics: {len(created)} created, {topics.journal} and the rest ready")

    # Another processor of this saga against this broker (a test run, say) is in the same
    # consumer group and reads the same topics: the two would split the partitions, each
    # joining or leaving would rebalance the other, and the table would measure both. So the
    # demo waits for the processor group to be empty and otherwise refuses to start. A processor
    # stopped cleanly stays listed for its session timeout (10 s, static membership): a demo
    # run straight after another one waits for that.
    group = f"sagalog.{topics.saga}"
    if wait_for_empty_group(group, 0):
        console.print(f"waiting up to {GROUP_WAIT}s for consumer group {group} to be empty")
        if others := wait_for_empty_group(group, GROUP_WAIT):
            console.print(
                f"[red]FAILED: consumer group {group} still has {others} member(s): another "
                f"processor of {topics.saga} is running against this broker; stop it, or wait "
                "until it is done, and run the demo again[/red]"
            )
            raise typer.Exit(1)
    signal.signal(signal.SIGTERM, _terminate)
    processes: dict[str, LocalProcess] = {}
    ok = interrupted = False
    journal = Journal(topics.journal, journal_end(topics.journal))
    began = time.monotonic()
    try:
        processes = start_processes(partitions)
        pids = ", ".join(f"{name} (pid {p.popen.pid})" for name, p in processes.items() if p.popen)
        console.print(f"started {pids}; logs in {DEMO_DIR / 'logs'}")
        wait_until_ready(processes["processor"], journal, run_id, seed, timeout)
        console.print(f"ready after {time.monotonic() - began:.1f}s (a warm-up saga went through)")
        results = run_orders(planned, journal, timeout)
        console.print(results_table(results))
        crashed = [name for name, process in processes.items() if not process.running]
        ok = results.ok and not crashed
        if not results.ok:
            console.print(
                f"[red]FAILED: {len(results.mismatches)} sagas ended in the wrong state and "
                f"{len(results.missing)} did not finish within {timeout:g}s[/red]"
            )
            report_failures(results)
        if crashed:
            console.print(f"[red]FAILED: exited before the end: {', '.join(crashed)}[/red]")
    except (TimeoutError, RuntimeError) as error:
        console.print(f"[red]FAILED: {error}[/red]")
    except KeyboardInterrupt:
        interrupted = True
        console.print("interrupted")
    finally:
        codes = {name: process.stop() for name, process in processes.items()}
        unclean = {name: code for name, code in codes.items() if code != 0}
        if unclean and not interrupted:
            console.print(f"[red]FAILED: did not stop cleanly (exit codes): {unclean}[/red]")
            ok = False
        if not ok and not interrupted:
            show_logs(processes)
        if processes:
            console.print(f"stopped {', '.join(codes)}")
    if interrupted:
        raise typer.Exit(130)
    if not ok:
        raise typer.Exit(1)
    console.print("[green]OK: every saga reached the state its injected outcome implies[/green]")


if __name__ == "__main__":
    app()
