"""``python -m bench [--quick]``: every measurement in one run, then JSON, table and chart.

Phases run in a fixed order on one broker (``KAFKA_BOOTSTRAP_SERVERS``); each starts from fresh
topics. A phase that fails is recorded with its error and the run goes on, so that one broken
peer does not hide the other figures; the exit status is then 1.
"""

from __future__ import annotations

import datetime
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from bench import (
    control_flow,
    end_to_end,
    engine,
    index_query,
    limit,
    memory,
    profile,
    recovery,
    report,
    same_shape,
)
from bench.common import BASE, FEW_PARTITIONS, Sizes, machine
from stream_processors.kafka.config import bootstrap_servers

PHASES = (
    "limit",
    "engine",
    "tracing",
    "same_shape",
    "profile",
    "end_to_end",
    "control_flow",
    "replay",
    "failover",
    "memory",
    "index",
    "faust",
    "temporal",
    # Last: replay and failover read the journal end_to_end leaves (8 partitions), and by now
    # no process of the usual identity is left in the groups to wait for (end_to_end.started).
    "end_to_end_few",
)

console = Console(highlight=False)
app = typer.Typer(add_completion=False)


@app.command()
def main(
    quick: Annotated[
        bool, typer.Option(help="Small sizes: the whole run in under 5 minutes")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where the JSON, Markdown and PNG go [default: docs/, quick: bench-results/quick/]"
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(help=f"Run only these phases (repeatable): {', '.join(PHASES)}"),
    ] = None,
    pipe_records: Annotated[
        int | None, typer.Option(help="Override N for the limit pipes and the engine")
    ] = None,
    memory_instances: Annotated[
        list[int] | None,
        typer.Option(help="Override the memory cases' instance counts (repeatable)"),
    ] = None,
) -> None:
    """Measure Sagalog against its limit and its peers; write figures, table and chart."""
    sizes = Sizes.quick() if quick else Sizes.full()
    if pipe_records:
        sizes = Sizes(**asdict(sizes) | {"pipe_records": pipe_records})
    if memory_instances:
        sizes = Sizes(**asdict(sizes) | {"memory_instances": tuple(memory_instances)})
    chosen = [p for p in PHASES if not only or p in only]
    target = out or (Path("bench-results/quick") if quick else Path("docs"))
    profile_path = target / ("profile-quick.txt" if quick else "profile.txt")
    command = "python -m bench " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "python -m bench"
    figures: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if quick else "full",
        "command": command,
        "bootstrap": bootstrap_servers(),
        "sizes": asdict(sizes),
        "machine": machine(),
    }
    console.print(f"bench: {figures['mode']} mode, Kafka at {bootstrap_servers()}, phases {chosen}")
    began = time.monotonic()

    def e2e_rate() -> float:
        rate = (figures.get("end_to_end") or {}).get("saturation", {}).get("sagas_per_second")
        return max(20.0, (rate or 400.0) / 4)

    def snapshot_rate() -> float:
        """Snapshots/s the changelog gets at end-to-end saturation (about one per input)."""
        rate = (figures.get("end_to_end") or {}).get("saturation", {}).get("sagas_per_second")
        return index_query.SNAPSHOTS_PER_SAGA * (rate or 1_200.0)

    fixed = (sizes.fixed_rates, sizes.fixed_rate_seconds)
    phases: dict[str, Callable[[], dict[str, Any]]] = {
        # At least 300,000: the plain pipe drains 50,000 in a commit or two, too few to time.
        "limit": lambda: limit.measure(max(sizes.pipe_records, 300_000)),
        "engine": lambda: engine.measure(sizes.pipe_records),
        "tracing": lambda: engine.tracing_cost(
            sizes.tracing_records or sizes.pipe_records, sizes.tracing_rounds
        ),
        "same_shape": lambda: same_shape.measure(sizes.pipe_records),
        "profile": lambda: profile.measure(sizes.pipe_records // 5, profile_path),
        "end_to_end_few": lambda: end_to_end.measure(
            sizes.saturation_orders,
            sizes.latency_seconds,
            *fixed,
            sizes.saturation_rounds,
            partitions=FEW_PARTITIONS,
        ),
        "end_to_end": lambda: end_to_end.measure(
            sizes.saturation_orders, sizes.latency_seconds, *fixed, sizes.saturation_rounds
        ),
        "control_flow": lambda: control_flow.measure(sizes.control_flow_orders),
        "replay": recovery.replay,
        "failover": lambda: recovery.failover(e2e_rate(), sizes.failover_seconds),
        "memory": lambda: memory.measure(sizes.memory_instances),
        "index": lambda: index_query.measure(
            sizes.index_instances, sizes.index_seconds, snapshot_rate()
        ),
        "faust": lambda: _faust(sizes.faust_orders, sizes.latency_seconds, fixed),
        "temporal": lambda: _temporal(sizes.temporal_workflows, sizes.latency_seconds, fixed),
    }
    failed = []
    for name in chosen:
        started = time.monotonic()
        console.rule(name)
        try:
            figures[name] = phases[name]() | {"phase_seconds": round(time.monotonic() - started, 1)}
        except Exception as error:  # record it and go on: see the module docstring
            traceback.print_exc()
            figures[name] = {"error": f"{type(error).__name__}: {error}"}
            failed.append(name)
        console.print(figures[name])
    figures["seconds"] = round(time.monotonic() - began, 1)
    report.write(figures, target, command, profile_path)
    console.print(f"bench: done in {figures['seconds']:.0f}s; {target / 'benchmarks.md'}")
    console.print(figures["derived"])
    if failed:
        console.print(f"[red]bench: phases failed: {', '.join(failed)} (see {BASE / 'logs'})[/red]")
        raise typer.Exit(1)


#: (fixed rates in sagas/s, seconds at each): the latency every system is timed at.
Fixed = tuple[tuple[float, ...], float]


def _faust(orders: int, latency_seconds: float, fixed: Fixed) -> dict[str, Any]:
    from bench.peers import faust_saga  # imported late: it builds a faust App on import

    return faust_saga.measure(orders, latency_seconds, *fixed)


def _temporal(workflows: int, latency_seconds: float, fixed: Fixed) -> dict[str, Any]:
    from bench.peers import temporal_saga

    return temporal_saga.measure(workflows, latency_seconds, *fixed)
