"""Record headers: how commands carry their reply address and how dead letters carry the reason.

Headers are the envelope around an Avro payload, so routing never needs to decode a body:

- a command carries ``sagalog.command_id`` (one attempt of one step), ``sagalog.idempotency_key``
  (the step, the same for every attempt) and ``sagalog.attempt``, ``sagalog.reply_to`` (the
  saga's inbox), ``sagalog.instance`` (the key the reply must carry) and ``sagalog.saga``;
- a reply carries the ``sagalog.command_id`` of the command it answers;
- an operator's input (``sagas signal``, ``retry``...) carries ``sagalog.note``: who and why;
- a worker's record of a handled command (``sagas.idempotency``) carries the command's reply
  address and ``sagalog.handled.topic`` and ``.partition``: where the command was read;
- a routed source event carries where it came from (``sagalog.origin.*``);
- with tracing on (``stream_processors.engine.tracing``), a command and a reply carry the W3C
  trace context, ``traceparent`` and ``tracestate``, after Sagalog's own headers;
- a dead letter keeps the original headers and adds ``sagalog.dlq.reason``, ``.detail``,
  ``.topic``, ``.partition`` and ``.offset``.
"""

from __future__ import annotations

from confluent_kafka import Message

from stream_processors.core.decide import idempotency_key
from stream_processors.core.decision import CHILD_CANCEL, CHILD_END, CHILD_START, OutgoingCommand

#: Headers as the client takes them; values we write are always bytes.
Headers = list[tuple[str, str | bytes | None]]
#: Headers as the client returns them.
ReceivedHeaders = dict[str, str | bytes | None] | Headers | None

COMMAND_ID = "sagalog.command_id"
IDEMPOTENCY_KEY = "sagalog.idempotency_key"
ATTEMPT = "sagalog.attempt"
HANDLED_TOPIC = "sagalog.handled.topic"
HANDLED_PARTITION = "sagalog.handled.partition"
REPLY_TO = "sagalog.reply_to"
INSTANCE = "sagalog.instance"
SAGA = "sagalog.saga"
NOTE = "sagalog.note"
#: An operator's request id on an action or signal: asks the processor for a verdict in the
#: journal (``JournalEntry.operator_id``). Not signed: it decides nothing, it only names.
OPERATOR_ID = "sagalog.operator_id"
#: On a snapshots changelog record: when its timers are due and when it finished
#: (``stream_processors.core.instance.schedule_text``), read by a restore instead of the value.
SCHEDULE = "sagalog.schedule"
DLQ_REASON = "sagalog.dlq.reason"
DLQ_DETAIL = "sagalog.dlq.detail"
DLQ_TOPIC = "sagalog.dlq.topic"
DLQ_PARTITION = "sagalog.dlq.partition"
DLQ_OFFSET = "sagalog.dlq.offset"
#: W3C Trace Context, as Kafka headers (the names OpenTelemetry's Kafka instrumentations use).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


def _pairs(headers: ReceivedHeaders) -> Headers:
    if not headers:
        return []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def header(headers: ReceivedHeaders, name: str) -> str | None:
    """The last value of header ``name`` as text, or None."""
    if not headers:  # most inputs: read for every one, so no copy of the pairs either
        return None
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    for key, value in reversed(pairs):
        if key == name and value is not None:
            # Headers come from anyone: undecodable bytes must not crash whoever reads them.
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None


def command_headers(command_id: str, reply_to: str, instance_id: str, saga: str) -> Headers:
    # The key and attempt are in the id already; headers spare workers in other languages (and
    # ours) from parsing it, and let the id's format change without them noticing.
    key, attempt = idempotency_key(command_id)
    return [
        (COMMAND_ID, command_id.encode()),
        (IDEMPOTENCY_KEY, key.encode()),
        (ATTEMPT, str(attempt).encode()),
        (REPLY_TO, reply_to.encode()),
        (INSTANCE, instance_id.encode()),
        (SAGA, saga.encode()),
    ]


#: A child saga's start: the parent instance its end is reported to (with ``REPLY_TO``).
PARENT_INSTANCE = "sagalog.parent.instance"


def outgoing_headers(command: OutgoingCommand, inbox: str, saga: str) -> Headers:
    """The headers of a record a decision sends, by what it is (``OutgoingCommand.kind``); a
    new list, which the trace context (``tracing.command_trace``) may be added to."""
    if command.kind == CHILD_START:
        # Not ``sagalog.instance``: that names the record's own instance (the child's, its key).
        return [
            (COMMAND_ID, command.command_id.encode()),
            (REPLY_TO, inbox.encode()),
            (PARENT_INSTANCE, command.parent.encode()),
            (SAGA, saga.encode()),
        ]
    if command.kind == CHILD_END:
        return reply_headers(command.command_id)
    if command.kind == CHILD_CANCEL:
        return [(SAGA, saga.encode())]
    return command_headers(command.command_id, inbox, command.key, saga)


def reply_headers(command_id: str, trace: Headers | None = None) -> Headers:
    headers: Headers = [(COMMAND_ID, command_id.encode())]
    return headers + trace if trace else headers


def trace_headers(traceparent: str | None, tracestate: str | None) -> Headers:
    """The W3C trace context as headers: none without a ``traceparent``."""
    if not traceparent:
        return []
    headers: Headers = [(TRACEPARENT, traceparent.encode())]
    return [*headers, (TRACESTATE, tracestate.encode())] if tracestate else headers


def _location(message: Message, prefix: str) -> Headers:
    return [
        (f"{prefix}.topic", str(message.topic()).encode()),
        (f"{prefix}.partition", str(message.partition()).encode()),
        (f"{prefix}.offset", str(message.offset()).encode()),
    ]


def carried_headers(message: Message) -> Headers:
    """A record's own headers minus Sagalog's (``sagalog.*``): what a record made from it
    carries on (trace context, a service's tags), never routing or a signature it did not earn."""
    return [
        (name, value)
        for name, value in _pairs(message.headers())
        if not name.startswith("sagalog.")
    ]


def origin_headers(message: Message) -> Headers:
    """A routed copy's headers: the source event's own, without any ``sagalog.*`` header (a
    service cannot make its event pass for a reply, a signed record or an operator's), and
    where it came from."""
    return carried_headers(message) + _location(message, "sagalog.origin")


def dead_letter_headers(message: Message, reason: str, detail: str) -> Headers:
    return [*_pairs(message.headers()), *dead_letter_marks(message, reason, detail)]


def dead_letter_marks(message: Message, reason: str, detail: str) -> Headers:
    """The headers a dead letter adds to the original's: reason, detail and origin."""
    return [
        (DLQ_REASON, reason.encode()),
        (DLQ_DETAIL, detail[:1000].encode()),
        *_location(message, "sagalog.dlq"),
    ]


def received_headers(message: Message) -> Headers:
    """A received record's headers as a list of pairs (empty when it has none)."""
    return _pairs(message.headers())
