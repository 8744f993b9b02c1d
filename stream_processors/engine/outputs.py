"""What the processor writes into its open transaction, checked against the topics' limits.

A decision's journal entries, commands (signed, with their reply address) and the instance's new
snapshot are staged together or not at all: each is checked against its topic's limits first,
and if one would not fit, nothing is produced and the record that would not fit is returned, for
the caller to park the instance instead (``stream_processors.core.oversize``) and dead-letter
the input. Dead letters are cut to fit the dead-letter topic (``limits.fit_dead_letter``).
``produced`` counts the records produced for the input at hand, so that a produce refused midway
can tell whether anything of the input is in the transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException, Message

from stream_processors.codecs.avro import DecodeError
from stream_processors.codecs.records import CATALOG, record_type
from stream_processors.codecs.signing import Keyring, Purpose, signed
from stream_processors.core import limits, oversize
from stream_processors.core.decide import Decision
from stream_processors.core.decision import COMMAND, OutgoingCommand
from stream_processors.core.instance import Instance, encode_snapshot
from stream_processors.core.journal import JournalEntry
from stream_processors.engine import metrics, tracing
from stream_processors.engine.routing import (
    DLQ_DETAIL,
    DLQ_REASON,
    SCHEDULE,
    dead_letter_marks,
    outgoing_headers,
    received_headers,
)
from stream_processors.engine.transaction import OpenTransaction, planned
from stream_processors.kafka.clients import Producer, Stopping
from stream_processors.kafka.topics import SagaTopics

if TYPE_CHECKING:  # the gate stages through these outputs: imported for the type only
    from stream_processors.engine.flow import FlowGate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unstaged:
    """A decision that was not staged because ``too_large`` would not fit; ``parked``: its
    instance was parked instead (``stream_processors.core.oversize``), and ``why`` (not), for
    the dead letter's detail."""

    too_large: oversize.TooLarge
    parked: bool
    why: str


class Outputs:
    def __init__(
        self,
        saga: str,
        topics: SagaTopics,
        signing: Keyring | None,
        limit: Callable[[str], limits.Limits],
        producer: Callable[[], Producer],
        transaction: OpenTransaction,
        stopping: threading.Event,
        measures: metrics.SagaMetrics,
    ) -> None:
        self.saga = saga
        self.topics = topics
        self.signing = signing
        self._limit = limit
        self._producer = producer  # the current one: it is recreated after a fatal error
        self._txn = transaction
        self._stopping = stopping
        self.produced = 0
        self._measures = measures
        #: Flow control (set by the processor when the saga declares limits).
        self.gate: FlowGate | None = None

    def produce(self, topic: str, **record: object) -> None:
        """Produce one record; waits while the local queue is full (unless stopping)."""
        producer = self._producer()
        while True:
            try:
                producer.produce(topic, **record)  # type: ignore[arg-type]
                break
            except BufferError:
                if self._stopping.is_set():
                    raise Stopping() from None
                producer.poll(0.1)
        self.produced += 1

    def emit(
        self,
        decision: Decision,
        partition: int,
        key: bytes,
        before: Instance | None,
        now_ms: int,
    ) -> oversize.TooLarge | None:
        """Stage a decision: its journal entries, commands and snapshot. Each is checked
        against its topic's limits first; if one would not fit, nothing is staged and that
        record is returned (the caller parks the instance, or dead-letters what it decided on)."""
        assert decision.instance is not None
        journal = self.topics.journal
        # The record's timestamp is the entry's own time: Kafka's time index then finds an
        # instance's history from its started_at_ms (see stream_processors.tools.history).
        entries = [
            (
                limits.Outgoing(f"journal entry {entry.kind}", journal, key, entry.encode()),
                {"partition": partition, "timestamp": entry.at_ms},
            )
            for entry in decision.entries
        ]
        trace = tracing.saga_trace(self.saga, decision.instance) if tracing.ENABLED else None
        commands = [self._command(command, trace) for command in decision.commands]
        snapshot = encode_snapshot(decision.instance)
        snapshots = self.topics.snapshots
        plan = planned(decision.instance)
        # Commands are checked before the journal entries that carry them: when both are too
        # large, the reason names the command, what the user's code built.
        checks = [(record, self._limit(record.topic)) for record in commands]
        journal_limits = self._limit(journal)  # looked up once: every entry goes there
        checks += [(record, journal_limits) for record, _ in entries]
        record = limits.Outgoing("snapshot", snapshots, key, snapshot, [(SCHEDULE, plan[2])])
        checks.append((record, self._limit(snapshots)))
        found = limits.first_oversize_at(checks)
        if found is not None:
            return oversize.TooLarge(found[1], _described(decision, found[0]))
        # Commands their limits hold back are queued by the gate, in this transaction too.
        held = set() if self.gate is None else self.gate.admit(partition, decision, now_ms)
        sent = [
            c for c, o in zip(commands, decision.commands, strict=True) if o.command_id not in held
        ]
        outgoing: list[tuple[limits.Outgoing, dict[str, int]]] = [
            *entries,
            *((command, {}) for command in sent),
        ]
        for record, extra in outgoing:
            self.produce(
                record.topic, key=record.key, value=record.value, headers=record.headers, **extra
            )
        if trace is not None:
            self._txn.spans += tracing.decision_spans(self.saga, trace, decision, before, now_ms)
        slot = (partition, decision.instance.instance_id)
        self._measures.staged(slot, before, decision)  # counted once the transaction commits
        self._txn.stage(slot, decision.instance, snapshot, plan)
        if self.gate is not None:
            self.gate.settle(partition, decision.instance)
        return None

    def journal_alone(self, entry: JournalEntry, partition: int, key: bytes) -> None:
        """Stage one journal entry that changes no state (an operator's refusal): no snapshot.
        Too large with the operator's record in it, it goes without (its reason says why)."""
        journal = self.topics.journal
        value = entry.encode()
        if self._limit(journal).oversize("refusal", journal, key, value, None) is not None:
            value = replace(entry, record=None, reason=(entry.reason or "")[:2000]).encode()
        self.produce(journal, key=key, value=value, partition=partition, timestamp=entry.at_ms)

    def _command(
        self, command: OutgoingCommand, trace: tracing.SagaTrace | None
    ) -> limits.Outgoing:
        """A command as produced: with its reply address, trace context and signature."""
        command_key, topic = command.key.encode(), command.topic
        headers = outgoing_headers(command, self.topics.inbox, self.saga)
        if trace is not None:
            headers += tracing.command_trace(trace, command)
        if self.signing is not None:
            # A child saga's start, end or cancel goes to a saga's inbox, not to a worker.
            purpose = Purpose.COMMAND if command.kind == COMMAND else Purpose.INBOX
            headers = signed(self.signing, purpose, topic, command_key, command.value, headers)
        what = f"command {command.command_id[:200]}"
        return limits.Outgoing(what, topic, command_key, command.value, headers)

    def send_released(self, command: OutgoingCommand, instance: Instance) -> None:
        """Produce a command its limit held back, now released (``stream_processors.engine.
        flow``); it was checked against its topic's limits when it was queued."""
        trace = tracing.saga_trace(self.saga, instance) if tracing.ENABLED else None
        record = self._command(command, trace)
        self.produce(record.topic, key=record.key, value=record.value, headers=record.headers)

    def dead_letter(self, message: Message, reason: str, detail: str) -> None:
        log.warning(
            "dead letter from %s[%s]@%s: %s %s",
            message.topic(),
            message.partition(),
            message.offset(),
            reason,
            detail,
        )
        original = received_headers(message)
        marks = dead_letter_marks(message, reason, detail)
        self._send_dead_letter(message.key(), message.value(), original, marks)
        metrics.count_dead_letter(self.saga, reason)

    def dead_letter_timer(self, key: bytes, timer: str, oversize: limits.Oversize) -> None:
        """A timer's decision that would not fit, and neither would parking the instance: left
        undone, and said so on the DLQ (it has no origin to redrive to; the instance's timer is
        not fired again)."""
        detail = f"timer {timer}: {oversize.detail()}"
        log.error("instance %s: %s", key[:200].decode(errors="replace"), detail)
        marks: list[tuple[str, str | bytes | None]] = [
            (DLQ_REASON, limits.OUTPUTS_TOO_LARGE.encode()),
            (DLQ_DETAIL, detail[:1000].encode()),
        ]
        self._send_dead_letter(key, None, [], marks)
        metrics.count_dead_letter(self.saga, limits.OUTPUTS_TOO_LARGE)

    def _send_dead_letter(
        self,
        key: bytes | None,
        value: bytes | None,
        original: limits.HeaderPairs,
        marks: limits.HeaderPairs,
    ) -> None:
        """Produce a dead letter cut to fit the DLQ (``limits.fit_dead_letter``); if the broker's
        client still refuses it, its reason and origin alone."""
        dlq = self.topics.dlq
        letter = limits.fit_dead_letter(
            key, value, original, marks, self._limit(dlq).max_record_bytes
        )
        try:
            self.produce(dlq, key=letter.key, value=letter.value, headers=letter.headers)
        except KafkaException as error:
            if error.args[0].fatal() or error.args[0].txn_requires_abort():
                raise
            log.error("dead letter refused (%s): sending its reason and origin only", error)
            self.produce(dlq, key=letter.key[:1024] if letter.key else None, headers=list(marks))


def _described(decision: Decision, index: int) -> str:
    """What the ``index``-th record ``Outputs.emit`` checked is (``oversize.TooLarge.record``):
    the decision's commands, then its journal entries, then the snapshot."""
    commands, entries = decision.commands, decision.entries
    if index < len(commands):
        command = commands[index]
        step = next((e.step for e in entries if e.command_id == command.command_id), None)
        return oversize.described("command", _type_name(command.value), step)
    index -= len(commands)
    if index < len(entries):
        return oversize.described("journal entry", entries[index].kind, entries[index].step)
    return oversize.SNAPSHOT


def _type_name(value: bytes) -> str | None:
    """The name of a framed record's class (else its schema's), read off its frame header."""
    try:
        full_name = CATALOG.writer_of(value)[0].full_name
    except DecodeError:
        return None
    cls = record_type(full_name)
    return full_name.rpartition(".")[2] if cls is None else cls.__qualname__
