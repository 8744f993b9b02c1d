"""The ``sagas`` command line: run processors and workers, manage topics, operate instances.

    sagas run examples.order_fulfillment.saga:OrderFulfillment
    sagas worker examples.order_fulfillment.services:payments
    sagas topics create examples.order_fulfillment.saga:OrderFulfillment --partitions 8
    sagas retry examples.order_fulfillment.saga:OrderFulfillment order-17 --reason "card fixed"
    sagas dlq list payments.commands.dlq
    sagas dlq redrive payments.commands.dlq --offset 3:141
    sagas history examples.order_fulfillment.saga:OrderFulfillment order-17
    sagas schemas register shipping-v2.avsc --topic shipping.events

Targets are ``module:attribute``: a ``Saga`` subclass for ``run``, ``topics`` and the operator
commands, a ``Worker`` for ``worker``. Every command reads ``KAFKA_BOOTSTRAP_SERVERS`` unless
``--bootstrap`` is given. Client settings for a secured cluster (SASL, TLS) come from
``sagas --kafka-config FILE <command>`` or ``SAGALOG_KAFKA_CONFIG`` and ``SAGALOG_KAFKA_*``
variables (stream_processors.kafka_config).
"""

from __future__ import annotations

import getpass
import importlib
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sagas import operator
from sagas.cli_errors import run_cli
from sagas.operator import DeadLetter, OperatorError, Sent
from sagas.reply_addresses import ReplyAddresses
from sagas.saga import Saga
from sagas.worker import Worker
from stream_processors import kafka_config, metrics
from stream_processors.processor import ProcessorConfig, SagaProcessor
from stream_processors.records import Record
from stream_processors.schema_history import IncompatibleSchemaError
from stream_processors.topics import SagaTopics, ensure_topics

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
topics_app = typer.Typer(no_args_is_help=True, help="Manage a saga's topics.")
app.add_typer(topics_app, name="topics")
dlq_app = typer.Typer(
    no_args_is_help=True, help="Show dead-lettered records and send chosen ones back."
)
app.add_typer(dlq_app, name="dlq")

Bootstrap = Annotated[
    str | None, typer.Option(help="Kafka bootstrap servers [default: $KAFKA_BOOTSTRAP_SERVERS]")
]
Partitions = Annotated[int, typer.Option(help="Partitions of inbox, journal and snapshots")]
LogLevel = Annotated[str, typer.Option(help="Logging level")]
SagaTarget = Annotated[str, typer.Argument(help="module:SagaClass")]
InstanceId = Annotated[str, typer.Argument(help="The instance id (the saga's key, e.g. order id)")]
By = Annotated[
    str | None,
    typer.Option(help="Who is acting, journaled (default: your OS user name)"),
]
Reason = Annotated[str, typer.Option(help="Why, journaled with the action")]
DlqSource = Annotated[
    str, typer.Argument(help="A dead-letter topic (e.g. payments.commands.dlq) or module:SagaClass")
]


def load_target(target: str) -> Any:
    """Import ``module:attribute``; exit with a clear message when it is not there."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise typer.BadParameter(f"{target!r} is not module:attribute")
    module = load_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise typer.BadParameter(f"module {module_name} has no {attribute!r}") from None


def load_module(module_name: str) -> ModuleType:
    """Import ``module_name`` from the current folder or the path; exit clearly when absent."""
    if "" not in sys.path:
        sys.path.insert(0, "")  # targets are usually in the current project, not installed
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not module_name.startswith(error.name):
            raise  # the module is there; something it imports is not
        raise typer.BadParameter(
            f"no module {module_name!r} here: run sagas from your project's folder, "
            "or add it to PYTHONPATH"
        ) from None
    return module


def _saga(target: str) -> type[Saga]:
    saga = load_target(target)
    if not (isinstance(saga, type) and issubclass(saga, Saga)):
        raise typer.BadParameter(f"{target} is not a Saga class")
    return saga


@app.callback()
def _settings(
    kafka_config_file: Annotated[
        Path | None,
        typer.Option(
            "--kafka-config",
            help="librdkafka settings (key=value lines) for every command's Kafka clients "
            "[default: $SAGALOG_KAFKA_CONFIG]",
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="On an error, show the full traceback (anywhere)")
    ] = False,
) -> None:
    """Settings that apply to every command."""
    # A command reports a failure in one line of its own; the client's lines would bury it.
    # ``run`` and ``worker`` show them again: there they tell an operator what is going on.
    kafka_config.CLIENT_LOG.setLevel(logging.DEBUG if debug else logging.CRITICAL)
    if kafka_config_file is not None:
        try:
            kafka_config.use_config_file(kafka_config_file)
        except kafka_config.KafkaConfigError as error:
            raise typer.BadParameter(str(error), param_hint="--kafka-config") from None


def _logging(level: str) -> None:
    """Logging of the long-running commands (``run``, ``worker``), Kafka clients' lines too."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    kafka_config.CLIENT_LOG.setLevel(logging.NOTSET)


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="module:SagaClass")],
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
            retention_ms=None if retention_hours < 0 else round(retention_hours * 3_600_000),
            max_record_bytes=max_record_bytes,
            max_instance_id_bytes=max_instance_id_bytes,
        ),
    )
    processor.install_signal_handlers()
    try:
        processor.run()
    except IncompatibleSchemaError as error:  # a schema change that old records cannot take
        raise _fail(error) from error


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
    """Run a task worker until interrupted."""
    _logging(log_level)
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


# -- operating instances --------------------------------------------------------------------


def _who(by: str | None) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except OSError:  # no login name and no passwd entry (some containers)
        raise typer.BadParameter("cannot tell who you are; pass --by", param_hint="--by") from None


def _reason(reason: str) -> str:
    if not reason.strip():
        raise typer.BadParameter("say why", param_hint="--reason")
    return reason


def _fail(error: Exception) -> typer.Exit:
    typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


def _sent(what: str, sent: Sent) -> None:
    typer.echo(
        f"sent {what} to {sent.topic}[{sent.partition}]@{sent.offset} "
        f"(instance {sent.key}): {sent.note}"
    )


def _action(
    action: str, target: str, instance: str, by: str | None, reason: str, bootstrap: str | None
) -> None:
    definition = _saga(target).definition
    try:
        sent = operator.send_action(
            definition, instance, action, _who(by), _reason(reason), bootstrap
        )
    except (OperatorError, ValueError) as error:
        raise _fail(error) from error
    _sent(action, sent)


def _operator_command(action: str, summary: str) -> None:
    """Register ``sagas <action>``: the three operator actions differ only in name and help."""

    def command(
        target: SagaTarget,
        instance: InstanceId,
        reason: Reason,
        by: By = None,
        bootstrap: Bootstrap = None,
    ) -> None:
        _action(action, target, instance, by, reason, bootstrap)

    command.__doc__ = summary
    app.command(name=action)(command)


_operator_command(
    "retry", "Re-run the failed step of a parked instance (one that needs attention)."
)
_operator_command("cancel", "Fail a running instance now, compensating the steps it completed.")
_operator_command(
    "resolve", "Mark a parked instance as handled (by hand, outside the saga): it ends resolved."
)


def _event_type(saga: type[Saga], name: str) -> type[Record]:
    """A class among the saga's inputs by ``__name__``, or any record class as module:Class."""
    inputs = saga.definition.inputs
    accepted = ", ".join(sorted(t.__name__ for t in inputs))
    if ":" in name:
        cls = load_target(name)
        if not (isinstance(cls, type) and issubclass(cls, Record)):
            raise typer.BadParameter(f"{name} is not a record class", param_hint="EVENT_TYPE")
        if cls not in inputs:
            raise typer.BadParameter(
                f"{saga.definition.name} does not accept {name}; it accepts {accepted}",
                param_hint="EVENT_TYPE",
            )
        return cls
    matches = [t for t in inputs if t.__name__ == name]
    if not matches:
        raise typer.BadParameter(
            f"{saga.definition.name} accepts no {name!r}; it accepts {accepted}",
            param_hint="EVENT_TYPE",
        )
    if len(matches) > 1:
        spelled = ", ".join(sorted(f"{t.__module__}:{t.__qualname__}" for t in matches))
        raise typer.BadParameter(f"{name!r} is ambiguous: {spelled}", param_hint="EVENT_TYPE")
    return matches[0]


def _build(cls: type[Record], data: str) -> Record:
    try:
        fields = json.loads(data)
    except json.JSONDecodeError as error:
        raise typer.BadParameter(f"not JSON: {error}", param_hint="--data") from None
    if not isinstance(fields, dict):
        raise typer.BadParameter("give a JSON object of the event's fields", param_hint="--data")
    try:
        event = cls(**fields)
        event.encode()  # the values must fit the schema, not just the field names
    except (TypeError, ValueError, AttributeError) as error:
        names = ", ".join(cls.__fields__)
        raise typer.BadParameter(f"{cls.__name__}({names}): {error}", param_hint="--data") from None
    return event


@app.command(name="signal")
def signal_(
    target: SagaTarget,
    instance: InstanceId,
    event_type: Annotated[
        str, typer.Argument(help="An input of the saga by class name, or module:Class")
    ],
    reason: Reason,
    data: Annotated[str, typer.Option(help="The event's fields as a JSON object")] = "{}",
    by: By = None,
    bootstrap: Bootstrap = None,
    command_id: Annotated[
        str | None,
        typer.Option(
            help="The attempt a reply answers (default: the step's attempt in flight)",
        ),
    ] = None,
) -> None:
    """Send an event to one instance, as if a service had sent it (journaled with who and why)."""
    saga = _saga(target)
    event = _build(_event_type(saga, event_type), data)
    try:
        sent = operator.signal(
            saga.definition, instance, event, _who(by), _reason(reason), bootstrap, command_id
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    except OperatorError as error:
        raise _fail(error) from error
    _sent(type(event).__name__, sent)


# -- dead letters ----------------------------------------------------------------------------


def _dlq_topic(source: str) -> str:
    if ":" in source:
        return SagaTopics.for_saga(_saga(source).definition).dlq
    if ".dlq" not in source:
        raise typer.BadParameter(
            f"{source!r} is neither a dead-letter topic (name.dlq) nor module:SagaClass",
            param_hint="TOPIC_OR_TARGET",
        )
    return source


def _time(timestamp: int | None) -> str:
    if timestamp is None:
        return "?"
    return datetime.fromtimestamp(timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _as_json(letter: DeadLetter) -> dict[str, Any]:
    def text(value: bytes | None) -> str | None:
        return None if value is None else value.decode(errors="replace")

    return {
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "timestamp": letter.timestamp,
        "key": letter.key_text,
        "reason": letter.reason,
        "detail": letter.detail,
        "origin": {
            "topic": letter.origin_topic,
            "partition": letter.origin_partition,
            "offset": letter.origin_offset,
        },
        "headers": [[name, text(value)] for name, value in letter.headers],
        "value_bytes": None if letter.value is None else len(letter.value),
        "value_hex": None if letter.value is None else letter.value.hex(),
    }


def _shorten(text: str | None, width: int) -> str:
    if text is None:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _read_dlq(topic: str, bootstrap: str | None, **kwargs: Any) -> list[DeadLetter]:
    try:
        return operator.dead_letters(topic, bootstrap, **kwargs)
    except OperatorError as error:
        raise _fail(error) from error


@dlq_app.command("list")
def dlq_list(
    source: DlqSource,
    reason: Annotated[str | None, typer.Option(help="Only dead letters with this reason")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Show at most this many")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
    bootstrap: Bootstrap = None,
) -> None:
    """Show a dead-letter topic's records, oldest first, with their reasons and origins."""
    topic = _dlq_topic(source)
    letters = _read_dlq(topic, bootstrap, limit=limit, reason=reason)
    if as_json:
        typer.echo(json.dumps([_as_json(letter) for letter in letters], indent=2))
        return
    if not letters:
        typer.echo(f"no dead letters in {topic}" + (f" with reason {reason}" if reason else ""))
        return
    table = Table(title=f"{topic}: {len(letters)} dead letters")
    for column in ("partition", "offset"):
        table.add_column(column, justify="right")
    table.add_column("time (UTC)", no_wrap=True)
    for column in ("key", "reason", "detail", "origin"):
        table.add_column(column, overflow="fold")  # wrap, never cut: these are what you select by
    for letter in letters:
        table.add_row(
            str(letter.partition),
            str(letter.offset),
            _time(letter.timestamp),
            _shorten(letter.key_text, 40),
            letter.reason or "?",
            _shorten(letter.detail, 60),
            letter.origin,
        )
    Console().print(table)


def _position(text: str) -> tuple[int, int]:
    partition, _, offset = text.partition(":")
    try:
        return int(partition), int(offset)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not PARTITION:OFFSET", param_hint="--offset"
        ) from None


@dlq_app.command("redrive")
def dlq_redrive(
    source: DlqSource,
    offset: Annotated[
        list[str] | None,
        typer.Option(help="A dead letter to send back, as PARTITION:OFFSET (repeatable)"),
    ] = None,
    reason: Annotated[
        str | None, typer.Option(help="Send back the dead letters with this reason")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Send back every dead letter")] = False,
    bootstrap: Bootstrap = None,
) -> None:
    """Send chosen dead letters back to the topic they came from (with --offset, --reason, --all).

    --offset and --reason together select the records that match both. Records stay in the
    dead-letter topic; sending one back twice is harmless to sagas (duplicates are ignored).
    """
    wanted = {_position(text) for text in offset or []}
    if all_ and (wanted or reason is not None):
        raise typer.BadParameter("--all selects everything; drop --offset and --reason")
    if not (all_ or wanted or reason is not None):
        raise typer.BadParameter("choose records with --offset P:O, --reason R, or --all")
    topic = _dlq_topic(source)
    letters = _read_dlq(topic, bootstrap, reason=reason)
    if wanted:
        found = {(d.partition, d.offset) for d in letters}
        absent = sorted(wanted - found)
        if absent:
            where = f" with reason {reason}" if reason is not None else ""
            missing = ", ".join(f"{p}:{o}" for p, o in absent)
            raise _fail(OperatorError(f"no dead letter{where} in {topic} at {missing}"))
        letters = [d for d in letters if (d.partition, d.offset) in wanted]
    else:  # chosen by reason or --all: records cut to fit the DLQ are left out, and said so
        cut = [d for d in letters if d.truncated]
        letters = [d for d in letters if not d.truncated]
        if cut:
            typer.echo(f"left out {len(cut)} dead letters cut to fit {topic} (not the originals)")
    if not letters:
        what = f" with reason {reason}" if reason is not None else ""
        raise _fail(OperatorError(f"nothing to send back: no dead letters{what} in {topic}"))
    try:
        count = operator.redrive(topic, letters, bootstrap)
    except (OperatorError, ValueError) as error:
        raise _fail(error) from error
    destinations: dict[str, int] = {}
    for letter in letters:
        destination = letter.origin_topic or "?"
        destinations[destination] = destinations.get(destination, 0) + 1
    spread = ", ".join(f"{n} to {name}" for name, n in sorted(destinations.items()))
    typer.echo(f"sent {count} dead letters from {topic} back: {spread}")


def main() -> None:
    sys.exit(run_cli(app))


# The journal-reading and schema commands live in modules of their own and register on ``app``
# when imported; importing them last lets them take what they share from this one.
from sagas import cli_history, cli_schemas  # noqa: E402, F401
