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

With ``--keep`` (``make demo KEEP=1``) the processes stay up afterwards, with the web console
(``sagas console``) open on them, until Ctrl-C; without it, the demo ends by saying so.

Kafka is found through ``KAFKA_BOOTSTRAP_SERVERS`` (default 127.0.0.1:9092); ``make demo`` sets
it. Logs go to ``.sagalog/demo/logs/``, the processor's store to ``.sagalog/demo/state/``.
"""

from __future__ import annotations

import random
import secrets
import signal
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from examples.order_fulfillment.measure import (
    SAGA,
    Journal,
    Results,
    publish,
    start_processes,
    wait_for_empty_group,
    wait_until_ready,
)
from examples.order_fulfillment.saga import OrderFulfillment
from examples.order_fulfillment.scenario import PlannedOrder, plan_orders
from sagas.console.process import start_console
from sagas.local import LocalProcess, journal_end, journal_outcomes_from, percentile
from stream_processors.kafka.config import bootstrap_servers
from stream_processors.kafka.topics import SagaTopics, ensure_topics

DEMO_DIR = Path(".sagalog/demo")
SAGA_NAME = OrderFulfillment.definition.name
STATES = ("completed", "compensated", "failed")
SHOWN = 10  # wrong or missing instances listed on failure
LOG_LINES = 25  # lines of each process's log shown on failure
GROUP_WAIT = 15  # seconds for a just-stopped processor to leave its group (session timeout 10 s)

console = Console(highlight=False)
app = typer.Typer(add_completion=False)


def _publish_failed(order_id: str, error: Any) -> None:
    console.print(f"[red]publishing {order_id or 'orders'} failed: {error}[/red]")


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
        published = publish(orders, lambda: progress.advance(acked), _publish_failed)
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


def keep_open(run_id: str, port: int, processes: dict[str, LocalProcess]) -> bool:
    """Start the web console next to the processes (adding it to them, to be stopped with
    them), say how to log in, and wait for Ctrl-C (or SIGTERM); returns whether that came (a
    Ctrl-C reaches every process of the terminal: their exit codes then say nothing)."""
    token = secrets.token_urlsafe(12)
    env = {"SAGALOG_STATE_DIR": str((DEMO_DIR / "state").resolve())}
    process, url = start_console([SAGA], DEMO_DIR / "logs" / "console.log", token, env, port)
    processes["console"] = process
    console.print(
        f"\nThe web console is at [bold]{url}/[/bold]: log in with any name and the token "
        f"[bold]{token}[/bold].\nThis run's orders: {url}/s/{SAGA_NAME}?q=order-{run_id}-\n"
        "The processes and the broker keep running; Ctrl-C stops them all."
    )
    try:
        while process.running:
            time.sleep(1)
        console.print(f"[red]the console exited:[/red]\n{process.log_tail(LOG_LINES)}")
        return False
    except KeyboardInterrupt:
        console.print("stopping")
        return True


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
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="Afterwards keep the processes running with the web console open, "
            "until Ctrl-C (make demo KEEP=1)",
        ),
    ] = False,
    console_port: Annotated[int, typer.Option(help="The console's port, with --keep")] = 8600,
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
    ok = interrupted = closed = False
    journal = Journal(topics.journal, journal_end(topics.journal))
    began = time.monotonic()
    try:
        processes = start_processes(DEMO_DIR, partitions)
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
        if keep:
            closed = keep_open(run_id, console_port, processes)
    except (TimeoutError, RuntimeError) as error:
        console.print(f"[red]FAILED: {error}[/red]")
    except KeyboardInterrupt:
        interrupted = True
        console.print("interrupted")
    finally:
        codes = {name: process.stop() for name, process in processes.items()}
        unclean = {name: code for name, code in codes.items() if code != 0}
        if unclean and not (interrupted or closed):
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
    if not keep:
        console.print(
            "To see a run in the web console: [bold]make demo KEEP=1[/bold] (the processes and "
            "the broker then stay up after the run, with the console open, until Ctrl-C)"
        )


if __name__ == "__main__":
    app()
