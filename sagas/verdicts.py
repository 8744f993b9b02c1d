"""The processor's verdicts on operator requests, read back from the journal; and how they read.

An operator's action or signal carries a request id (the ``sagalog.operator_id`` header). The
processor answers it in the instance's journal partition, in the transaction that consumed it:
applied, the first entry of its decision carries the id (``JournalEntry.operator_id``); refused,
an ``OperatorRefused`` entry with the id says why (``stream_processors.core.decide``).

``JournalWatch`` notes where each journal partition ends *before* the requests are sent (so no
answer can be written before that point) and then reads, read committed, from there for the
entries answering them, until each has one or the time is up. It watches the saga's
dead-letter topic the same way: a request dead-lettered before any decision (a bad signature,
the saga's code raising) keeps its headers there, request id included. ``Verdict`` is one request's
outcome; ``summary`` groups many (a bulk action's) into lines: applied n, refused m by reason.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from stream_processors.core.decide import refusal_parts
from stream_processors.core.journal import JournalEntry, Kind
from stream_processors.engine.routing import DLQ_DETAIL, DLQ_REASON, OPERATOR_ID, header
from stream_processors.kafka.config import consumer_config
from stream_processors.kafka.reading import watermarks

#: ``Verdict.outcome``: the processor applied it; refused it (``why``); dead-lettered it before
#: deciding (a bad signature, the saga's code raising...); no answer came in time; sent without
#: waiting (``--no-wait``).
APPLIED = "applied"
REFUSED = "refused"
DEAD_LETTERED = "dead-lettered"
NO_VERDICT = "no-verdict"
SENT = "sent"
#: How many instance ids ``summary`` names per group, at most.
NAMED = 10


@dataclass(frozen=True)
class Verdict:
    """What became of one operator request to one instance.

    ``inbox_partition``/``inbox_offset`` say where the request was written. Applied or refused,
    ``journal_partition``/``journal_offset`` say where the answering entry is, ``kind`` what it
    is; applied, ``seq`` is its position in the instance's history. Refused, ``code`` is the
    reason code (as counted in ``sagalog_inputs_ignored_total``) and ``why`` the sentence.
    """

    instance: str
    what: str
    request: str
    outcome: str
    inbox_partition: int
    inbox_offset: int
    kind: str | None = None
    seq: int | None = None
    journal_partition: int | None = None
    journal_offset: int | None = None
    code: str | None = None
    why: str | None = None

    @property
    def ok(self) -> bool:
        """Applied, or sent without asking: what a script may go on after."""
        return self.outcome in (APPLIED, SENT)

    @property
    def journal_position(self) -> str:
        return f"journal[{self.journal_partition}]@{self.journal_offset}"

    def describe(self) -> str:
        """One line for people: what happened, and where it is written."""
        subject = f"{self.what} to {self.instance}"
        if self.outcome == APPLIED:
            return f"applied {subject}: {self.kind} #{self.seq} at {self.journal_position}"
        if self.outcome == REFUSED:
            written = f"journaled at {self.journal_position}"
            return f"refused {subject}: {self.why} [{self.code}] ({written})"
        if self.outcome == DEAD_LETTERED:
            return f"dead-lettered {subject}: [{self.code}] {self.why}"
        sent = f"inbox[{self.inbox_partition}]@{self.inbox_offset}"
        if self.outcome == SENT:
            return f"sent {subject} ({sent}, request {self.request}); not waiting for the verdict"
        return f"no verdict on {subject}: {self.why} (sent to {sent}, request {self.request})"

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def answered(pending: Verdict, entry: JournalEntry, partition: int, offset: int) -> Verdict:
    """``pending`` decided by the journal ``entry`` found at ``partition``/``offset``."""
    position = {"kind": entry.kind, "journal_partition": partition, "journal_offset": offset}
    if entry.kind == Kind.OPERATOR_REFUSED.value:
        _, code, why = refusal_parts(entry.reason or "")
        return _with(pending, outcome=REFUSED, code=code or None, why=why, **position)
    return _with(pending, outcome=APPLIED, seq=entry.seq, **position)


def _with(verdict: Verdict, **fields: Any) -> Verdict:
    return replace(verdict, **fields)


def unanswered(pending: Verdict, saga: str, timeout: float) -> Verdict:
    why = (
        f"none within {timeout:g} s: is a processor of {saga} running and caught up? The "
        "request stays in the inbox and is decided when one gets to it (sagas history shows it)"
    )
    return _with(pending, outcome=NO_VERDICT, why=why)


def dead_lettered(pending: Verdict, message: Message) -> Verdict:
    """``pending`` dead-lettered before any decision (a bad signature, a key that names
    another instance, the saga's code raising...): the dead letter's reason and where it is."""
    headers = message.headers()
    where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
    detail = header(headers, DLQ_DETAIL) or "no detail"
    why = f"{detail} (dead letter {where}: see sagas dlq list)"
    return _with(pending, outcome=DEAD_LETTERED, code=header(headers, DLQ_REASON), why=why)


class JournalWatch:
    """Where a saga's journal partitions (and its dead-letter topic's) end now; later, the
    entries answering requests, or the dead letters they became."""

    def __init__(
        self, journal: str, partitions: Iterable[int], dlq: str | None, bootstrap: str | None
    ) -> None:
        self.journal = journal
        # The client wants a group id; this consumer is assigned partitions, never joins it.
        group = f"sagalog-operator-verdicts-{uuid.uuid4().hex}"
        # Short fetch waits: an answer becomes visible when its transaction commits, which a
        # long-polling fetch (500 ms by default) may not be woken for.
        config = consumer_config(
            bootstrap, "sagalog-operator-verdicts", group, **{"fetch.wait.max.ms": 50}
        )
        self._consumer = Consumer(config)
        try:
            watched = [TopicPartition(journal, p) for p in partitions]
            if dlq is not None:  # every partition: a dead letter is keyed as its input was
                found = self._consumer.list_topics(dlq, timeout=15).topics.get(dlq)
                ours = [] if found is None or found.error else sorted(found.partitions)
                watched += [TopicPartition(dlq, p) for p in ours]
            self.starts = [
                TopicPartition(tp.topic, tp.partition, watermarks(self._consumer, tp)[1])
                for tp in watched
            ]
        except BaseException:
            self._consumer.close()
            raise

    def wait(self, pending: Sequence[Verdict], saga: str, timeout: float) -> list[Verdict]:
        """``pending`` (in order) each with its verdict, or ``NO_VERDICT`` after ``timeout`` s."""
        waiting = {verdict.request: verdict for verdict in pending}
        keys = {verdict.instance.encode() for verdict in pending}
        found: dict[str, Verdict] = {}
        try:
            self._consumer.assign(self.starts)
            deadline = time.monotonic() + timeout
            while waiting and time.monotonic() < deadline:
                for message in self._consumer.consume(num_messages=500, timeout=0.2):
                    if message.error() is not None or message.key() not in keys:
                        continue
                    verdict = self._answer(message, waiting)
                    if verdict is not None:
                        found[verdict.request] = verdict
        finally:
            self._consumer.close()
        late = {request: unanswered(verdict, saga, timeout) for request, verdict in waiting.items()}
        return [found.get(v.request) or late[v.request] for v in pending]

    def _answer(self, message: Message, waiting: dict[str, Verdict]) -> Verdict | None:
        """The verdict ``message`` gives one of ``waiting`` (taken out of it), if any."""
        if message.topic() != self.journal:
            verdict = waiting.pop(header(message.headers(), OPERATOR_ID) or "", None)
            return None if verdict is None else dead_lettered(verdict, message)
        entry = JournalEntry.decode(message.value() or b"")
        verdict = waiting.pop(entry.operator_id or "", None)
        if verdict is None:
            return None
        return answered(verdict, entry, message.partition() or 0, message.offset() or 0)

    def close(self) -> None:
        self._consumer.close()


def summary(verdicts: Sequence[Verdict], what: str) -> list[str]:
    """Lines saying what became of many requests: the counts, then each refusal reason (and
    the instances without a verdict) with the instances it concerns."""
    counts = Counter(v.outcome for v in verdicts)
    shown = ", ".join(
        f"{'no verdict' if outcome == NO_VERDICT else outcome} {counts[outcome]}"
        for outcome in (APPLIED, REFUSED, DEAD_LETTERED, NO_VERDICT, SENT)
        if counts.get(outcome)
    )
    lines = [f"{what}: {len(verdicts)} instances: {shown or 'none'}"]
    groups: dict[str, list[str]] = {}
    for verdict in verdicts:
        if verdict.outcome == REFUSED:
            groups.setdefault(f"refused [{verdict.code}] {verdict.why}", []).append(
                verdict.instance
            )
        elif verdict.outcome == NO_VERDICT:
            groups.setdefault(f"no verdict: {verdict.why}", []).append(verdict.instance)
    for reason, instances in sorted(groups.items(), key=lambda item: -len(item[1])):
        named = ", ".join(instances[:NAMED])
        more = f" and {len(instances) - NAMED} more" if len(instances) > NAMED else ""
        lines.append(f"  {len(instances)} {reason}: {named}{more}")
    return lines


#: ``exit_code``'s codes: a refusal, and a request with no verdict in time (2 is a usage error).
EXIT_REFUSED = 1
EXIT_NO_VERDICT = 3


def exit_code(verdicts: Iterable[Verdict]) -> int:
    """0 when every request was applied (or sent without waiting); ``EXIT_NO_VERDICT`` when any
    got no verdict in time, else ``EXIT_REFUSED`` when any was refused or dead-lettered."""
    outcomes = {verdict.outcome for verdict in verdicts}
    if NO_VERDICT in outcomes:
        return EXIT_NO_VERDICT
    return EXIT_REFUSED if outcomes & {REFUSED, DEAD_LETTERED} else 0
