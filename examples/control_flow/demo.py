"""The control-flow example end to end on a real broker, with a table per path.

Creates both sagas' topics, starts the fulfilment and invoicing processors and the warehouse,
payment and invoicing services as separate OS processes (``measure.start_processes``), publishes
orders drawn over every path of the example (``scenario.plan_orders``: express or standard, a
refused courier, an order without lines, stock missing, a declined card, damaged lines, a
refused invoice), follows each saga's end on the parent's journal, prints how each path ended
against what its data implies, and stops the processes. It exits 0 only if every order ended
as implied.

    python -m examples.control_flow.demo --orders 500

Kafka is found through ``KAFKA_BOOTSTRAP_SERVERS`` (default 127.0.0.1:9092). Logs go to
``.sagalog/control-flow-demo/logs/``, the processors' stores to ``.../state/``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from examples.control_flow.measure import (
    Results,
    ensure_all_topics,
    run,
    start_processes,
    wait_until_ready,
)

DEMO_DIR = Path(".sagalog/control-flow-demo")
console = Console(highlight=False)
app = typer.Typer(add_completion=False)


def table(results: Results) -> Table:
    """One row per path: orders, the end their data implies, the ends seen."""
    shown = Table(title="fulfilment sagas by path")
    for column in ("path", "orders", "implied end", "ended as", "commands (implied)"):
        shown.add_column(column)
    for path in sorted({o.path for o in results.orders}):
        orders = [o for o in results.orders if o.path == path]
        implied = Counter(o.expected.outcome for o in orders)
        seen = Counter(
            results.outcomes[o.event.order_id].state
            for o in orders
            if o.event.order_id in results.outcomes
        )
        commands = sum(o.expected.commands for o in orders)
        shown.add_row(path, str(len(orders)), _counts(implied), _counts(seen), str(commands))
    return shown


def _counts(counts: Counter[str]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items()))


@app.command()
def main(
    orders: Annotated[int, typer.Option(help="Orders to place")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the plan (which order takes which path)")] = 1,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every saga to end")] = 120,
) -> None:
    """Run the fulfilment saga (and its invoicing child) on ORDERS planned orders."""
    ensure_all_topics()
    processes = start_processes(DEMO_DIR)
    run_id = uuid.uuid4().hex[:8]
    try:
        console.print("starting 2 processors and 3 services...")
        wait_until_ready(processes, run_id, timeout)
        results = run(orders, run_id, timeout, seed)
    finally:
        for process in processes.values():
            process.stop()
    console.print(table(results))
    summary = results.summary()
    console.print(
        f"{summary['finished']} of {orders} ended, {summary['mismatches']} not as implied, "
        f"{summary['missing']} missing; {summary['sagas_per_second']} sagas/s, "
        f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms (publish to end)"
    )
    if results.mismatches or results.missing:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
