"""The instance index: an embedded SQLite database of every instance's latest snapshot.

``sagas list`` finds instances by status, active step, times, parked reason, definition version
and fields of the saga's state; the engine's store (RocksDB, per processor slot) can answer none
of that. The index is fed from the saga's ``<saga>.snapshots`` changelog (``index_feed`` reads it)
and is only a cache of it: every row comes from one snapshot, each partition's next offset is
stored in the same SQLite transaction as the rows it produced (so feeding resumes where it
stopped, and a crash never leaves rows and offsets apart), and deleting the file loses nothing.

This module owns the schema, the row of a snapshot, applying a batch of changelog records, and
turning ``Filters`` into SQL (values always as parameters, never formatted into the text).

Schema, designed for the queries ``sagas list`` makes:

- ``instances``: one row per instance, its state (``data``) as JSON for ``json_extract``;
  indexes on (status, updated_at_ms) and on each time alone, each ending in the instance id so
  that a sort on a time with the id as tie-breaker is read off the index, in order, and stops
  after a page. Every index costs each update of a row (the feed's throughput), so there are
  no more: a status sorted by start time sorts that status's rows, a version is a filter on
  the rows read in time order; ``Index.index_fields`` adds indexes on chosen state fields;
- ``active_steps``: the steps in flight of each instance with their definition node, the
  command id of their attempt, when it was sent and whether a timer of the step (its timeout,
  retry or sleep) will move it on (a side table: an instance may wait on several steps at once);
- ``dead_commands`` (temporary, per connection): command ids found in dead-letter topics,
  loaded by ``Index.dead_lettered`` before a ``stuck`` query;
- ``offsets``: the next changelog offset of each partition.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any
from uuid import UUID

from stream_processors.codecs.records import Record
from stream_processors.core.decision import retry_timer, sleep_timer, timeout_timer
from stream_processors.core.instance import Instance, Status

#: The file under a saga's state folder (``default_state_dir``) that holds its index.
INDEX_FILE = "index.sqlite3"
#: Bumped when the schema changes: an index of another version is rebuilt from the changelog.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    instance TEXT PRIMARY KEY,
    partition INTEGER NOT NULL,
    status TEXT NOT NULL,
    saga_version INTEGER NOT NULL,
    position INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    reason TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS by_status_updated ON instances (status, updated_at_ms, instance);
CREATE INDEX IF NOT EXISTS by_updated ON instances (updated_at_ms, instance);
CREATE INDEX IF NOT EXISTS by_started ON instances (started_at_ms, instance);
CREATE TABLE IF NOT EXISTS active_steps (
    instance TEXT NOT NULL,
    step TEXT NOT NULL,
    node TEXT NOT NULL,
    command_id TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    timed INTEGER NOT NULL,
    PRIMARY KEY (instance, step)
);
CREATE INDEX IF NOT EXISTS active_by_node ON active_steps (node, instance);
CREATE TEMP TABLE IF NOT EXISTS dead_commands (command_id TEXT PRIMARY KEY, reason TEXT);
CREATE TABLE IF NOT EXISTS waiting (
    command_id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    limit_name TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS waiting_by_instance ON waiting (instance, limit_name);
"""
#: The statuses in which an instance waits on its steps (parked and finished ones do not).
MOVING = ("running", "compensating")

_COLUMNS = (
    "instance",
    "partition",
    "status",
    "saga_version",
    "position",
    "started_at_ms",
    "updated_at_ms",
    "reason",
    "data",
)
_UPSERT = (
    f"INSERT INTO instances ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    "ON CONFLICT (instance) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
)


# -- rows -------------------------------------------------------------------------------------


def _json_default(value: object) -> object:
    """JSON for what Avro records hold beyond JSON's types (logical types, bytes)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, StrEnum):
        return value.value
    raise TypeError(f"not JSON: {type(value).__name__}")


def state_json(instance: Instance) -> str:
    """The saga's own state as JSON: the record's Avro datum, as ``sagas state`` shows it."""
    return record_json(instance.data)


def record_json(record: Record) -> str:
    """A record's Avro datum as compact JSON (logical types as text, bytes as base64)."""
    return json.dumps(record.to_avro(), default=_json_default, separators=(",", ":"))


@dataclass(frozen=True)
class Row:
    """What the index keeps of one snapshot."""

    instance: str
    partition: int
    status: str
    saga_version: int
    position: int
    started_at_ms: int
    updated_at_ms: int
    reason: str | None
    data: str
    #: Each active step: its key, definition node, attempt's command id, when that was sent,
    #: and whether a timer of the step (timeout, retry or sleep) will move it on.
    active: tuple[Active, ...] = ()

    def values(self) -> tuple[object, ...]:
        return tuple(getattr(self, column) for column in _COLUMNS)


@dataclass(frozen=True)
class Active:
    """One active step of an instance, as the index keeps it."""

    step: str
    node: str
    command_id: str
    sent_at_ms: int
    timed: bool


def _active(instance: Instance, name: str) -> Active:
    step = instance.steps[name]
    timers = (timeout_timer(name), retry_timer(name), sleep_timer(name))
    timed = any(timer in instance.timers for timer in timers)
    return Active(name, step.node or name, step.command_id, step.sent_at_ms, timed)


def row_of(instance: Instance, partition: int) -> Row:
    """The index row of a decoded snapshot (``decode_snapshot``) read from ``partition``."""
    return Row(
        instance=instance.instance_id,
        partition=partition,
        status=instance.status.value,
        saga_version=instance.saga_version,
        position=instance.seq - 1,
        started_at_ms=instance.started_at_ms,
        updated_at_ms=instance.updated_at_ms,
        reason=instance.reason,
        data=state_json(instance),
        active=tuple(_active(instance, name) for name in instance.active),
    )


@dataclass(frozen=True)
class Change:
    """One changelog record: a row to upsert, or the tombstone (``row`` None) of ``key``.

    A flow-control queue row (``stream_processors.engine.flow``: a step's command waiting for
    its limit) is a change with ``waiting`` set: (instance, limit) while queued, None once it
    left the queue (``key`` is then the row's key, not an instance)."""

    partition: int
    offset: int
    key: str
    row: Row | None
    queue_row: bool = False
    waiting: tuple[str, str] | None = None


# -- filters ----------------------------------------------------------------------------------

#: A state field: names separated by dots, each optionally indexed (``items[0].sku``).
_FIELD_PATH = re.compile(r"^[A-Za-z_]\w*(\[\d+\])*(\.[A-Za-z_]\w*(\[\d+\])*)*$")
_SORTS = {"updated": "updated_at_ms", "started": "started_at_ms"}
STATUSES = tuple(status.value for status in Status)


class FilterError(ValueError):
    """A filter that cannot be applied (unknown status, bad field path, bad time...)."""


@dataclass(frozen=True)
class FieldEquals:
    """A field of the saga's state equal to a value: ``path`` like ``customer.id``."""

    path: str
    value: str

    def __post_init__(self) -> None:
        if not _FIELD_PATH.match(self.path):
            raise FilterError(f"{self.path!r} is not a field path (names joined by dots)")

    def expression(self) -> str:
        """``json_extract`` of the field, its path written into the SQL: SQLite uses an index
        on an expression only for the very same text (``Index.index_fields``). The path is
        safe there: ``_FIELD_PATH`` lets through names, dots and digits in brackets only."""
        return f"json_extract(data, '$.{self.path}')"

    def candidates(self) -> tuple[object, object]:
        """The value as typed JSON (``42``, ``true``, ``"x"``) and as text: a state field of
        either kind matches what an operator types on a command line."""
        try:
            typed: object = json.loads(self.value)
        except json.JSONDecodeError:
            typed = self.value
        if isinstance(typed, bool):
            typed = int(typed)  # json_extract gives SQL integers for JSON booleans
        elif isinstance(typed, dict | list) or typed is None:
            typed = self.value
        return typed, self.value


@dataclass(frozen=True)
class Filters:
    """Which instances: every given condition holds (times are epoch milliseconds)."""

    statuses: tuple[str, ...] = ()
    step: str | None = None
    started_after: int | None = None
    started_before: int | None = None
    updated_after: int | None = None
    updated_before: int | None = None
    reason: str | None = None
    version: int | None = None
    fields: tuple[FieldEquals, ...] = ()
    #: Instance ids that start with this (the console's search box): a range on the key.
    id_prefix: str | None = None
    #: Exactly these instances.
    ids: tuple[str, ...] = ()
    #: Stuck: running or compensating, and waiting on a step whose command (or reply) was
    #: dead-lettered (the ids ``Index.dead_lettered`` loaded), or on a step that no timer will
    #: move on, sent before this time.
    stuck_before: int | None = None
    #: Only instances with a step waiting for this limit ("*": any limit).
    waiting_on: str | None = None

    def __post_init__(self) -> None:
        unknown = [s for s in self.statuses if s not in STATUSES]
        if unknown:
            raise FilterError(f"unknown status {', '.join(unknown)}; one of {', '.join(STATUSES)}")

    def where(self) -> tuple[str, list[object]]:
        """The SQL condition (``1`` for none) and its parameters, in order."""
        clauses: list[str] = []
        params: list[object] = []
        if self.statuses:
            clauses.append(f"status IN ({', '.join('?' * len(self.statuses))})")
            params.extend(self.statuses)
        if self.step is not None:
            clauses.append("instance IN (SELECT instance FROM active_steps WHERE node = ?)")
            params.append(self.step)
        for column, bound, value in (
            ("started_at_ms", ">=", self.started_after),
            ("started_at_ms", "<", self.started_before),
            ("updated_at_ms", ">=", self.updated_after),
            ("updated_at_ms", "<", self.updated_before),
        ):
            if value is not None:
                clauses.append(f"{column} {bound} ?")
                params.append(value)
        if self.reason is not None:
            clauses.append("instr(lower(reason), lower(?)) > 0")
            params.append(self.reason)
        if self.version is not None:
            clauses.append("saga_version = ?")
            params.append(self.version)
        for equals in self.fields:
            clauses.append(f"{equals.expression()} IN (?, ?)")
            params.extend(equals.candidates())
        if self.id_prefix:
            # A range, not LIKE: it reads the primary key's index, and "%" or "_" mean nothing.
            clauses.append("instance >= ? AND instance < ?")
            params.extend((self.id_prefix, self.id_prefix + "\U0010ffff"))
        if self.ids:
            clauses.append(f"instance IN ({', '.join('?' * len(self.ids))})")
            params.extend(self.ids)
        if self.stuck_before is not None:
            clauses.append(f"status IN {MOVING} AND instance IN ({_STUCK_STEPS})")
            params.append(self.stuck_before)
        if self.waiting_on == "*":
            clauses.append("instance IN (SELECT instance FROM waiting)")
        elif self.waiting_on is not None:
            clauses.append("instance IN (SELECT instance FROM waiting WHERE limit_name = ?)")
            params.append(self.waiting_on)
        return " AND ".join(clauses) or "1", params


#: The instances with a stuck active step (one parameter: sent before when, untimed).
_STUCK_STEPS = (
    "SELECT instance FROM active_steps WHERE command_id IN (SELECT command_id FROM dead_commands)"
    " OR (timed = 0 AND sent_at_ms < ?)"
)


#: ``--where`` names and the ``Filters`` field each sets; ``data.PATH`` names a state field.
WHERE_NAMES = {
    "status": "statuses",
    "step": "step",
    "started-after": "started_after",
    "started-before": "started_before",
    "updated-after": "updated_after",
    "updated-before": "updated_before",
    "reason": "reason",
    "version": "version",
    "id-prefix": "id_prefix",
    "stuck": "stuck_before",
    "waiting-on-limit": "waiting_on",
}


def parse_where(items: Iterable[str], parse_time: Any) -> Filters:
    """``Filters`` from ``NAME=VALUE`` items (``status=failed,needs_attention``,
    ``data.customer.id=42``...); ``parse_time`` turns a time's text into epoch milliseconds."""
    found: dict[str, Any] = {}
    fields: list[FieldEquals] = []
    for item in items:
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals:
            raise FilterError(f"{item!r} is not NAME=VALUE")
        if name.startswith("data."):
            fields.append(FieldEquals(name.removeprefix("data."), value))
            continue
        if name not in WHERE_NAMES:
            known = ", ".join([*WHERE_NAMES, "data.FIELD"])
            raise FilterError(f"unknown filter {name!r}; one of {known}")
        target = WHERE_NAMES[name]
        if target == "statuses":
            found[target] = (*found.get(target, ()), *(s for s in value.split(",") if s))
        elif target == "version":
            if not value.isdigit():
                raise FilterError(f"version={value!r}: a whole number")
            found[target] = int(value)
        elif target.endswith(("_after", "_before")):
            found[target] = parse_time(value)
        else:
            found[target] = value
    return Filters(**found, fields=tuple(fields))


@dataclass(frozen=True)
class Page:
    """Sorting and paging: ``sort`` is ``updated`` or ``started``."""

    sort: str = "updated"
    descending: bool = True
    limit: int = 50
    offset: int = 0

    def __post_init__(self) -> None:
        if self.sort not in _SORTS:
            raise FilterError(f"sort by {' or '.join(_SORTS)}, not {self.sort!r}")
        if self.limit < 1 or self.offset < 0:
            raise FilterError("limit is at least 1, offset at least 0")

    def order(self) -> str:
        direction = "DESC" if self.descending else "ASC"
        return f"ORDER BY {_SORTS[self.sort]} {direction}, instance {direction}"


@dataclass(frozen=True)
class Listed:
    """One instance as listed."""

    instance: str
    status: str
    saga_version: int
    position: int
    started_at_ms: int
    updated_at_ms: int
    reason: str | None
    steps: tuple[str, ...]
    data: dict[str, Any] = field(default_factory=dict)


def _table(scan: bool) -> str:
    """``instances``, or read from end to end (``scan``): a filter on a state field that has
    no index of its own reads every row's state, and reading the table in its order takes a
    fraction of the time of reading it in a time index's order (one random read per row)."""
    return "instances NOT INDEXED" if scan else "instances"


def select_sql(filters: Filters, page: Page, scan: bool = False) -> tuple[str, list[object]]:
    """The query of one page of instances (with their active steps' nodes, comma-joined)."""
    where, params = filters.where()
    sql = (
        "SELECT instance, status, saga_version, position, started_at_ms, updated_at_ms, reason, "
        "data, (SELECT group_concat(node, ',') FROM active_steps a "
        "WHERE a.instance = instances.instance) "
        f"FROM {_table(scan)} WHERE {where} {page.order()} LIMIT ? OFFSET ?"
    )
    return sql, [*params, page.limit, page.offset]


def counts_sql(filters: Filters, scan: bool = False) -> tuple[str, list[object]]:
    where, params = filters.where()
    return f"SELECT status, count(*) FROM {_table(scan)} WHERE {where} GROUP BY status", params


# -- the database -----------------------------------------------------------------------------


class Index:
    """An open index file. ``apply`` writes; ``page``, ``counts`` and ``total`` read.

    Several processes may use one file (``sagas index --follow`` and ``sagas list``): SQLite's
    WAL lets readers go on while one writes, and ``apply`` skips records below the offsets
    another writer already stored, so two feeders never put an older snapshot back.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # Transactions are explicit (BEGIN IMMEDIATE in ``apply``): autocommit otherwise.
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # WAL stays consistent after a crash
        self._db.execute("PRAGMA cache_size = -65536")  # 64 MiB: updates land all over
        self._check_version()

    def _check_version(self) -> None:
        self._db.executescript(_SCHEMA)
        found = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if found is not None and found[0] != str(SCHEMA_VERSION):
            self.reset()  # another layout: the changelog rebuilds it
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
        )

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def reset(self) -> None:
        """Forget every row and offset (the changelog was recreated, or the schema changed);
        the indexed state fields stay indexed."""
        fields = self.indexed_fields()
        self._db.executescript(
            "DROP TABLE IF EXISTS instances; DROP TABLE IF EXISTS active_steps;"
            "DROP TABLE IF EXISTS offsets; DROP TABLE IF EXISTS meta;" + _SCHEMA
        )
        self.index_fields(fields)

    def index_fields(self, paths: Iterable[str]) -> None:
        """Index state fields (``customer_id``, ``address.city``): a filter on one then reads
        the matching rows off its index instead of every instance's JSON."""
        for path in paths:
            expression = FieldEquals(path, "").expression()  # checks the path
            name = f"field:{path}".replace('"', "")
            self._db.execute(f'CREATE INDEX IF NOT EXISTS "{name}" ON instances ({expression})')
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"field:{path}", path)
            )

    def source(self) -> str | None:
        """The id of the topic the index was fed from (None before the first feed)."""
        found = self._db.execute("SELECT value FROM meta WHERE key = 'topic_id'").fetchone()
        return None if found is None else str(found[0])

    def fed_from(self, topic_id: str) -> None:
        """Feed from the topic with this id: an index fed from another one starts again."""
        if self.source() not in (None, topic_id):
            self.reset()
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('topic_id', ?)", (topic_id,)
        )

    def indexed_fields(self) -> list[str]:
        rows = self._db.execute("SELECT value FROM meta WHERE key LIKE 'field:%' ORDER BY value")
        return [row[0] for row in rows]

    def offsets(self) -> dict[int, int]:
        """The next changelog offset of each partition read so far."""
        return dict(self._db.execute("SELECT partition, next_offset FROM offsets").fetchall())

    def apply(self, changes: Sequence[Change]) -> int:
        """Upsert or delete each change's instance and store the next offsets, in one
        transaction; returns how many changes were new (not below the stored offsets)."""
        with self._transaction() as db:
            stored = dict(db.execute("SELECT partition, next_offset FROM offsets").fetchall())
            fresh = [c for c in changes if c.offset >= stored.get(c.partition, 0)]
            _write(db, latest(fresh))
            ends: dict[int, int] = {}
            for change in fresh:
                ends[change.partition] = max(ends.get(change.partition, 0), change.offset + 1)
            db.executemany(
                "INSERT INTO offsets (partition, next_offset) VALUES (?, ?) "
                "ON CONFLICT (partition) DO UPDATE SET next_offset = excluded.next_offset",
                sorted(ends.items()),
            )
        return len(fresh)

    def _scan(self, filters: Filters) -> bool:
        indexed = set(self.indexed_fields())
        return any(equals.path not in indexed for equals in filters.fields)

    def page(self, filters: Filters, page: Page) -> list[Listed]:
        sql, params = select_sql(filters, page, self._scan(filters))
        return [
            Listed(
                instance=row[0],
                status=row[1],
                saga_version=row[2],
                position=row[3],
                started_at_ms=row[4],
                updated_at_ms=row[5],
                reason=row[6],
                data=json.loads(row[7]),
                steps=tuple(row[8].split(",")) if row[8] else (),
            )
            for row in self._db.execute(sql, params)
        ]

    def counts(self, filters: Filters = Filters()) -> dict[str, int]:
        """How many instances match, by status (statuses with none left out)."""
        sql, params = counts_sql(filters, self._scan(filters))
        return dict(self._db.execute(sql, params).fetchall())

    def total(self, filters: Filters = Filters()) -> int:
        return sum(self.counts(filters).values())

    def find(self, instance: str) -> Listed | None:
        """One instance's row, or None when the index has none."""
        found = self.page(Filters(ids=(instance,)), Page(limit=1))
        return found[0] if found else None

    def dead_lettered(self, reasons: dict[str, str]) -> None:
        """The command ids found on dead-letter topics, with their reasons, for ``stuck``
        filters and ``why_stuck`` (this connection only: they are no part of the changelog)."""
        self._db.execute("DELETE FROM dead_commands")
        self._db.executemany("INSERT OR REPLACE INTO dead_commands VALUES (?, ?)", reasons.items())

    def why_stuck(
        self, instances: Sequence[str], stuck_before: int, now_ms: int
    ) -> dict[str, list[str]]:
        """For each of ``instances``, why it is stuck: each active step whose command or reply
        was dead-lettered, or that no timer moves on and was sent before ``stuck_before``."""
        found: dict[str, list[str]] = {}
        marks = ", ".join("?" * len(instances))
        rows = self._db.execute(
            "SELECT a.instance, a.node, a.command_id, a.sent_at_ms, a.timed, d.reason "
            "FROM active_steps a LEFT JOIN dead_commands d ON d.command_id = a.command_id "
            f"WHERE a.instance IN ({marks}) ORDER BY a.instance, a.sent_at_ms",
            list(instances),
        )
        for instance, node, command, sent_at_ms, timed, reason in rows:
            if reason is not None:
                why = f"{node}: {command} dead-lettered ({reason})"
            elif not timed and sent_at_ms < stuck_before:
                why = f"{node}: no answer for {_age(now_ms - sent_at_ms)}, and no timeout"
            else:
                continue
            found.setdefault(instance, []).append(why)
        return found

    def explain(self, filters: Filters, page: Page) -> list[str]:
        """SQLite's plan for a page's query (the benchmark shows it)."""
        sql, params = select_sql(filters, page, self._scan(filters))
        return [row[3] for row in self._db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def _age(ms: int) -> str:
    """A duration the way an operator reads it: ``45s``, ``12m``, ``3h5m``, ``2d4h``."""
    seconds = max(0, ms) // 1000
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m" if minutes else f"{seconds}s"


def latest(changes: Sequence[Change]) -> list[Change]:
    """The last change of each instance, in offset order: only an instance's latest snapshot
    counts, so a batch that holds several of one instance writes one (a feeder that is
    behind reads bigger batches, and so catches up faster)."""
    last = {change.key: change for change in changes}
    return sorted(last.values(), key=lambda c: (c.partition, c.offset))


def _write(db: sqlite3.Connection, changes: Sequence[Change]) -> None:
    queue = [c for c in changes if c.queue_row]
    db.executemany(
        "INSERT OR REPLACE INTO waiting (command_id, instance, limit_name) VALUES (?, ?, ?)",
        [(c.key, *c.waiting) for c in queue if c.waiting is not None],
    )
    db.executemany(
        "DELETE FROM waiting WHERE command_id = ?", [(c.key,) for c in queue if c.waiting is None]
    )
    changes = [c for c in changes if not c.queue_row]
    # The record's key and the snapshot's instance are the same id (the processor keys its
    # changelog so); the snapshot's is the one its rows are written under.
    rows = [c.row for c in changes if c.row is not None]
    deleted = [(c.key,) for c in changes if c.row is None]
    db.executemany(
        "DELETE FROM active_steps WHERE instance = ?", [*deleted, *((r.instance,) for r in rows)]
    )
    db.executemany("DELETE FROM instances WHERE instance = ?", deleted)
    db.executemany("DELETE FROM waiting WHERE instance = ?", deleted)
    db.executemany(_UPSERT, [row.values() for row in rows])
    db.executemany(
        "INSERT INTO active_steps (instance, step, node, command_id, sent_at_ms, timed) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            (row.instance, a.step, a.node, a.command_id, a.sent_at_ms, int(a.timed))
            for row in rows
            for a in row.active
        ],
    )


def index_path(state_dir: Path) -> Path:
    """Where a saga's index lives: next to its store's slots, in its state folder."""
    return state_dir / INDEX_FILE


def remove_index(path: Path) -> None:
    """Delete an index file with its write-ahead log (the changelog rebuilds it)."""
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def merged(first: Filters, second: Filters) -> Filters:
    """Both sets of conditions (the second's single values win; statuses and fields add)."""
    single: dict[str, Any] = {}
    adding = ("statuses", "fields", "ids")
    for name in (f.name for f in fields(Filters) if f.name not in adding):
        value = getattr(second, name)
        single[name] = getattr(first, name) if value is None else value
    return Filters(
        statuses=(*first.statuses, *second.statuses),
        fields=(*first.fields, *second.fields),
        ids=(*first.ids, *second.ids),
        **single,
    )
