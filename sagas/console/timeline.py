"""An instance's history as the console's timeline: each journal entry with what kind of event
it was (an input, a command, a reply, a timer, an operator's action, the outcome, control flow)
and a one-line summary.

Pure: it reads ``JournalEntry`` values (``stream_processors.tools.history`` reads them from the
journal) and decodes their records; the templates only lay the items out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from stream_processors.codecs.records import Record, decode_record
from stream_processors.core.journal import JournalEntry, Kind
from stream_processors.core.model import OperatorAction
from stream_processors.tools.history import Located
from stream_processors.tools.index import record_json

COMMAND, REPLY, TIMER, OPERATOR, OUTCOME, INPUT, FLOW = (
    "command",
    "reply",
    "timer",
    "operator",
    "outcome",
    "input",
    "flow",
)
#: Every category, in the order the console's filter lists them.
CATEGORIES = (INPUT, COMMAND, REPLY, TIMER, OPERATOR, OUTCOME, FLOW)

#: Keyed by the kinds' text (a ``Kind`` is a ``str``), as entries hold it.
_BY_KIND: dict[str, str] = {
    Kind.COMMAND_SENT: COMMAND,
    Kind.COMPENSATION_SENT: COMMAND,
    Kind.STEP_SUCCEEDED: REPLY,
    Kind.ATTEMPT_FAILED: REPLY,
    Kind.STEP_FAILED: REPLY,
    Kind.COMPENSATION_SUCCEEDED: REPLY,
    Kind.COMPENSATION_FAILED: REPLY,
    Kind.TIMER_SCHEDULED: TIMER,
    Kind.TIMER_FIRED: TIMER,
    Kind.TIMER_CANCELLED: TIMER,
    Kind.OPERATOR_ACTION: OPERATOR,
    Kind.SAGA_RESUMED: OPERATOR,
    Kind.SAGA_RESOLVED: OPERATOR,
    Kind.SAGA_COMPLETED: OUTCOME,
    Kind.SAGA_COMPENSATING: OUTCOME,
    Kind.SAGA_COMPENSATED: OUTCOME,
    Kind.SAGA_FAILED: OUTCOME,
    Kind.SAGA_PARKED: OUTCOME,
    Kind.SAGA_STARTED: INPUT,
    Kind.INPUT_ACCEPTED: INPUT,
    Kind.EVENT_KEPT: INPUT,
    Kind.EVENT_UNMATCHED: INPUT,
}


@dataclass(frozen=True)
class Item:
    """One entry of the timeline."""

    position: int
    offset: int
    at: str
    kind: str
    category: str
    step: str | None
    attempt: int
    record_type: str | None
    summary: str
    #: The entry's record as JSON (inputs, commands, replies), for a closer look.
    record_json: str | None
    #: Who acted (operator actions).
    by: str | None


def _decoded(raw: bytes | None) -> Record | None:
    if raw is None:
        return None
    try:
        return decode_record(raw)
    except Exception:  # a record of a type this process cannot load: shown by kind alone
        return None


def category(entry: JournalEntry, record: Record | None) -> str:
    """What kind of event an entry is. An accepted input that names a step is a reply (a
    service's answer, or a waited-for event); an operator's action is one however journaled."""
    if isinstance(record, OperatorAction):
        return OPERATOR
    if entry.kind == Kind.INPUT_ACCEPTED and entry.step:
        return REPLY
    return _BY_KIND.get(entry.kind, FLOW)


def _record_json(record: Record) -> str:
    return json.dumps(json.loads(record_json(record)), indent=2)


def _summary(entry: JournalEntry) -> str:
    """Step, timer, reason and due time (the record has a line of its own)."""
    parts = [entry.step or "", entry.timer or "", entry.reason or ""]
    if entry.due_ms is not None:
        parts.append("due " + _time(entry.due_ms))
    return " · ".join(part for part in parts if part)


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def timeline(history: list[Located]) -> list[Item]:
    """The timeline of an instance's journal entries, oldest first."""
    items: list[Item] = []
    for located in history:
        entry = located.entry
        record = _decoded(entry.record)
        items.append(
            Item(
                position=entry.seq,
                offset=located.offset,
                at=_time(entry.at_ms),
                kind=entry.kind,
                category=category(entry, record),
                step=entry.step,
                attempt=entry.attempt,
                record_type=None if record is None else type(record).__name__,
                summary=_summary(entry),
                record_json=None if record is None else _record_json(record),
                by=record.by if isinstance(record, OperatorAction) else None,
            )
        )
    return items
