"""Replaying recorded journals against a (new version of a) saga, to see what it decides now.

Each journal records, in order, every input the saga accepted (``SagaStarted``,
``InputAccepted``, ``OperatorAction``, with the input's bytes as they arrived) and every timer
that fired (``TimerFired``), each followed by the entries the saga decided on it. Verifying
gives each recorded input (or timer) to ``decide`` (or ``decide_timer``) again, at the time it
was recorded (the entry's ``at_ms`` is ``now``: durations and due times come out the same),
with the state folded from the journal before it, and compares what comes out with what was
recorded. Entries are compared field by field, except ``saga_version`` (a new version stamps
its own) and except that a record (an input or a command) counts as the same when it decodes
to the same value (schema evolution changes bytes, not meaning). An instance's first
difference is reported, and the replay of that instance stops there: beyond it, the recorded
inputs answer decisions the new version did not take.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sagas.saga import Saga
from sagas.testing._saga_test import definition_of
from stream_processors.codecs.records import Event, Record, decode_record, record_type
from stream_processors.core.decide import Decision, Input, decide, decide_timer
from stream_processors.core.decider import KEPT_EARLY
from stream_processors.core.documents import document_text
from stream_processors.core.fold import fold
from stream_processors.core.instance import Instance
from stream_processors.core.journal import FLOW_FIELDS, JournalEntry, Kind, stateless
from stream_processors.core.model import ENGINE_INPUTS, SagaDefinition

#: The kinds of entry that record an input the saga took, which begins a decision (an early
#: awaited event is kept or journaled unmatched).
_INPUTS = frozenset(
    {
        Kind.SAGA_STARTED,
        Kind.INPUT_ACCEPTED,
        Kind.OPERATOR_ACTION,
        Kind.EVENT_KEPT,
        Kind.EVENT_UNMATCHED,
    }
)
#: Inputs whose journaled reason is the note the input came with.
_NOTED = frozenset({Kind.INPUT_ACCEPTED, Kind.EVENT_KEPT, Kind.EVENT_UNMATCHED})
#: Every kind that begins a decision: an input, or a timer that fired.
_BEGINS = _INPUTS | {Kind.TIMER_FIRED}


class HistoriesDiffer(AssertionError):
    """Raised by ``HistoryReport.raise_for_differences``: the report, as its message."""


@dataclass(frozen=True)
class Difference:
    """Where an instance's recorded decisions and the saga's decisions now first part.

    ``position`` is the journal position of the first entry that differs; ``input`` the input
    (or timer) being decided there; ``expected`` the entries recorded for it, and ``actual``
    what the saga decides now (entries, or why it ignores, rejects or fails on the input).
    """

    instance: str
    position: int
    input: str
    expected: tuple[str, ...]
    actual: tuple[str, ...]

    def __str__(self) -> str:
        recorded = "".join(f"\n    {line}" for line in self.expected) or " (nothing)"
        now = "".join(f"\n    {line}" for line in self.actual) or " (nothing)"
        return (
            f"{self.instance} at position {self.position}, deciding on {self.input}:\n"
            f"  recorded:{recorded}\n  now:{now}"
        )


@dataclass(frozen=True)
class HistoryReport:
    """What ``verify_histories`` found: ``ok`` when every instance decides as recorded."""

    saga: str
    version: int
    instances: int
    entries: int
    differences: tuple[Difference, ...]

    @property
    def ok(self) -> bool:
        return not self.differences

    def raise_for_differences(self) -> None:
        """Raise ``HistoriesDiffer`` (an ``AssertionError``) listing the differences, if any."""
        if self.differences:
            raise HistoriesDiffer(str(self))

    def __str__(self) -> str:
        summary = (
            f"saga {self.saga} v{self.version}: {self.instances} instances "
            f"({self.entries} journal entries) replayed, {len(self.differences)} decide differently"
        )
        return "\n".join([summary, *(str(difference) for difference in self.differences)])


Histories = Mapping[str, Iterable[JournalEntry]] | Iterable[JournalEntry | Iterable[JournalEntry]]


def verify_histories(saga: type[Saga] | SagaDefinition, histories: Histories) -> HistoryReport:
    """Replay recorded journals against ``saga`` and report every instance that decides otherwise.

    ``histories``: journal entries in journal order (any mix of instances, as read from the
    journal topic), lists of them (one per instance, as ``SagaTest.journal``), or a mapping of
    instance id to entries (as ``load_histories`` returns). Pure: no broker.
    """
    definition = definition_of(saga)
    journals: dict[str, list[JournalEntry]] = {}
    for entry in _entries(histories):
        journals.setdefault(entry.instance, []).append(entry)
    differences: list[Difference] = []
    for journal in journals.values():
        journal.sort(key=lambda entry: entry.seq)
        difference = _first_difference(definition, journal)
        if difference is not None:
            differences.append(difference)
    return HistoryReport(
        saga=definition.name,
        version=definition.version,
        instances=len(journals),
        entries=sum(len(journal) for journal in journals.values()),
        differences=tuple(differences),
    )


def _entries(histories: Histories) -> Iterable[JournalEntry]:
    items = histories.values() if isinstance(histories, Mapping) else histories
    for item in items:
        # An operator's refusal is no part of the state, and no decision to take again.
        if isinstance(item, JournalEntry):
            if not stateless(item):
                yield item
        else:
            yield from (entry for entry in item if not stateless(entry))


def _decisions(journal: list[JournalEntry]) -> list[list[JournalEntry]]:
    """The journal cut into decisions: each starts with the input or timer it was about."""
    groups: list[list[JournalEntry]] = []
    for entry in journal:
        # A kept early event taken by a wait that starts is accepted inside that decision.
        taken = entry.kind == Kind.INPUT_ACCEPTED and entry.reason == KEPT_EARLY
        if not groups or (Kind(entry.kind) in _BEGINS and not taken):
            groups.append([entry])
        else:
            groups[-1].append(entry)
    return groups


def _first_difference(definition: SagaDefinition, journal: list[JournalEntry]) -> Difference | None:
    instance: Instance | None = None
    for recorded in _decisions(journal):
        first = recorded[0]
        expected = tuple(describe(entry) for entry in recorded)
        try:
            decision = _decide_again(definition, instance, first)
        except Exception as error:  # the new version fails on it: that is a difference too
            actual = (f"fails: {type(error).__name__}: {error}",)
            return Difference(first.instance, first.seq, _input(first), expected, actual)
        outcome = decision.rejected and f"rejects it: {decision.rejected}"
        outcome = outcome or (decision.ignored and f"ignores it: {decision.ignored}")
        if outcome:
            return Difference(first.instance, first.seq, _input(first), expected, (outcome,))
        for old, new in zip(recorded, decision.entries, strict=False):
            if not same_entry(old, new):
                return _differ(first, recorded, decision, old.seq)
        if len(recorded) != len(decision.entries):  # one is the other and more
            shorter = min(len(recorded), len(decision.entries))
            return _differ(first, recorded, decision, first.seq + shorter)
        try:  # on, from the journal as recorded (as the new version would read it)
            instance = fold(definition, instance, recorded)
        except Exception as error:
            actual = (f"cannot fold it: {type(error).__name__}: {error}",)
            return Difference(first.instance, first.seq, _input(first), expected, actual)
    return None


def _differ(
    first: JournalEntry, recorded: list[JournalEntry], decision: Decision, position: int
) -> Difference:
    expected = tuple(describe(entry) for entry in recorded)
    actual = tuple(describe(entry) for entry in decision.entries)
    return Difference(first.instance, position, _input(first), expected, actual)


def _decide_again(
    definition: SagaDefinition, instance: Instance | None, first: JournalEntry
) -> Decision:
    """The saga's decision now on the input (or timer) that ``first`` recorded, at its time."""
    if first.kind == Kind.TIMER_FIRED:
        return decide_timer(definition, instance, first.timer or "", first.at_ms)
    if Kind(first.kind) not in _INPUTS or first.record is None:
        raise ValueError(f"the journal has {first.kind} at position {first.seq}, not an input")
    record = decode_record(first.record)
    kind = Kind(first.kind)
    if kind is Kind.SAGA_STARTED:  # a child saga's start names its parent's step
        received = Input(
            record,
            first.record,
            first.command_id,
            None,
            first.reply_to,
            first.reply_key,
            operator_id=first.operator_id,
        )
        return decide(definition, instance, received, first.at_ms)
    # A reply names its command (the id journaled with it); an operator's note is its reason.
    command_id = first.command_id if first.step is not None else None
    note = first.reason if kind in _NOTED else None
    received = Input(record, first.record, command_id, note, operator_id=first.operator_id)
    return decide(definition, instance, received, first.at_ms)


def same_entry(recorded: JournalEntry, now: JournalEntry) -> bool:
    """Whether two entries say the same, whatever version stamped them and however encoded."""
    if replace(recorded, saga_version=0, record=None) != replace(now, saga_version=0, record=None):
        return False
    if recorded.record == now.record:
        return True
    if recorded.record is None or now.record is None:
        return False
    return _decoded(recorded.record) == _decoded(now.record)


def _decoded(data: bytes) -> Record | str:
    try:
        return decode_record(data)
    except Exception as error:
        return f"<{len(data)} bytes that do not decode: {error}>"


def _input(entry: JournalEntry) -> str:
    if entry.kind == Kind.TIMER_FIRED:
        return f"timer {entry.timer!r}"
    if entry.record is None:
        return entry.kind
    return f"{entry.kind} {_decoded(entry.record)}"


def describe(entry: JournalEntry) -> str:
    """One journal entry on one line: position, kind, and the fields it uses."""
    parts = [f"#{entry.seq} {entry.kind}"]
    if entry.step is not None:
        parts.append(f"step={entry.step}")
    if entry.attempt:
        parts.append(f"attempt={entry.attempt}")
    if entry.timer is not None:
        parts.append(f"timer={entry.timer}")
    if entry.due_ms is not None:
        parts.append(f"due=+{(entry.due_ms - entry.at_ms) / 1000:g}s")
    if entry.record is not None:
        parts.append(str(_decoded(entry.record)))
    if entry.reason is not None:
        parts.append(f"reason={entry.reason!r}")
    return " ".join(parts)


# -- loading ``sagas history --json`` files ----------------------------------------------------


def load_histories(
    source: str | Path | Iterable[str | Path], saga: type[Saga] | SagaDefinition | None = None
) -> dict[str, list[JournalEntry]]:
    """Journals saved with ``sagas history SAGA INSTANCE --json > file``, by instance id.

    ``source`` is a file, a folder (its ``*.json`` files, recursively) or a list of either. A
    file holds one history (the list ``sagas history --json`` prints), a list of histories, or
    an object of instance id to history. Entries name the record class of their input or
    command by schema (``record_schema``); files from a ``sagas history`` that did not write it
    name only the class, and need ``saga`` to find it among the saga's records.
    """
    definition = None if saga is None else definition_of(saga)
    paths = [source] if isinstance(source, str | Path) else list(source)
    files: list[Path] = []
    for path in map(Path, paths):
        files += sorted(path.rglob("*.json")) if path.is_dir() else [path]
    histories: dict[str, list[JournalEntry]] = {}
    for file in files:
        for name, history in _histories_in(json.loads(file.read_text()), file):
            journal = [_entry(item, name, definition, file) for item in history]
            instance = name or _instance_of(journal, definition, file)
            histories.setdefault(instance, []).extend(
                replace(e, instance=instance) for e in journal
            )
    return histories


def _histories_in(document: Any, file: Path) -> list[tuple[str | None, list[dict[str, Any]]]]:
    if isinstance(document, dict):
        return [(str(name), history) for name, history in document.items()]
    if isinstance(document, list) and all(isinstance(item, list) for item in document):
        return [(None, history) for history in document]
    if isinstance(document, list):
        return [(None, document)]
    raise ValueError(f"{file}: not a journal saved by `sagas history --json`")


def _entry(
    item: dict[str, Any], instance: str | None, definition: SagaDefinition | None, file: Path
) -> JournalEntry:
    where = f"{file}: position {item.get('position')}"
    record: bytes | None = None
    if "document" in item:  # a DocumentSet's record is the document's JSON text
        record = document_text(item["document"]).encode()
    elif item.get("record") is not None:
        cls = _record_class(item, definition, where)
        record = cls.from_avro(item["record"]).encode()
    elif item.get("record_type") is not None:
        raise ValueError(f"{where}: its {item['record_type']} record could not be read when saved")
    return JournalEntry(
        instance=item.get("instance") or instance or "",
        seq=item["position"],
        kind=item["event"],
        at_ms=item["at_ms"],
        saga_version=item["saga_version"],
        step=item.get("step"),
        command_id=item.get("command_id"),
        attempt=item.get("attempt") or 0,
        record=record,
        reason=item.get("reason"),
        timer=item.get("timer"),
        due_ms=item.get("due_ms"),
        **{name: item.get(name) for name in FLOW_FIELDS},
    )


def _record_class(
    item: dict[str, Any], definition: SagaDefinition | None, where: str
) -> type[Record]:
    schema = item.get("record_schema")
    if schema is not None:
        found = record_type(schema)
        if found is None:
            raise ValueError(f"{where}: no record class is bound to schema {schema} (import it)")
        return found
    name = item.get("record_type")
    if definition is None:
        raise ValueError(f"{where}: names its record only as {name!r}; pass saga= to find it")
    candidates = [t for t in _saga_records(definition) if t.__name__ == name]
    if len(candidates) != 1:
        raise ValueError(
            f"{where}: {len(candidates)} records of saga {definition.name} named {name!r}"
        )
    return candidates[0]


def _saga_records(definition: SagaDefinition) -> set[type[Record]]:
    """Every record class the saga takes or sends through its steps."""
    types: set[type[Record]] = {*definition.inputs, *ENGINE_INPUTS}
    for spec in definition.specs():
        types.update(spec.success)
        types.update(spec.failure)
        if spec.command is not None:
            types.add(spec.command)
    return types


def _instance_of(journal: list[JournalEntry], definition: SagaDefinition | None, file: Path) -> str:
    """The instance a history without instance ids is of: its start event names it."""
    if journal and journal[0].instance:
        return journal[0].instance
    start = decode_record(journal[0].record) if journal and journal[0].record else None
    if isinstance(start, Event):
        key = definition.key if definition is not None else start.__key__
        if key is not None:
            return str(getattr(start, key))
    return file.stem
