"""Operating instances from the command line: operator actions, signals, and the dead-letter
topics (``sagas retry|cancel|resolve``, one instance or ``--where`` filters, ``sagas signal``,
``sagas dlq list|redrive``)."""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sagas import operator
from sagas.cli import listing
from sagas.cli.app import (
    Bootstrap,
    By,
    DlqSource,
    InstanceId,
    Reason,
    SagaTarget,
    app,
    dlq_app,
    fail,
    format_time,
    load_target,
    saga_class,
)
from sagas.operator import DeadLetter, OperatorError, Sent
from sagas.saga import Saga
from stream_processors.codecs.records import Record
from stream_processors.kafka.topics import SagaTopics


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


def _sent(what: str, sent: Sent) -> None:
    typer.echo(
        f"sent {what} to {sent.topic}[{sent.partition}]@{sent.offset} "
        f"(instance {sent.key}): {sent.note}"
    )


def _action(
    action: str, target: str, instance: str, by: str | None, reason: str, bootstrap: str | None
) -> None:
    definition = saga_class(target).definition
    try:
        sent = operator.send_action(
            definition, instance, action, _who(by), _reason(reason), bootstrap
        )
    except (OperatorError, ValueError) as error:
        raise fail(error) from error
    _sent(action, sent)


def _bulk_action(
    action: str,
    target: str,
    where: list[str],
    selection: _Selection,
    by: str | None,
    reason: str,
    bootstrap: str | None,
) -> None:
    """The action to every instance matching ``where`` (one record each), or say which."""
    definition = saga_class(target).definition
    who, why = _who(by), _reason(reason)
    instances = listing.selected(definition, where, selection.state_dir, bootstrap)
    if not instances:
        typer.echo(f"no instances match: nothing to {action}")
        return
    typer.echo(listing.describe_selection(action, instances, selection.dry_run))
    if selection.dry_run:
        return
    if not selection.yes:
        typer.confirm(f"{action} these {len(instances)} instances?", abort=True)
    try:
        sent = operator.send_actions(definition, instances, action, who, why, bootstrap)
    except (OperatorError, ValueError) as error:
        raise fail(error) from error
    typer.echo(f"sent {action} to {len(sent)} instances via {sent[0].topic}: {sent[0].note}")


@dataclass(frozen=True)
class _Selection:
    dry_run: bool
    yes: bool
    state_dir: Path | None


def _operator_command(action: str, summary: str) -> None:
    """Register ``sagas <action>``: the three operator actions differ only in name and help."""

    def command(
        target: SagaTarget,
        instance: Annotated[
            str | None,
            typer.Argument(help="The instance id (the saga's key); or select with --where"),
        ] = None,
        reason: Reason = "",
        where: listing.Where = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="With --where: only say which it would touch")
        ] = False,
        yes: Annotated[
            bool, typer.Option("--yes", help="With --where: do not ask before sending")
        ] = False,
        state_dir: listing.StateDir = None,
        by: By = None,
        bootstrap: Bootstrap = None,
    ) -> None:
        if (instance is None) == (not where):
            raise typer.BadParameter("name one INSTANCE, or select instances with --where")
        if where:
            selection = _Selection(dry_run, yes, state_dir)
            _bulk_action(action, target, where, selection, by, reason, bootstrap)
        else:
            assert instance is not None
            _action(action, target, instance, by, reason, bootstrap)

    command.__doc__ = (
        f"{summary}\n\nWith --where instead of INSTANCE: every instance matching the filters "
        "(as sagas list finds them), each sent its own action; --dry-run first."
    )
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
    saga = saga_class(target)
    event = _build(_event_type(saga, event_type), data)
    try:
        sent = operator.signal(
            saga.definition, instance, event, _who(by), _reason(reason), bootstrap, command_id
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    except OperatorError as error:
        raise fail(error) from error
    _sent(type(event).__name__, sent)


# -- dead letters ----------------------------------------------------------------------------


def _dlq_topic(source: str) -> str:
    if ":" in source:
        return SagaTopics.for_saga(saga_class(source).definition).dlq
    if ".dlq" not in source:
        raise typer.BadParameter(
            f"{source!r} is neither a dead-letter topic (name.dlq) nor module:SagaClass",
            param_hint="TOPIC_OR_TARGET",
        )
    return source


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
        raise fail(error) from error


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
            format_time(letter.timestamp),
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
            raise fail(OperatorError(f"no dead letter{where} in {topic} at {missing}"))
        letters = [d for d in letters if (d.partition, d.offset) in wanted]
    else:  # chosen by reason or --all: records cut to fit the DLQ are left out, and said so
        cut = [d for d in letters if d.truncated]
        letters = [d for d in letters if not d.truncated]
        if cut:
            typer.echo(f"left out {len(cut)} dead letters cut to fit {topic} (not the originals)")
    if not letters:
        what = f" with reason {reason}" if reason is not None else ""
        raise fail(OperatorError(f"nothing to send back: no dead letters{what} in {topic}"))
    try:
        count = operator.redrive(topic, letters, bootstrap)
    except (OperatorError, ValueError) as error:
        raise fail(error) from error
    destinations: dict[str, int] = {}
    for letter in letters:
        destination = letter.origin_topic or "?"
        destinations[destination] = destinations.get(destination, 0) + 1
    spread = ", ".join(f"{n} to {name}" for name, n in sorted(destinations.items()))
    typer.echo(f"sent {count} dead letters from {topic} back: {spread}")


@app.command(name="prioritize")
def prioritize(
    target: SagaTarget,
    instance: InstanceId,
    priority: Annotated[int, typer.Argument(help="The new priority (higher is released first)")],
    reason: Reason = "",
    by: By = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Give a running instance a new priority: its steps waiting for a limit go before those of
    lower priority (flow control; the saga must declare limits)."""
    definition = saga_class(target).definition
    try:
        sent = operator.prioritize(
            definition, instance, priority, _who(by), _reason(reason), bootstrap
        )
    except (OperatorError, ValueError) as error:
        raise fail(error) from error
    _sent("prioritize", sent)
