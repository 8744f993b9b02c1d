"""The ``sagas`` command line: run processors and workers, and manage a saga's topics.

    sagas run examples.order_fulfillment.saga:OrderFulfillment
    sagas worker examples.order_fulfillment.services:payments
    sagas topics create examples.order_fulfillment.saga:OrderFulfillment --partitions 8

Targets are ``module:attribute``: a ``Saga`` subclass for ``run`` and ``topics``, a ``Worker``
for ``worker``. Every command reads ``KAFKA_BOOTSTRAP_SERVERS`` unless ``--bootstrap`` is given.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sagas.saga import Saga
from sagas.worker import Worker
from stream_processors import metrics
from stream_processors.processor import ProcessorConfig, SagaProcessor
from stream_processors.topics import SagaTopics, ensure_topics

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
topics_app = typer.Typer(no_args_is_help=True, help="Manage a saga's topics.")
app.add_typer(topics_app, name="topics")

Bootstrap = Annotated[
    str | None, typer.Option(help="Kafka bootstrap servers [default: $KAFKA_BOOTSTRAP_SERVERS]")
]
Partitions = Annotated[int, typer.Option(help="Partitions of inbox, journal and snapshots")]
LogLevel = Annotated[str, typer.Option(help="Logging level")]


def load_target(target: str) -> Any:
    """Import ``module:attribute``; exit with a clear message when it is not there."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise typer.BadParameter(f"{target!r} is not module:attribute")
    if "" not in sys.path:
        sys.path.insert(0, "")  # targets are usually in the current project, not installed
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise typer.BadParameter(f"module {module_name} has no {attribute!r}") from None


def _saga(target: str) -> type[Saga]:
    saga = load_target(target)
    if not (isinstance(saga, type) and issubclass(saga, Saga)):
        raise typer.BadParameter(f"{target} is not a Saga class")
    return saga


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="module:SagaClass")],
    bootstrap: Bootstrap = None,
    partitions: Partitions = 8,
    commit_interval_ms: Annotated[int, typer.Option(help="Transaction commit interval")] = 100,
    state_dir: Annotated[Path | None, typer.Option(help="Where the local store lives")] = None,
    metrics_port: Annotated[int, typer.Option(help="/metrics port (0: any, -1: off)")] = 8000,
    create_topics: Annotated[bool, typer.Option(help="Create missing topics on start")] = True,
    log_level: LogLevel = "info",
) -> None:
    """Host a saga processor until interrupted (SIGINT or SIGTERM commit and exit)."""
    _logging(log_level)
    definition = _saga(target).definition
    port = metrics.serve(metrics_port)
    logging.getLogger("sagas").info("metrics on port %s", port)
    processor = SagaProcessor(
        definition,
        ProcessorConfig(
            bootstrap=bootstrap,
            commit_interval_ms=commit_interval_ms,
            partitions=partitions,
            state_dir=state_dir,
            create_topics=create_topics,
        ),
    )
    processor.install_signal_handlers()
    processor.run()


@app.command()
def worker(
    target: Annotated[str, typer.Argument(help="module:worker")],
    bootstrap: Bootstrap = None,
    metrics_port: Annotated[int, typer.Option(help="/metrics port (0: any, -1: off)")] = 8001,
    log_level: LogLevel = "info",
) -> None:
    """Run a task worker until interrupted."""
    _logging(log_level)
    runner = load_target(target)
    if not isinstance(runner, Worker):
        raise typer.BadParameter(f"{target} is not a Worker")
    port = metrics.serve(metrics_port)
    logging.getLogger("sagas").info("metrics on port %s", port)
    runner.install_signal_handlers()
    runner.run(bootstrap)


@topics_app.command("create")
def topics_create(
    target: Annotated[str, typer.Argument(help="module:SagaClass")],
    bootstrap: Bootstrap = None,
    partitions: Partitions = 8,
) -> None:
    """Create the saga's topics (inbox, journal, snapshots, DLQ, command and source topics)."""
    topics = SagaTopics.for_saga(_saga(target).definition, partitions)
    created = ensure_topics(topics, bootstrap)
    for name in created:
        typer.echo(f"created {name}")
    typer.echo(f"{len(created)} created; inbox, journal and snapshots have matching partitions")


def main() -> None:
    app()
