"""``sagas run``, ``sagas worker`` and ``sagas topics create``: the long-running commands and
the topics they need."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from sagas.cli.app import (
    Bootstrap,
    LogLevel,
    Partitions,
    app,
    configure_logging,
    fail,
    load_target,
    saga_definition,
    topics_app,
)
from sagas.reply_addresses import ReplyAddresses
from sagas.worker import Worker
from stream_processors.engine import metrics
from stream_processors.engine.processor import ProcessorConfig, SagaProcessor
from stream_processors.engine.schema_history import IncompatibleSchemaError
from stream_processors.kafka.topics import SagaTopics, ensure_topics


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="module:SagaClass, or a definition file")],
    bootstrap: Bootstrap = None,
    partitions: Partitions = 8,
    commit_interval_ms: Annotated[int, typer.Option(help="Transaction commit interval")] = 100,
    state_dir: Annotated[
        Path | None,
        typer.Option(help="The saga's store folder [default: $SAGALOG_STATE_DIR/<saga>]"),
    ] = None,
    metrics_port: Annotated[int, typer.Option(help="/metrics port (0: any, -1: off)")] = 8000,
    create_topics: Annotated[bool, typer.Option(help="Create missing topics on start")] = True,
    retention_hours: Annotated[
        float, typer.Option(help="Hours a finished instance's snapshot is kept (<0: forever)")
    ] = 168.0,
    max_record_bytes: Annotated[
        int, typer.Option(help="Larger inputs go to the dead-letter topic as too-large")
    ] = 1_000_000,
    max_instance_id_bytes: Annotated[
        int, typer.Option(help="Longer instance ids go to the dead-letter topic")
    ] = 256,
    cache_size: Annotated[
        int,
        typer.Option(
            envvar="SAGALOG_INSTANCE_CACHE",
            help="Decoded instances kept in memory, most recently used (about 1.5 KB each)",
        ),
    ] = ProcessorConfig.cache_size,
    direct_sources: Annotated[
        bool,
        typer.Option(
            envvar="SAGALOG_DIRECT_SOURCES",
            help="Decide a source event where it is read when its instance's inbox partition "
            "is ours, without routing it through the inbox (docs/direct-sources.md)",
        ),
    ] = ProcessorConfig.direct_sources,
    log_level: LogLevel = "info",
) -> None:
    """Host a saga processor until interrupted (SIGINT or SIGTERM commit and exit); started
    while the broker is down, it waits for it (``KafkaClients.prepare``)."""
    configure_logging(log_level)
    definition = saga_definition(target)
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
            retention_ms=None if retention_hours < 0 else round(retention_hours * 3_600_000),
            max_record_bytes=max_record_bytes,
            max_instance_id_bytes=max_instance_id_bytes,
            cache_size=cache_size,
            direct_sources=direct_sources,
        ),
    )
    processor.install_signal_handlers()
    try:
        processor.run()
    except IncompatibleSchemaError as error:  # a schema change that old records cannot take
        raise fail(error) from error


@app.command()
def worker(
    target: Annotated[str, typer.Argument(help="module:worker")],
    bootstrap: Bootstrap = None,
    metrics_port: Annotated[int, typer.Option(help="/metrics port (0: any, -1: off)")] = 8001,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the process keeps its identity across restarts "
            "[$SAGALOG_STATE_DIR/workers/<name>]"
        ),
    ] = None,
    remember: Annotated[
        bool,
        typer.Option(help="Answer a command seen before with its first reply (<group>.handled)"),
    ] = True,
    reply_to: Annotated[
        list[str] | None,
        typer.Option(
            "--reply-to",
            help="A topic (or fnmatch pattern) replies may go to; repeat for more "
            "[the worker's own, by default *.inbox]",
        ),
    ] = None,
    log_level: LogLevel = "info",
) -> None:
    """Run a task worker until interrupted; it waits for the broker while it is down."""
    configure_logging(log_level)
    runner = load_target(target)
    if not isinstance(runner, Worker):
        raise typer.BadParameter(f"{target} is not a Worker")
    if reply_to:
        runner.reply_addresses = ReplyAddresses.of(reply_to)
    port = metrics.serve(metrics_port)
    logging.getLogger("sagas").info("metrics on port %s", port)
    runner.install_signal_handlers()
    runner.run(bootstrap, state_dir=state_dir, remember=remember)


@topics_app.command("create")
def topics_create(
    target: Annotated[str, typer.Argument(help="module:SagaClass, or a definition file")],
    bootstrap: Bootstrap = None,
    partitions: Partitions = 8,
) -> None:
    """Create the saga's topics (inbox, journal, snapshots, DLQ, command and source topics)."""
    topics = SagaTopics.for_saga(saga_definition(target), partitions)
    created = ensure_topics(topics, bootstrap)
    for name in created:
        typer.echo(f"created {name}")
    typer.echo(f"{len(created)} created; inbox, journal and snapshots have matching partitions")


# -- operating instances --------------------------------------------------------------------
