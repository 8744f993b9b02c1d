"""Operating instances from the command line: operator actions, signals, and the dead-letter
topics (``sagas retry|cancel|resolve``, one instance or ``--where`` filters, ``sagas signal``,
``sagas dlq list|redrive``)."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
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
    saga_definition,
)
from sagas.operator import DEFAULT_TIMEOUT, DeadLetter, OperatorError
from sagas.verdicts import Verdict, exit_code, summary
from stream_processors.codecs.records import Record
from stream_processors.core.model import SagaDefinition
from stream_processors.core.throttle import PRIORITIZE
from stream_processors.declarative.definition import is_definition_file
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


Timeout = Annotated[
    float,
    typer.Option(min=0, help="How long to wait for the processor's verdict, in seconds"),
]
NoWait = Annotated[
    bool,
    typer.Option("--no-wait", help="Send and exit; the verdict is journaled all the same"),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the verdicts as JSON")]


@dataclass(frozen=True)
class _Waiting:
    """How a command waits for verdicts and says them."""

    timeout: float
    no_wait: bool
    as_json: bool


def _report(verdicts: list[Verdict], waiting: _Waiting, what: str) -> None:
    """Print the verdicts (one line, a summary for many, or JSON) and exit with their code:
    0 applied, 1 refused, 3 no verdict in time."""
    if waiting.as_json:
        typer.echo(json.dumps([verdict.as_json() for verdict in verdicts], indent=2))
    elif len(verdicts) == 1:
        typer.echo(verdicts[0].describe())
    else:
        typer.echo("\n".join(summary(verdicts, what)))
    code = exit_code(verdicts)
    if code:
        raise typer.Exit(code)


def _send(waiting: _Waiting, send: Callable[..., list[Verdict]], *args: Any) -> list[Verdict]:
    try:
        return send(*args, wait=not waiting.no_wait, timeout=waiting.timeout)
    except (OperatorError, ValueError) as error:
        raise fail(error) from error


def _act(
    action: str,
    target: str,
    instance: str | None,
    selection: _Selection,
    waiting: _Waiting,
    by: str | None,
    reason: str,
) -> None:
    """The action to ``instance``, or to every instance ``selection.where`` matches (one record
    each, after saying which), then the verdicts."""
    definition = saga_definition(target)
    who, why = _who(by), _reason(reason)
    bootstrap = selection.bootstrap
    if instance is not None:
        instances = [instance]
    else:
        instances = listing.selected(definition, selection.where, selection.state_dir, bootstrap)
        if not instances:
            typer.echo(f"no instances match: nothing to {action}")
            return
        if not waiting.as_json or selection.dry_run:
            typer.echo(listing.describe_selection(action, instances, selection.dry_run))
        if selection.dry_run:
            return
        if not selection.yes:
            typer.confirm(f"{action} these {len(instances)} instances?", abort=True)
    verdicts = _send(waiting, operator.act, definition, instances, action, who, why, bootstrap)
    _report(verdicts, waiting, action)


@dataclass(frozen=True)
class _Selection:
    where: list[str]
    dry_run: bool
    yes: bool
    state_dir: Path | None
    bootstrap: str | None


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
        timeout: Timeout = DEFAULT_TIMEOUT,
        no_wait: NoWait = False,
        as_json: AsJson = False,
        by: By = None,
        bootstrap: Bootstrap = None,
    ) -> None:
        if (instance is None) == (not where):
            raise typer.BadParameter("name one INSTANCE, or select instances with --where")
        waiting = _Waiting(timeout, no_wait, as_json)
        selection = _Selection(where or [], dry_run, yes, state_dir, bootstrap)
        _act(action, target, instance, selection, waiting, by, reason)

    command.__doc__ = (
        f"{summary}\n\nWaits for the processor's verdict and prints it: applied (where in the "
        "journal), or refused and why (journaled too); exits 1 when refused, 3 when no verdict "
        "came within --timeout. With --where instead of INSTANCE: every instance matching the "
        "filters (as sagas list finds them), each sent its own action, and a summary of the "
        "verdicts; --dry-run first."
    )
    app.command(name=action)(command)


_operator_command(
    "retry", "Re-run the failed step of a parked instance (one that needs attention)."
)
_operator_command("cancel", "Fail a running instance now, compensating the steps it completed.")
_operator_command(
    "resolve", "Mark a parked instance as handled (by hand, outside the saga): it ends resolved."
)


def _event_type(definition: SagaDefinition, name: str) -> type[Record]:
    """A class among the saga's inputs by ``__name__``, or any record class as module:Class."""
    inputs = definition.inputs
    accepted = ", ".join(sorted(t.__name__ for t in inputs))
    if ":" in name:
        cls = load_target(name)
        if not (isinstance(cls, type) and issubclass(cls, Record)):
            raise typer.BadParameter(f"{name} is not a record class", param_hint="EVENT_TYPE")
        if cls not in inputs:
            raise typer.BadParameter(
                f"{definition.name} does not accept {name}; it accepts {accepted}",
                param_hint="EVENT_TYPE",
            )
        return cls
    try:
        return operator.input_named(definition, name)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="EVENT_TYPE") from None


def _build(cls: type[Record], data: str) -> Record:
    try:
        fields = json.loads(data)
    except json.JSONDecodeError as error:
        raise typer.BadParameter(f"not JSON: {error}", param_hint="--data") from None
    try:
        return operator.event_of(cls, fields)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--data") from None


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
    timeout: Timeout = DEFAULT_TIMEOUT,
    no_wait: NoWait = False,
    as_json: AsJson = False,
    command_id: Annotated[
        str | None,
        typer.Option(
            help="The attempt a reply answers (default: the step's attempt in flight)",
        ),
    ] = None,
) -> None:
    """Send an event to one instance, as if a service had sent it (journaled with who and why),
    and print the processor's verdict (exit 1 when refused, 3 when none came in time)."""
    definition = saga_definition(target)
    event = _build(_event_type(definition, event_type), data)
    who, why = _who(by), _reason(reason)
    try:
        request = operator.signal_request(definition, instance, event, who, why, command_id)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    waiting = _Waiting(timeout, no_wait, as_json)
    verdicts = _send(waiting, operator.send_requests, definition, [request], bootstrap)
    _report(verdicts, waiting, request.what)


# -- dead letters ----------------------------------------------------------------------------


def _dlq_topic(source: str) -> str:
    if ":" in source or is_definition_file(source):
        return SagaTopics.for_saga(saga_definition(source)).dlq
    if ".dlq" not in source:
        raise typer.BadParameter(
            f"{source!r} is neither a dead-letter topic (name.dlq), module:SagaClass nor a "
            "definition file",
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


def _shorten(text: str | None, width: int | None) -> str:
    if text is None:
        return ""
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


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
    out = listing.console()
    # On a terminal long keys and details are shortened to fit; piped, every value is whole.
    width = (40, 60) if out.is_terminal else (None, None)
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
            _shorten(letter.key_text, width[0]),
            letter.reason or "?",
            _shorten(letter.detail, width[1]),
            letter.origin,
        )
    out.print(table)


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
    timeout: Timeout = DEFAULT_TIMEOUT,
    no_wait: NoWait = False,
    as_json: AsJson = False,
    by: By = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Give a running instance a new priority: its steps waiting for a limit go before those of
    lower priority (flow control; the saga must declare limits).

    Journaled as the other operator actions are, with who and why; waits for the processor's
    verdict and prints it (exits 1 when refused, 3 when no verdict came within --timeout)."""
    definition = saga_definition(target)
    waiting = _Waiting(timeout, no_wait, as_json)
    verdicts = _send(
        waiting,
        lambda *args, **options: [operator.prioritize(*args, **options)],
        definition,
        instance,
        priority,
        _who(by),
        _reason(reason),
        bootstrap,
    )
    _report(verdicts, waiting, PRIORITIZE)
