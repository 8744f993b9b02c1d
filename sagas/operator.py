"""Operator actions on running sagas, and the dead-letter queues: the library behind the CLI.

Every action is a record on Kafka, so it is ordered with the instance's other inputs and
journaled by the processor like any of them, with who sent it and why (the ``sagalog.note``
header, ``"<action> by <who>: <why>"``), and a request id of its own (``sagalog.operator_id``)
by which the processor's verdict is found in the journal (``sagas.verdicts``):

- ``send_and_wait`` sends an ``OperatorAction`` (``retry``, ``cancel`` or ``resolve``) to one
  instance through the saga's inbox and returns the ``Verdict``: applied (where in the
  journal), refused (why: journaled too), or none within the timeout; ``act`` does so for many
  (``sagas cancel --where ...``) through one producer, ``signal_and_wait`` for an event the
  saga accepts; ``send_requests`` is what they share (``wait=False``: send only). The web
  console and the CLI call these;
- ``send_action``, ``send_actions`` and ``signal`` send without waiting, and say where;
- ``dead_letters`` reads a dead-letter topic (a saga's ``<saga>.dlq`` or a worker's
  ``<command topic>.dlq``) with the reason and origin of each record;
- ``redrive`` sends chosen dead letters back to the topic they came from.

With signing keys in the environment (``SAGALOG_SIGNING_KEYS`` or ``SAGALOG_SIGNING_KEYS_FILE``,
see ``stream_processors.codecs.signing``), actions and signals are signed with them, as the
processor then requires of every inbox record (the request id is not signed: it decides
nothing); ``redrive`` sends records back with the headers, and so the signatures, they had.

Nothing here joins a consumer group or commits offsets, and every producer is idempotent
(``acks=all``). Topics are never created here: a missing topic is an ``OperatorError`` (creating
a saga's inbox by accident would give it the wrong partition count).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, KafkaException, Message, Producer
from confluent_kafka import Consumer as KafkaConsumer

from sagas.verdicts import SENT, JournalWatch, Verdict
from stream_processors.codecs.records import Event, Record
from stream_processors.codecs.signing import Purpose, from_environment, signed
from stream_processors.core.decide import signal_command_id
from stream_processors.core.limits import (
    DLQ_DROPPED_HEADERS,
    DLQ_KEY_TRUNCATED,
    DLQ_TRUNCATED,
    record_size,
)
from stream_processors.core.model import (
    OPERATOR_ACTIONS,
    CommandFailed,
    OperatorAction,
    SagaDefinition,
)
from stream_processors.core.partitioner import partition_for
from stream_processors.core.throttle import PRIORITIZE, prioritize_reason
from stream_processors.engine.routing import (
    COMMAND_ID,
    DLQ_DETAIL,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    NOTE,
    OPERATOR_ID,
    Headers,
)
from stream_processors.kafka.broker_limits import BrokerLimits
from stream_processors.kafka.config import consumer_config, producer_config
from stream_processors.kafka.errors import metadata as kafka_metadata
from stream_processors.kafka.reading import ReadTimeout, committed_records
from stream_processors.kafka.topics import SagaTopics

#: What ``send_action`` may send; the processor journals anything else as not applicable.
ACTIONS = OPERATOR_ACTIONS
#: The header ``redrive`` adds: ``<dlq topic>:<partition>:<offset>`` of the dead letter.
REDRIVEN_FROM = "sagalog.redriven_from"
#: Headers the dead-letter queue adds to the original ones (``sagalog.dlq.*``).
DLQ_PREFIX = "sagalog.dlq."
#: Headers saying a dead letter was cut to fit (``stream_processors.core.limits``).
_CUT = frozenset({DLQ_TRUNCATED, DLQ_KEY_TRUNCATED, DLQ_DROPPED_HEADERS})
#: How long a send may take before it counts as failed (librdkafka's default is 5 minutes).
DELIVERY_TIMEOUT_MS = 30_000
#: How long to wait for the processor's verdict on a request, by default (seconds).
DEFAULT_TIMEOUT = 30.0


class OperatorError(Exception):
    """An operator action could not be carried out (missing topic, failed delivery, ...)."""


@dataclass(frozen=True)
class Sent:
    """Where a record was written."""

    topic: str
    partition: int
    offset: int
    key: str | None
    note: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    """One record of a dead-letter topic, with why and where from (the ``sagalog.dlq.*`` headers).

    ``headers`` are the record's original headers, without the ones the dead-letter queue added.
    ``timestamp`` is the dead letter's own (milliseconds since the epoch), when the broker has one.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str | None
    detail: str | None
    origin_topic: str | None
    origin_partition: int | None
    origin_offset: int | None
    timestamp: int | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    #: The record was cut to fit the dead-letter topic (``sagalog.dlq.truncated`` and kin): the
    #: evidence of what arrived, no longer the record itself.
    truncated: bool = False

    @property
    def key_text(self) -> str | None:
        return None if self.key is None else self.key.decode(errors="replace")

    @property
    def origin(self) -> str:
        """``topic[partition]@offset`` of the original record (``?`` for what is unknown)."""

        def known(value: object) -> str:
            return "?" if value is None else str(value)

        return (
            f"{known(self.origin_topic)}[{known(self.origin_partition)}]"
            f"@{known(self.origin_offset)}"
        )

    @classmethod
    def from_message(cls, message: Message) -> DeadLetter:
        found = message.headers() or []
        pairs = found.items() if isinstance(found, dict) else found
        received: Headers = [(str(name), value) for name, value in pairs]
        kind, timestamp = message.timestamp()
        return cls(
            topic=message.topic() or "",
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            key=message.key(),
            value=message.value(),
            reason=_text(received, DLQ_REASON),
            detail=_text(received, DLQ_DETAIL),
            origin_topic=_text(received, DLQ_TOPIC),
            origin_partition=_int(_text(received, DLQ_PARTITION)),
            origin_offset=_int(_text(received, DLQ_OFFSET)),
            timestamp=None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp,
            truncated=any(name in _CUT for name, _ in received),
            headers=tuple(
                (name, value.encode() if isinstance(value, str) else value)
                for name, value in received
                if not name.startswith(DLQ_PREFIX)
            ),
        )


def _text(headers: Headers, name: str) -> str | None:
    """The last value of header ``name``, decoded leniently: the detail header is cut at 1,000
    bytes, possibly inside a character, and a listing must not fail on one bad record."""
    for key, value in reversed(headers):
        if key == name and value is not None:
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None


def _int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


# -- sending to an instance ----------------------------------------------------------------------


def _producer(bootstrap: str | None, client_id: str) -> Producer:
    config = producer_config(bootstrap, client_id)
    # Never auto-create a topic by writing to it: a saga's inbox must be co-partitioned.
    config |= {"allow.auto.create.topics": False, "delivery.timeout.ms": DELIVERY_TIMEOUT_MS}
    return Producer(config)


def _require_topics(
    client: Producer | KafkaConsumer, topics: Iterable[str], bootstrap: str | None
) -> dict[str, Any]:
    """Topic metadata by name; raises ``OperatorError`` naming the topics that do not exist."""
    metadata = kafka_metadata(client, bootstrap).topics
    missing = sorted({t for t in topics if t not in metadata or metadata[t].error is not None})
    if missing:
        raise OperatorError(f"topic(s) not found: {', '.join(missing)}")
    return dict(metadata)


def _deliver(producer: Producer, records: Sequence[tuple[str, dict[str, Any]]]) -> list[Sent]:
    """Produce ``(topic, produce kwargs)`` records, flush, and raise if any was not delivered;
    where each was written, in the order of ``records``."""
    sent: list[Sent | None] = [None] * len(records)
    failures: list[str] = []

    def reporter(index: int) -> Any:
        def report(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(f"{message.topic()}: {error}")
                return
            key = message.key()
            sent[index] = Sent(
                topic=message.topic() or "",
                partition=message.partition() or 0,
                offset=message.offset() or 0,
                key=None if key is None else key.decode(errors="replace"),
            )

        return report

    for index, (topic, kwargs) in enumerate(records):
        while True:
            try:
                producer.produce(topic, on_delivery=reporter(index), **kwargs)
                break
            except BufferError:  # the local queue is full: let deliveries drain, then retry
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(DELIVERY_TIMEOUT_MS / 1000 + 5)
    delivered = [where for where in sent if where is not None]
    if failures or remaining:
        problems = [*failures, *([f"{remaining} not acknowledged"] if remaining else [])]
        raise OperatorError(
            f"{len(delivered)} of {len(records)} records delivered; failed: {'; '.join(problems)}"
        )
    return delivered


class _Inbox:
    """Records to a saga's inbox through one producer: the topic is checked once, each record
    is keyed by its instance, noted, given a request id, signed when keys are configured, and
    refused when it would be over the broker's size limit."""

    def __init__(self, definition: SagaDefinition, bootstrap: str | None) -> None:
        self.topics = SagaTopics.for_saga(definition)
        self.topic = self.topics.inbox
        client_id = f"sagalog-operator-{definition.name}"
        self.producer = _producer(bootstrap, client_id)
        self.metadata = _require_topics(self.producer, [self.topic], bootstrap)
        settings = producer_config(bootstrap, client_id)
        self.largest = BrokerLimits(bootstrap, settings).limits(self.topic).max_record_bytes
        self.signing = from_environment()

    def record(self, request: Request, operator_id: str) -> tuple[str, dict[str, Any]]:
        if not request.instance_id:
            raise ValueError("an instance id is required")
        key, value = request.instance_id.encode(), request.value
        headers: Headers = [(NOTE, request.note.encode())]
        if request.command_id is not None:
            headers.append((COMMAND_ID, request.command_id.encode()))
        # Not signed (the signature's headers are fixed): it decides nothing, it names the request.
        headers.append((OPERATOR_ID, operator_id.encode()))
        if self.signing is not None:
            headers = signed(self.signing, Purpose.INBOX, self.topic, key, value, headers)
        # Refused here, in one line, rather than by the client (or dead-lettered by the processor).
        size = record_size(key, value, headers)
        if size > self.largest:
            raise OperatorError(
                f"the record would be {size} bytes, over the limit of {self.largest} bytes for "
                f"{self.topic}: shorten the reason or the instance id"
            )
        return self.topic, {"key": key, "value": value, "headers": headers}


@dataclass(frozen=True)
class Request:
    """One record for one instance: an action or a signal, with its note (who and why)."""

    instance_id: str
    value: bytes
    note: str
    #: What it is, for people: ``retry``, ``signal PaymentCompleted``.
    what: str
    command_id: str | None = None


def send_requests(
    definition: SagaDefinition,
    requests: Sequence[Request],
    bootstrap: str | None = None,
    *,
    wait: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Verdict]:
    """Send each request to the saga's inbox with a request id of its own, through one
    producer, and (``wait``) read the journal for the processor's verdict on each, for at most
    ``timeout`` seconds after they were delivered; returns the verdicts in the order of
    ``requests`` (``SENT`` ones without ``wait``, ``NO_VERDICT`` ones not answered in time).

    Raises ``OperatorError`` when a topic is missing or a record was not delivered."""
    if not requests:
        return []
    inbox = _Inbox(definition, bootstrap)
    ids = [str(uuid.uuid4()) for _ in requests]
    records = [
        inbox.record(request, request_id) for request, request_id in zip(requests, ids, strict=True)
    ]
    watch = None
    if wait:  # where the journal ends before anything is sent: no answer can come before it
        journal = inbox.topics.journal
        count = len(_require_topics(inbox.producer, [journal], bootstrap)[journal].partitions)
        used = {partition_for(r.instance_id.encode(), count) for r in requests}
        watch = JournalWatch(journal, used, inbox.topics.dlq, bootstrap)
    try:
        sent = _deliver(inbox.producer, records)
    except BaseException:
        if watch is not None:
            watch.close()
        raise
    pending = [
        Verdict(r.instance_id, r.what, request_id, SENT, where.partition, where.offset)
        for r, request_id, where in zip(requests, ids, sent, strict=True)
    ]
    if watch is None:
        return pending
    return watch.wait(pending, definition.name, timeout)


def _check_who(by: str, reason: str) -> None:
    if not by.strip():
        raise ValueError("say who is acting (by)")
    if not reason.strip():
        raise ValueError("say why (reason)")


def action_requests(
    instance_ids: Sequence[str], action: str, by: str, reason: str
) -> list[Request]:
    """An ``OperatorAction`` request for each instance, noted ``"<action> by <by>: <reason>"``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    _check_who(by, reason)
    if any(not instance_id for instance_id in instance_ids):
        raise ValueError("an instance id is required")
    value = OperatorAction(action=action, by=by, reason=reason).encode()
    note = f"{action} by {by}: {reason}"
    return [Request(instance_id, value, note, action) for instance_id in instance_ids]


def send_and_wait(
    definition: SagaDefinition,
    instance_id: str,
    action: str,
    by: str,
    reason: str,
    bootstrap: str | None = None,
    *,
    wait: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Verdict:
    """An operator's ``retry``, ``cancel`` or ``resolve`` to one instance, and the processor's
    verdict on it: ``APPLIED`` (where in the journal), ``REFUSED`` (why), or ``NO_VERDICT``
    within ``timeout`` seconds (``SENT`` without ``wait``).

    Retry and resolve apply to a parked instance, cancel to a running one; anything else,
    an unknown instance included, is refused and the refusal journaled with who and why."""
    return send_requests(
        definition,
        action_requests([instance_id], action, by, reason),
        bootstrap,
        wait=wait,
        timeout=timeout,
    )[0]


def act(
    definition: SagaDefinition,
    instance_ids: Sequence[str],
    action: str,
    by: str,
    reason: str,
    bootstrap: str | None = None,
    *,
    wait: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Verdict]:
    """``send_and_wait`` to each of ``instance_ids`` (one record each, each journaled by its
    processor with who and why), through one producer; the verdicts in the same order."""
    requests = action_requests(instance_ids, action, by, reason)
    return send_requests(definition, requests, bootstrap, wait=wait, timeout=timeout)


def signal_request(
    definition: SagaDefinition,
    instance_id: str,
    event: Record,
    by: str,
    reason: str,
    command_id: str | None = None,
) -> Request:
    """The request that sends ``event`` to one instance, as if a service had sent it.

    The event must be one of the saga's inputs (its start event, a step's reply, an event it
    has a handler for). An event whose key field names another instance is refused. The note is
    ``"signal by <by>: <reason>"``; the processor journals it with the accepted input.

    A step's reply is matched to the attempt the saga waits for by its ``sagalog.command_id``:
    ``command_id`` names that attempt; without it the signal names the step
    (``saga/instance/step``, see ``stream_processors.core.decide.signal_command_id``), which matches
    whichever attempt of it is in flight. A ``CommandFailed`` names no step: it needs
    ``command_id``.
    """
    if not instance_id:
        raise ValueError("an instance id is required")
    accepted = definition.inputs
    if type(event) not in accepted:
        names = ", ".join(sorted(t.__name__ for t in accepted))
        raise ValueError(
            f"saga {definition.name!r} does not accept {type(event).__name__}; it accepts {names}"
        )
    if isinstance(event, Event):
        key = event.key()
        if key is not None and key != instance_id:
            field = f"{type(event).__name__}.{event.__key__}"
            raise ValueError(f"{field} is {key!r}, not the instance {instance_id!r}")
    if command_id is None and isinstance(event, CommandFailed):
        raise ValueError("a CommandFailed fails one attempt: give its command id")
    _check_who(by, reason)
    note = f"signal by {by}: {reason}"
    cid = command_id or signal_command_id(definition, instance_id, type(event))
    what = f"signal {type(event).__name__}"
    return Request(instance_id, event.encode(), note, what, cid)


def signal_and_wait(
    definition: SagaDefinition,
    instance_id: str,
    event: Record,
    by: str,
    reason: str,
    bootstrap: str | None = None,
    command_id: str | None = None,
    *,
    wait: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Verdict:
    """Send ``event`` to one instance (``signal_request``) and return the processor's verdict."""
    request = signal_request(definition, instance_id, event, by, reason, command_id)
    return send_requests(definition, [request], bootstrap, wait=wait, timeout=timeout)[0]


def _sent(
    definition: SagaDefinition, requests: Sequence[Request], bootstrap: str | None
) -> list[Sent]:
    verdicts = send_requests(definition, requests, bootstrap, wait=False)
    inbox = SagaTopics.for_saga(definition).inbox
    return [
        Sent(inbox, v.inbox_partition, v.inbox_offset, v.instance, r.note)
        for v, r in zip(verdicts, requests, strict=True)
    ]


def send_action(
    definition: SagaDefinition,
    instance_id: str,
    action: str,
    by: str,
    reason: str,
    bootstrap: str | None = None,
) -> Sent:
    """``send_and_wait`` without waiting: where the action was written (its verdict is
    journaled all the same: sending again is safe, an action that no longer applies is refused).
    """
    return _sent(definition, action_requests([instance_id], action, by, reason), bootstrap)[0]


def signal(
    definition: SagaDefinition,
    instance_id: str,
    event: Record,
    by: str,
    reason: str,
    bootstrap: str | None = None,
    command_id: str | None = None,
) -> Sent:
    """``signal_and_wait`` without waiting: where the event was written."""
    request = signal_request(definition, instance_id, event, by, reason, command_id)
    return _sent(definition, [request], bootstrap)[0]


# -- dead letters ----------------------------------------------------------------------------


def dead_letters(
    dlq_topic: str,
    bootstrap: str | None = None,
    limit: int | None = None,
    *,
    reason: str | None = None,
    timeout: float = 60,
) -> list[DeadLetter]:
    """The committed records of ``dlq_topic``, oldest first (by time, then partition and offset).

    Reads every partition from its beginning to the end offsets seen when called, with no
    consumer group and nothing committed; ``reason`` keeps only the dead letters with that
    reason, ``limit`` the first ``limit`` of those. Raises ``OperatorError`` when the topic does
    not exist or cannot be read to its end within ``timeout`` seconds.
    """
    probe = KafkaConsumer(consumer_config(bootstrap, "sagalog-dlq-reader", "sagalog-dlq-reader"))
    try:
        _require_topics(probe, [dlq_topic], bootstrap)
    finally:
        probe.close()
    try:
        letters = [
            DeadLetter.from_message(message)
            for message in committed_records(dlq_topic, bootstrap, timeout=timeout)
        ]
    except (ReadTimeout, KafkaException) as error:
        raise OperatorError(f"reading {dlq_topic}: {error} (an open transaction?)") from error
    if reason is not None:
        letters = [letter for letter in letters if letter.reason == reason]
    letters.sort(key=lambda d: (d.timestamp or 0, d.partition, d.offset))
    return letters if limit is None else letters[:limit]


def redrive(dlq_topic: str, selected: Sequence[DeadLetter], bootstrap: str | None = None) -> int:
    """Send each selected dead letter back to its origin topic; returns how many were sent.

    Each goes with its original key, value and headers (without the ``sagalog.dlq.*`` ones) plus
    ``sagalog.redriven_from: <dlq topic>:<partition>:<offset>``. A keyed record is placed by the
    usual partitioner (the one every Sagalog producer uses, so it lands where its key belongs);
    a record without a key goes back to its original partition. The origin is a saga's inbox or
    source topic for ``<saga>.dlq``, a command topic for a worker's ``<command topic>.dlq``.

    Dead letters stay in the dead-letter topic (Kafka topics are append-only), so a record can be
    redriven twice. That is harmless for sagas: a repeated input is recognised and ignored, and
    a repeated command carries the same command id: a worker that answered it already sends the
    reply it remembers (``sagas.idempotency``) without running its handler again.
    Nothing is sent unless every selected record is from ``dlq_topic`` and names its origin.
    """
    unsendable = [
        f"{d.topic}:{d.partition}:{d.offset}"
        for d in selected
        if d.topic != dlq_topic or not d.origin_topic
    ]
    if unsendable:
        raise ValueError(
            f"not dead letters of {dlq_topic} with an origin topic: {', '.join(unsendable)}"
        )
    cut = [f"{d.partition}:{d.offset}" for d in selected if d.truncated]
    if cut:
        raise ValueError(
            f"cut to fit {dlq_topic}, so not the records that arrived: {', '.join(cut)}; "
            "leave them out (--offset) or resend the originals from their source"
        )
    if not selected:
        return 0
    producer = _producer(bootstrap, "sagalog-redrive")
    _require_topics(producer, {d.origin_topic for d in selected if d.origin_topic}, bootstrap)
    records: list[tuple[str, dict[str, Any]]] = []
    for letter in selected:
        assert letter.origin_topic is not None
        headers: Headers = [
            *letter.headers,
            (REDRIVEN_FROM, f"{dlq_topic}:{letter.partition}:{letter.offset}".encode()),
        ]
        record: dict[str, Any] = {"key": letter.key, "value": letter.value, "headers": headers}
        if letter.key is None and letter.origin_partition is not None:
            record["partition"] = letter.origin_partition
        records.append((letter.origin_topic, record))
    return len(_deliver(producer, records))


# -- building a signal -----------------------------------------------------------------------


def input_named(definition: SagaDefinition, name: str) -> type[Record]:
    """The saga's input class called ``name`` (its ``__name__``); ``ValueError`` when it has
    none or several of that name."""
    accepted = ", ".join(sorted(t.__name__ for t in definition.inputs))
    matches = [t for t in definition.inputs if t.__name__ == name]
    if not matches:
        raise ValueError(f"{definition.name} accepts no {name!r}; it accepts {accepted}")
    if len(matches) > 1:
        spelled = ", ".join(sorted(f"{t.__module__}:{t.__qualname__}" for t in matches))
        raise ValueError(f"{name!r} is ambiguous: {spelled}")
    return matches[0]


def event_of(cls: type[Record], fields: object) -> Record:
    """A ``cls`` record from decoded JSON ``fields``; ``ValueError`` when they do not make one
    that fits its schema."""
    if not isinstance(fields, dict):
        raise ValueError("give a JSON object of the event's fields")
    try:
        event = cls(**fields)
        event.encode()  # the values must fit the schema, not just the field names
    except (TypeError, ValueError, AttributeError) as error:
        names = ", ".join(cls.__fields__)
        raise ValueError(f"{cls.__name__}({names}): {error}") from None
    return event


# -- priority (flow control) ----------------------------------------------------------------------


def prioritize(
    definition: SagaDefinition,
    instance_id: str,
    priority: int,
    by: str,
    reason: str,
    bootstrap: str | None = None,
    *,
    wait: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Verdict:
    """Give an instance a new priority (``sagas prioritize``): its commands waiting for a limit
    are released before those of lower priority (``stream_processors.core.throttle``).

    An ``OperatorAction`` ``prioritize`` whose reason starts with the priority, sent and
    answered as the other actions are (``send_and_wait``): applied, it is journaled with who
    and why (the processor then orders the partition's queue by it, and a replay finds it
    there); refused (an unknown or finished instance, a saga without limits), the refusal is
    journaled with the reason."""
    _check_who(by, reason)
    why = prioritize_reason(priority, reason)
    return send_and_wait(
        definition, instance_id, PRIORITIZE, by, why, bootstrap, wait=wait, timeout=timeout
    )
