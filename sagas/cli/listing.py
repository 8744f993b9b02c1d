"""Finding instances: ``sagas list`` and ``sagas index``, and the selection behind the bulk
operator actions (``sagas cancel TARGET --where ...``, registered in ``operate``).

    sagas list  examples.order_fulfillment.saga:OrderFulfillment --status failed --limit 100
    sagas list  examples.order_fulfillment.saga:OrderFulfillment --field customer_id=c-7 --json
    sagas list  examples.order_fulfillment.saga:OrderFulfillment --counts
    sagas index examples.order_fulfillment.saga:OrderFulfillment --follow

The index (``stream_processors.tools.index``) is a SQLite file in the saga's state folder, fed
from its snapshots changelog (``stream_processors.tools.index_feed``); every command here first
catches it up to the changelog's end, then queries it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sagas.cli.app import Bootstrap, SagaTarget, app, fail, format_time, saga_definition
from sagas.operator import OperatorError, dead_letters
from stream_processors.core.model import SagaDefinition
from stream_processors.engine.routing import COMMAND_ID
from stream_processors.engine.schema_history import SchemaHistory
from stream_processors.engine.store import default_state_dir
from stream_processors.kafka.reading import ReadTimeout
from stream_processors.kafka.topics import SagaTopics
from stream_processors.tools.index import (
    STATUSES,
    FieldEquals,
    FilterError,
    Filters,
    Index,
    Listed,
    Page,
    index_path,
    merged,
    parse_where,
    remove_index,
)
from stream_processors.tools.index_feed import Fed, IndexFeed

StateDir = Annotated[
    Path | None,
    typer.Option(
        help="The saga's state folder, holding index.sqlite3 [default: $SAGALOG_STATE_DIR/<saga>]"
    ),
]
Where = Annotated[
    list[str] | None,
    typer.Option(
        help="A filter NAME=VALUE (repeatable): status=failed,needs_attention, step=NODE, "
        "started-after=T, started-before=T, updated-after=T, updated-before=T, reason=TEXT, "
        "version=N, id-prefix=TEXT, data.FIELD=VALUE, stuck=T (see --stuck); T is ISO time, "
        "epoch ms, or an age like 30m, 2h, 7d",
    ),
]
Time = Annotated[str | None, typer.Option(help="ISO time, epoch ms, or an age (30m, 2h, 7d)")]

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def moment(text: str) -> int:
    """Epoch milliseconds of a time given as epoch ms, an ISO time (UTC unless it says), or an
    age before now (``90s``, ``30m``, ``2h``, ``7d``)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    age = _AGE.match(text)
    if age:
        ago = timedelta(**{_UNITS[age.group(2)]: float(age.group(1))})
        return int((datetime.now(UTC) - ago).timestamp() * 1000)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise FilterError(f"{text!r} is not a time (ISO, epoch ms, or 30m/2h/7d)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def filters_of(where: list[str] | None, **options: Any) -> Filters:
    """``Filters`` from ``sagas list``'s own options and ``--where`` items together."""
    try:
        where_filters = parse_where(where or [], moment)
        fields = tuple(_field(text) for text in options.pop("field") or [])
        times: dict[str, Any] = {
            name: None if value is None else moment(value)
            for name, value in options.items()
            if name.endswith(("_after", "_before"))
        }
        own = Filters(
            statuses=tuple(s for text in options["status"] or () for s in text.split(",") if s),
            step=options["step"],
            reason=options["reason"],
            version=options["version"],
            fields=fields,
            waiting_on="*" if options.pop("waiting_on_limit", False) else None,
            **times,
        )
        return merged(own, where_filters)
    except FilterError as error:
        raise typer.BadParameter(str(error)) from None


def _field(text: str) -> FieldEquals:
    path, equals, value = text.partition("=")
    if not equals:
        raise FilterError(f"--field {text!r} is not PATH=VALUE")
    return FieldEquals(path.strip(), value)


def open_index(
    definition: SagaDefinition,
    state_dir: Path | None,
    bootstrap: str | None,
    stall: float = 120,
) -> Index:
    """The saga's index, caught up to the end of its snapshots changelog."""
    SchemaHistory(bootstrap).serve_unknown()  # snapshots written under older schema versions
    index = Index(index_path(state_dir or default_state_dir(definition.name)))
    try:
        feed = IndexFeed(index, SagaTopics.for_saga(definition).snapshots, bootstrap)
        try:
            fed = _catch_up(feed, stall)
        finally:
            feed.close()
    except ReadTimeout as error:
        index.close()
        raise fail(error) from error
    except BaseException:
        index.close()
        raise
    if fed.undecodable:
        typer.echo(f"{fed.undecodable} snapshots could not be decoded: left out", err=True)
    return index


def _stuck_in(
    index: Index, definition: SagaDefinition, filters: Filters, bootstrap: str | None
) -> Callable[[list[str]], dict[str, list[str]]]:
    """With a ``stuck`` filter, load the command ids of the saga's dead letters into the index
    (its command topics' ``.dlq`` and its own); returns what says why instances are stuck."""
    if filters.stuck_before is None:
        return lambda instances: {}
    index.dead_lettered(dead_command_ids(definition, bootstrap))
    now_ms = int(time.time() * 1000)
    stuck_before = filters.stuck_before
    return lambda instances: index.why_stuck(instances, stuck_before, now_ms)


def dead_command_ids(definition: SagaDefinition, bootstrap: str | None) -> dict[str, str]:
    """The command id of each dead letter on the saga's dead-letter topics, with its reason:
    commands a worker dead-lettered (``<command topic>.dlq``), replies and other inputs the
    processor did (``<saga>.dlq``). A topic that does not exist has none."""
    topics = SagaTopics.for_saga(definition)
    found: dict[str, str] = {}
    for topic in (*(f"{t}.dlq" for t in sorted(topics.commands)), topics.dlq):
        try:
            letters = dead_letters(topic, bootstrap)
        except OperatorError:
            continue  # no such topic: nothing dead-lettered there
        for letter in letters:
            command_id = next((v for k, v in letter.headers if k == COMMAND_ID and v), None)
            if command_id is not None:
                found[command_id.decode(errors="replace")] = letter.reason or "?"
    return found


#: Records behind from which catching up shows its progress (on stderr).
SHOW_PROGRESS = 50_000


def _catch_up(feed: IndexFeed, stall: float) -> Fed:
    stored = feed.index.offsets()
    behind = sum(end - stored.get(p, 0) for p, end in feed.ends().items())
    if behind < SHOW_PROGRESS:
        return feed.catch_up(stall)
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"indexing {feed.topic}", total=behind)
        return feed.catch_up(stall, lambda read: progress.advance(task, read))


def console() -> Console:
    """A console as wide as the terminal; piped (and no COLUMNS), wide enough for any row:
    tables then keep each instance on one line and never cut a value."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=100_000)


def _listed_json(listed: Listed) -> dict[str, Any]:
    return asdict(listed) | {"steps": list(listed.steps)}


def _table(rows: list[Listed], title: str, stuck: dict[str, list[str]]) -> Table:
    table = Table(title=title)
    table.add_column("instance", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("steps", overflow="fold")
    table.add_column("v", justify="right")
    table.add_column("#", justify="right")
    table.add_column("started (UTC)", no_wrap=True)
    table.add_column("updated (UTC)", no_wrap=True)
    table.add_column("reason", overflow="fold")  # wrap, never cut
    if stuck:
        table.add_column("stuck on", overflow="fold")
    for row in rows:
        table.add_row(
            row.instance,
            row.status,
            ", ".join(row.steps),
            str(row.saga_version),
            str(row.position),
            format_time(row.started_at_ms),
            format_time(row.updated_at_ms),
            row.reason or "",
            *(["; ".join(stuck.get(row.instance, []))] if stuck else []),
        )
    return table


def _counts_table(counts: dict[str, int]) -> Table:
    table = Table(title=f"{sum(counts.values())} instances")
    table.add_column("status")
    table.add_column("count", justify="right")
    for status in STATUSES:
        if status in counts:
            table.add_row(status, str(counts[status]))
    return table


@app.command(name="list")
def list_(
    target: SagaTarget,
    status: Annotated[
        list[str] | None,
        typer.Option(help=f"Only this status (repeatable): {', '.join(STATUSES)}"),
    ] = None,
    step: Annotated[str | None, typer.Option(help="Only instances with this step active")] = None,
    started_after: Time = None,
    started_before: Time = None,
    updated_after: Time = None,
    updated_before: Time = None,
    reason: Annotated[
        str | None, typer.Option(help="Only instances whose reason contains this (any case)")
    ] = None,
    version: Annotated[int | None, typer.Option(help="Only this definition version")] = None,
    field: Annotated[
        list[str] | None,
        typer.Option(help="A field of the state equal to a value, PATH=VALUE (repeatable)"),
    ] = None,
    waiting_on_limit: Annotated[
        bool,
        typer.Option(
            "--waiting-on-limit",
            help="Only instances with a step queued for a limit (one limit: --where "
            "waiting-on-limit=NAME)",
        ),
    ] = False,
    where: Where = None,
    sort: Annotated[str, typer.Option(help="updated or started")] = "updated",
    ascending: Annotated[bool, typer.Option("--asc", help="Oldest first")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many first")] = 0,
    counts: Annotated[
        bool, typer.Option("--counts", help="Counts of the matching instances by status")
    ] = False,
    stuck: Annotated[
        bool,
        typer.Option(
            "--stuck",
            help="Only instances waiting on a step whose command or reply was dead-lettered, "
            "or on a step with no timeout for longer than --older-than",
        ),
    ] = False,
    older_than: Annotated[
        str, typer.Option(help="With --stuck: how long a step may wait with no timeout")
    ] = "10m",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
    state_dir: StateDir = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Find instances by status, active step, times, reason, version or state fields; or the
    stuck ones (--stuck), saying on what."""
    definition = saga_definition(target)
    filters = filters_of(
        where,
        status=status,
        step=step,
        started_after=started_after,
        started_before=started_before,
        updated_after=updated_after,
        updated_before=updated_before,
        reason=reason,
        version=version,
        field=field,
        waiting_on_limit=waiting_on_limit,
    )
    try:
        page = Page(sort=sort, descending=not ascending, limit=limit, offset=offset)
        if stuck:
            filters = merged(filters, Filters(stuck_before=moment(older_than)))
    except (FilterError, ValueError) as error:
        raise typer.BadParameter(str(error)) from None
    index = open_index(definition, state_dir, bootstrap)
    try:
        stuck_on = _stuck_in(index, definition, filters, bootstrap)
        by_status = index.counts(filters)
        rows = [] if counts else index.page(filters, page)
        why = stuck_on([row.instance for row in rows])
    finally:
        index.close()
    if counts:
        if as_json:
            typer.echo(json.dumps(by_status, indent=2))
        else:
            console().print(_counts_table(by_status))
        return
    total = sum(by_status.values())
    if as_json:
        listed = [_listed_json(r) | ({"stuck": why[r.instance]} if stuck else {}) for r in rows]
        document = {"total": total, "offset": offset, "instances": listed}
        typer.echo(json.dumps(document, indent=2))
        return
    if not rows:
        typer.echo(
            f"no instances match ({total} in all)" if offset and total else "no instances match"
        )
        return
    shown = f"{offset + 1}-{offset + len(rows)} of {total}"
    console().print(_table(rows, f"{definition.name}: {shown} by {sort} time", why))


@app.command()
def index(
    target: SagaTarget,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep following the changelog until Ctrl-C")
    ] = False,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Start again from the changelog's beginning")
    ] = False,
    field: Annotated[
        list[str] | None,
        typer.Option(help="Index this state field (repeatable): --field filters on it get fast"),
    ] = None,
    state_dir: StateDir = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Bring the saga's instance index up to date with its snapshots changelog, or --follow it."""
    definition = saga_definition(target)
    if rebuild:
        remove_index(index_path(state_dir or default_state_dir(definition.name)))
    started = time.monotonic()
    index = open_index(definition, state_dir, bootstrap)
    try:
        try:
            index.index_fields(field or [])
        except FilterError as error:
            raise typer.BadParameter(str(error), param_hint="--field") from None
        fields = ", ".join(index.indexed_fields()) or "none"
        typer.echo(
            f"index of {index.total()} instances up to date in "
            f"{time.monotonic() - started:.1f} s (state fields indexed: {fields})"
        )
        if follow:
            _follow(index, definition, bootstrap)
    finally:
        index.close()


def _follow(index: Index, definition: SagaDefinition, bootstrap: str | None) -> None:
    """Follow until Ctrl-C or SIGTERM, saying every 10 s what was applied and how late."""
    stopping: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda number, _: stopping.append(number))
    feed = IndexFeed(index, SagaTopics.for_saga(definition).snapshots, bootstrap)
    typer.echo(f"following {feed.topic} (Ctrl-C to stop)")
    window, worst, shown = Fed(), 0.0, time.monotonic()

    def each(fed: Fed) -> None:
        nonlocal window, worst, shown
        window.add(fed)
        if fed.oldest_ms is not None:  # how late its oldest record was when it was applied
            worst = max(worst, time.time() * 1000 - fed.oldest_ms)
        if time.monotonic() - shown >= 10:
            typer.echo(
                f"applied {window.applied} of {window.read} records read, "
                f"at most {worst:.0f} ms behind"
            )
            window, worst, shown = Fed(), 0.0, time.monotonic()

    try:
        feed.follow(lambda: not stopping, each)
    except KeyboardInterrupt:
        pass
    finally:
        feed.close()
        signal.signal(signal.SIGTERM, previous)


# -- bulk operator actions -------------------------------------------------------------------

#: How many of the instances a bulk action touches are named (all of them with --json).
SHOWN = 20


def selected(
    definition: SagaDefinition,
    where: list[str],
    state_dir: Path | None,
    bootstrap: str | None,
) -> list[str]:
    """Every instance matching ``--where`` now, most recently updated first."""
    try:
        filters = parse_where(where, moment)
    except FilterError as error:
        raise typer.BadParameter(str(error), param_hint="--where") from None
    index = open_index(definition, state_dir, bootstrap)
    try:
        _stuck_in(index, definition, filters, bootstrap)
        total = index.total(filters)
        if not total:
            return []
        return [row.instance for row in index.page(filters, Page(limit=total))]
    finally:
        index.close()


def describe_selection(action: str, instances: list[str], dry_run: bool) -> str:
    """``would cancel 3 instances: a, b, c`` (the first ``SHOWN`` named)."""
    named = ", ".join(instances[:SHOWN])
    more = f" and {len(instances) - SHOWN} more" if len(instances) > SHOWN else ""
    verb = f"would {action}" if dry_run else action
    return f"{verb} {len(instances)} instances: {named}{more}"
