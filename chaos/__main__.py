"""``python -m chaos``: one chaos run with the figures and invariants printed; exit 1 on failure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from chaos.cluster import ClusterOptions, run_cluster
from chaos.cluster import figures as cluster_figures
from chaos.fuzz import FuzzConfig, FuzzReport, run_fuzz
from chaos.run import ChaosConfig, run_chaos
from stream_processors.kafka.config import bootstrap_servers


def main(
    sagas: Annotated[int, typer.Option(help="Order sagas to run")] = 10_000,
    publish_seconds: Annotated[float, typer.Option(help="Spread the orders over this long")] = 45,
    processor_kills: Annotated[int, typer.Option(help="SIGKILLs of the processor")] = 10,
    worker_kills: Annotated[int, typer.Option(help="SIGKILLs of each worker")] = 3,
    restart_broker: Annotated[bool, typer.Option(help="Restart the broker once")] = True,
    kill_broker: Annotated[bool, typer.Option(help="Then SIGKILL the broker once")] = True,
    bad_inputs: Annotated[int, typer.Option(help="Bad inputs of each kind")] = 2,
    seed: Annotated[int, typer.Option()] = 7,
    report_json: Annotated[Path | None, typer.Option(help="Write the figures here")] = None,
    fuzz: Annotated[bool, typer.Option(help="Then the hostile-input runs, signed and not")] = True,
    cluster: Annotated[
        bool, typer.Option(help="The cluster phase instead (chaos.cluster; 3 brokers)")
    ] = False,
    rolling_restarts: Annotated[int, typer.Option(help="Cluster phase: rolling restarts")] = 1,
    broker_sigkill: Annotated[bool, typer.Option(help="Cluster phase: SIGKILL a broker")] = True,
) -> None:
    config = ChaosConfig(
        sagas=sagas,
        publish_seconds=publish_seconds,
        processor_kills=processor_kills,
        worker_kills=worker_kills,
        restart_broker=restart_broker,
        kill_broker=kill_broker,
        bad_inputs=bad_inputs,
        seed=seed,
        bootstrap=bootstrap_servers(),
    )
    if cluster:
        options = ClusterOptions(rolling_restarts=rolling_restarts, sigkill=broker_sigkill)
        phase = run_cluster(config, options, say=typer.echo)
        _write(cluster_figures(phase), report_json)
        raise typer.Exit(0 if phase.passed else 1)
    report = run_chaos(config, say=typer.echo)
    figures = {
        "sagas": report.sagas,
        "outcomes": dict(report.outcomes),
        "processor_kills": report.processor_kills,
        "worker_kills": report.worker_kills,
        "broker_restarts": report.broker_restarts,
        "crashes_restarted": report.crashes_restarted,
        "bad_inputs": report.bad_inputs,
        "lost": report.lost,
        "undelivered": report.undelivered,
        "duplicated": report.duplicated,
        "seconds": round(report.seconds, 1),
        "broker_kill": None if report.broker_kill is None else report.broker_kill.figures(),
        "invariants": {i.name: {"holds": i.holds, "detail": i.detail} for i in report.invariants},
    }
    fuzzed = [_fuzz(signing, seed) for signing in (True, False)] if fuzz else []
    figures["fuzz"] = [_fuzz_figures(f) for f in fuzzed]
    typer.echo(json.dumps(figures, indent=2))
    if report_json is not None:
        report_json.write_text(json.dumps(figures, indent=2) + "\n")
    raise typer.Exit(0 if report.passed and all(f.passed for f in fuzzed) else 1)


def _write(figures: dict[str, object], report_json: Path | None) -> None:
    """The cluster phase's figures, printed and, if asked, written as JSON."""
    typer.echo(json.dumps(figures, indent=2))
    if report_json is not None:
        report_json.write_text(json.dumps(figures, indent=2) + "\n")


def _fuzz(signing: bool, seed: int) -> FuzzReport:
    config = FuzzConfig(signing=signing, seed=seed, bootstrap=bootstrap_servers())
    return run_fuzz(config, say=typer.echo)


def _fuzz_figures(report: FuzzReport) -> dict[str, object]:
    return {
        "signing": report.signing,
        "legitimate": report.legitimate,
        "hostile_kinds": len(report.hostile),
        "hostile_records": sum(report.hostile.values()),
        "outcomes": dict(report.outcomes),
        "exited": report.exited,
        "problems": report.problems,
        "p99_before_storm_ms": report.p99_before_ms,
        "p99_during_storm_ms": report.p99_storm_ms,
        "seconds": round(report.seconds, 1),
    }


if __name__ == "__main__":
    typer.run(main)
