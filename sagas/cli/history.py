"""The ``sagas`` commands that read the journal: history, state as of a point, replay.

    sagas history examples.order_fulfillment.saga:OrderFulfillment order-17 [--json]
    sagas state   examples.order_fulfillment.saga:OrderFulfillment order-17 --at 4
    sagas state   examples.order_fulfillment.saga:OrderFulfillment order-17 --at 2026-11-21T10:15:00
    sagas replay  examples.order_fulfillment.saga:OrderFulfillment [--verify]

They register on ``sagas.cli.app``; this module only adds commands and their rendering.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from confluent_kafka import Consumer, TopicPartition
from rich.progress import Progress
from rich.table import Table

from sagas.cli import listing
from sagas.cli.app import Bootstrap, InstanceId, SagaTarget, app, format_time, saga_definition
from stream_processors.codecs.records import Record, decode_record
from stream_processors.core.instance import Instance
from stream_processors.core.journal import FLOW_FIELDS, JournalEntry, Kind, stateless
from stream_processors.core.model import SagaDefinition
from stream_processors.engine.processor import WEEK_MS
from stream_processors.engine.schema_history import SchemaHistory
from stream_processors.engine.store import SnapshotStore, claim_slot, default_state_dir
from stream_processors.kafka.config import consumer_config
from stream_processors.kafka.errors import metadata as kafka_metadata
from stream_processors.kafka.reading import watermarks
from stream_processors.kafka.topics import SagaTopics, TopicMismatch
from stream_processors.tools.history import Located, fold_until, instance_history
from stream_processors.tools.replay import ProcessorsRunning, journal_partitions, rebuild, verify

StateDir = Annotated[
    Path | None,
    typer.Option(help="The saga's store folder [default: $SAGALOG_STATE_DIR/<saga>]"),
]
RetentionHours = Annotated[
    float, typer.Option(help="Hours a finished instance's snapshot is kept (<0: forever)")
]


def _record_of(entry_record: bytes | None) -> tuple[str | None, Record | None]:
    if entry_record is None:
        return None, None
    try:
        record = decode_record(entry_record)
    except Exception:
        return "?", None
    return type(record).__name__, record


def _document_of(entry: JournalEntry) -> Any:
    """A ``DocumentSet`` entry's document (a declarative definition's JSON), else None: its
    record is the document's JSON text, not an Avro record."""
    if entry.kind != Kind.DOCUMENT_SET.value or entry.record is None:
        return None
    return json.loads(entry.record)


def _entry_json(located: Located) -> dict[str, Any]:
    """One entry of ``history --json``; ``sagas.testing.load_histories`` reads them back."""
    entry = located.entry
    document = _document_of(entry)
    record_type, record = _record_of(None if document is not None else entry.record)
    return {
        "instance": entry.instance,
        "offset": located.offset,
        "position": entry.seq,
        "at_ms": entry.at_ms,
        "at": datetime.fromtimestamp(entry.at_ms / 1000, UTC).isoformat(timespec="milliseconds"),
        "event": entry.kind,
        "step": entry.step,
        "command_id": entry.command_id,
        "attempt": entry.attempt,
        "record_type": record_type,
        "record_schema": None if record is None else record.__avro__.full_name,
        "record": None if record is None else record.to_avro(),
        "reason": entry.reason,
        "timer": entry.timer,
        "due_ms": entry.due_ms,
        "saga_version": entry.saga_version,
        **{name: getattr(entry, name) for name in FLOW_FIELDS},
        **({} if document is None else {"document": document}),
    }


def _read_old_versions(bootstrap: str | None) -> None:
    """Let records written under older schema versions be read, through the schema history."""
    SchemaHistory(bootstrap).serve_unknown()


def _history(
    definition: SagaDefinition, instance: str, state_dir: Path | None, bootstrap: str | None
) -> list[Located]:
    _read_old_versions(bootstrap)
    topics = SagaTopics.for_saga(definition)
    located, indexed = instance_history(
        topics.journal, instance, state_dir or default_state_dir(definition.name), bootstrap
    )
    if not indexed:
        typer.echo(f"(no local snapshot of {instance}: read its whole journal partition)", err=True)
    if not located:
        typer.echo(f"no journal entries for {instance} in {topics.journal}", err=True)
        raise typer.Exit(1)
    return located


@app.command()
def history(
    target: SagaTarget,
    instance: InstanceId,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per entry")] = False,
    state_dir: StateDir = None,
    bootstrap: Bootstrap = None,
) -> None:
    """An instance's journal: every decision and accepted input, in order."""
    located = _history(saga_definition(target), instance, state_dir, bootstrap)
    if as_json:
        typer.echo(json.dumps([_entry_json(x) for x in located], indent=2))
        return
    table = Table(title=f"{instance}: {len(located)} journal entries")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("time (UTC)", no_wrap=True)
    for column in ("event", "step", "concerns"):
        table.add_column(column, overflow="fold")  # wrap, never cut
    table.add_column("attempt", justify="right")
    table.add_column("detail", overflow="fold")
    for item in located:
        entry = item.entry
        document = _document_of(entry)
        record_type, _ = _record_of(None if document is not None else entry.record)
        concerns = "document" if document is not None else record_type or entry.timer or ""
        millis = f"{entry.at_ms % 1000:03d}"
        table.add_row(
            "-" if stateless(entry) else str(entry.seq),  # a refusal is no position
            f"{format_time(entry.at_ms)}.{millis}",
            entry.kind,
            entry.step or "",
            concerns,
            str(entry.attempt) if entry.attempt else "",
            entry.reason or entry.command_id or _shown(document),
        )
    listing.console().print(table)


def _shown(document: Any, width: int = 200) -> str:
    """A document in the table's detail column: its JSON, cut to ``width`` characters."""
    if document is None:
        return ""
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def _point(at: str) -> tuple[int | None, int | None]:
    """``--at``: a journal position (small integer), epoch milliseconds, or an ISO time."""
    if at.isdigit():
        number = int(at)
        return (number, None) if number < 10**11 else (None, number)
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        raise typer.BadParameter(
            f"{at!r} is not a journal position, epoch milliseconds or ISO time", param_hint="--at"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return None, int(moment.timestamp() * 1000)


def _instance_json(instance: Instance) -> dict[str, Any]:
    return {
        "instance": instance.instance_id,
        "status": instance.status.value,
        "saga_version": instance.saga_version,
        "position": instance.seq - 1,
        "started_at_ms": instance.started_at_ms,
        "updated_at_ms": instance.updated_at_ms,
        "reason": instance.reason,
        "steps": {
            name: {
                "status": step.status.value,
                "command_id": step.command_id,
                "attempt": step.attempt,
                "sent_at_ms": step.sent_at_ms,
                "node": step.node,
                **({"block": step.block, "branch": step.branch} if step.block else {}),
            }
            for name, step in instance.steps.items()
        },
        "completed": list(instance.completed),
        "timers": {
            name: {"due_ms": t.due_ms, "step": t.step, "attempt": t.attempt}
            for name, t in instance.timers.items()
        },
        "blocks": {
            key: {
                "node": block.node,
                "kind": block.kind,
                "status": block.status.value,
                "branches": [b.value for b in block.branches],
            }
            for key, block in instance.blocks.items()
        },
        "visits": dict(instance.visits),
        "early_events": len(instance.early),
        "children": dict(instance.children),
        "parent": None
        if instance.reply_key is None
        else {"inbox": instance.reply_to, "instance": instance.reply_key},
        "data": instance.data.to_avro(),
    }


At = Annotated[
    str | None,
    typer.Option(help="A journal position, epoch milliseconds, or ISO time [default: now]"),
]


def folded_instance(
    definition: SagaDefinition,
    instance: str,
    at: str | None,
    state_dir: Path | None,
    bootstrap: str | None,
) -> Instance:
    """An instance folded from its journal, now or as of ``at``; exits when there is none."""
    located = _history(definition, instance, state_dir, bootstrap)
    position, at_ms = _point(at) if at is not None else (None, None)
    folded = fold_until(definition, located, position=position, at_ms=at_ms)
    if folded is None:  # only refusals of operator requests name it, or it started later
        when = "" if at is None else f" at {at}"
        typer.echo(f"{instance} had not started{when}", err=True)
        raise typer.Exit(1)
    return folded


@app.command()
def state(
    target: SagaTarget,
    instance: InstanceId,
    at: At = None,
    state_dir: StateDir = None,
    bootstrap: Bootstrap = None,
) -> None:
    """An instance's state folded from its journal, now or as of a position or time."""
    folded = folded_instance(saga_definition(target), instance, at, state_dir, bootstrap)
    typer.echo(json.dumps(_instance_json(folded), indent=2))


def _journal_size(topic: str, bootstrap: str | None) -> int:
    consumer = Consumer(consumer_config(bootstrap, "sagalog-replay", "sagalog-replay"))
    try:
        partitions = kafka_metadata(consumer, bootstrap, topic).topics[topic].partitions
        ends = [watermarks(consumer, TopicPartition(topic, p)) for p in partitions]
        return sum(high - low for low, high in ends)
    finally:
        consumer.close()


@app.command()
def replay(
    target: SagaTarget,
    verify_only: Annotated[
        bool,
        typer.Option("--verify", help="Only compare the journal's fold with live snapshots"),
    ] = False,
    partitions: Annotated[
        int | None,
        typer.Option(help="Partitions of the journal; refused if it has another count"),
    ] = None,
    state_dir: StateDir = None,
    retention_hours: RetentionHours = WEEK_MS / 3_600_000,
    bootstrap: Bootstrap = None,
) -> None:
    """Rebuild every snapshot from the journal (processors stopped), or --verify them."""
    definition = saga_definition(target)
    topics = SagaTopics.for_saga(definition)
    existing = journal_partitions(topics, bootstrap)
    if not existing:
        typer.secho(f"error: no topic {topics.journal}: nothing to replay", err=True, fg="red")
        raise typer.Exit(1)
    topics = replace(topics, partitions=partitions or existing)
    retention_ms = None if retention_hours < 0 else round(retention_hours * 3_600_000)
    _read_old_versions(bootstrap)
    total = _journal_size(topics.journal, bootstrap)
    with Progress() as progress:
        task = progress.add_task("journal entries folded", total=total)

        def advance(count: int) -> None:
            progress.advance(task, count)

        if verify_only:
            report = verify(definition, topics, bootstrap, retention_ms, advance)
            progress.update(task, completed=total)
        else:
            store = _fresh_store(state_dir or default_state_dir(definition.name))
            try:
                rebuilt = rebuild(definition, topics, store, bootstrap, retention_ms, advance)
            except (ProcessorsRunning, TopicMismatch) as error:
                typer.echo(str(error), err=True)
                raise typer.Exit(1) from None
            finally:
                store.close()
            progress.update(task, completed=total)
    if not verify_only:
        typer.echo(
            f"rebuilt {rebuilt.snapshots} snapshots of {rebuilt.instances} instances from "
            f"{total} journal entries ({rebuilt.expired} finished beyond retention left out"
            + (f"; {rebuilt.flow_rows} flow-control rows" if rebuilt.flow_rows else "")
            + ")"
        )
        return
    typer.echo(
        f"verified {report.instances} instances from {total} journal entries "
        f"({report.expired} expired by retention, {report.in_flight} in flight): "
        f"{len(report.differences)} differ"
    )
    for difference in report.differences:
        typer.echo(
            f"  {difference.problem}: {difference.instance} (partition {difference.partition})"
        )
    if report.differences:
        raise typer.Exit(1)


def _fresh_store(base: Path) -> SnapshotStore:
    """An empty store in the first free slot under ``base`` (the processors are stopped)."""
    slot = claim_slot(base)
    path = slot.path / "rocksdb"
    shutil.rmtree(path, ignore_errors=True)
    slot.release()  # the processor that starts next claims the slot again
    return SnapshotStore(path)
