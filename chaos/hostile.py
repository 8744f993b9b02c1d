"""The hostile-input corpus: what a producer with write access to Sagalog's topics can send.

Each ``Hostile`` record says what it is (``kind``), where it goes, and what the engine must do
with it: dead-letter it on a named topic with one of the named reasons, ignore it (counted with
a reason by the processor), or, for inputs that are odd but legitimate (a start event whose Kafka
key disagrees with its key field), run the saga it starts to its planned end.

Sizes are taken at and just over every limit of the default settings: the processor's input
limit (``--max-record-bytes``, 1,000,000), librdkafka's ``message.max.bytes`` (1,000,000) and a
topic's ``max.message.bytes`` (the broker's default, 1,048,588), and a bounded instance id.
Every record carries ``chaos.run`` and ``chaos.kind`` headers so its dead letter can be found.

The targeted forgeries (replies and commands with the right command ids, aimed at live orders)
are built by ``forged_reply`` and ``forged_command``; ``chaos.fuzz`` aims them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from examples.order_fulfillment.messages import (
    CreateShippingLabel,
    MakePayment,
    OrderPlaced,
    PaymentCompleted,
    ShippingLabelCreated,
)
from stream_processors.codecs.avro import MAGIC
from stream_processors.codecs.records import Record
from stream_processors.core.decide import command_id
from stream_processors.core.journal import JournalEntry
from stream_processors.core.limits import record_size
from stream_processors.core.model import CommandFailed, OperatorAction
from stream_processors.engine.routing import COMMAND_ID, REPLY_TO, Headers, command_headers

#: The default input limit of ``sagas run`` and librdkafka's default ``message.max.bytes``.
INPUT_LIMIT = 1_000_000
#: The broker's default ``max.message.bytes``: the largest record a default topic takes.
TOPIC_LIMIT = 1_048_588
#: A command far over every default limit, on a command topic whose limit was raised for it.
HUGE_COMMAND = 10_000_000
#: Room for a record's key, headers and framing inside ``TOPIC_LIMIT``.
SLACK = 4_096
SAGA_NAME = "order_fulfillment"
INBOX = f"{SAGA_NAME}.inbox"
SOURCE = "orders.events"
PAYMENTS = "payments.commands"
SHIPPING = "shipping.commands"
SAGA_DLQ = f"{SAGA_NAME}.dlq"
PAYMENTS_DLQ = f"{PAYMENTS}.dlq"
SHIPPING_DLQ = f"{SHIPPING}.dlq"
#: Processor-side reasons of inputs ignored rather than dead-lettered, as the metric counts them.
IGNORED = "ignored"
#: The topics whose records must be signed when signing is on (sources belong to services).
SIGNED_TOPICS = frozenset({INBOX, PAYMENTS, SHIPPING})


@dataclass(frozen=True)
class Hostile:
    kind: str
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    #: Where its dead letter must land, or ``IGNORED``, or "" for a legitimate input.
    expect_topic: str
    #: The reasons accepted (any one of them); for ``IGNORED``, the processor's ignore reasons.
    reasons: frozenset[str] = field(default_factory=frozenset)
    #: For a legitimate input: the order it starts, which must end as planned.
    order_id: str | None = None
    #: Aimed at a live order with the right ids: only signing stops it (unsigned, unchecked).
    forged: bool = False

    def expectation(self, signing: bool) -> tuple[str, frozenset[str]] | None:
        """Where this record's dead letter must be, and with which reasons, in a run with or
        without signing; None when it must not be dead-lettered (or, forged and unsigned, is
        not checked). With signing, nothing unsigned gets past the inbox or a command topic."""
        if self.forged and not signing:
            return None
        if signing and self.topic in SIGNED_TOPICS:
            dlq = SAGA_DLQ if self.topic == INBOX else f"{self.topic}.dlq"
            return dlq, self.reasons | {"bad-signature"}
        if self.expect_topic in ("", IGNORED):
            return None
        return self.expect_topic, self.reasons


def _tag(run: str, kind: str, extra: Headers | None = None) -> Headers:
    return [("chaos.run", run.encode()), ("chaos.kind", kind.encode()), *(extra or [])]


def _order(order_id: str, card: str = "tok_visa") -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id, customer_id="c-1", amount_cents=1_000, card_token=card, postcode="10115"
    )


def _padded_order(run: str, kind: str, total: int) -> bytes:
    """A valid OrderPlaced whose encoded value is exactly ``total`` bytes (via its postcode)."""
    base = OrderPlaced(
        order_id=f"chaos-{run}-{kind}",
        customer_id="c",
        amount_cents=1,
        card_token="t",
        postcode="",
    )
    size = len(base.encode())
    for pad in range(max(0, total - size - 4), total - size + 1):
        value = replace(base, postcode="x" * pad).encode()
        if len(value) == total:
            return value
    raise ValueError(f"cannot pad an OrderPlaced to {total} bytes")


def _value_room(run: str, kind: str, key: bytes, whole: int) -> int:
    """The value size that makes a record with ``key`` and its chaos tags ``whole`` bytes, as
    librdkafka and the engine count a record (``stream_processors.core.limits.record_size``)."""
    return whole - record_size(key, b"", _tag(run, kind))


def _command_headers(order_id: str, reply_to: str = INBOX, step: str = "payment") -> Headers:
    cid = command_id(SAGA_NAME, order_id, step, 1)
    headers = command_headers(cid, INBOX, order_id, SAGA_NAME)
    return [(name, reply_to.encode() if name == REPLY_TO else value) for name, value in headers]


def _payment(order_id: str, card: str = "tok_visa") -> MakePayment:
    return MakePayment(order_id=order_id, customer_id="c", amount_cents=1, card_token=card)


def _source(run: str) -> Iterator[Hostile]:
    """Records on a source topic (``orders.events``)."""

    def dead(kind: str, key: bytes | None, value: bytes | None, *reasons: str) -> Hostile:
        return Hostile(kind, SOURCE, key, value, _tag(run, kind), SAGA_DLQ, frozenset(reasons))

    yield dead("source-not-avro", b"k", b"this is not Avro at all", "not-avro")
    yield dead("source-empty-value", b"k", b"", "not-avro", "no-value")
    yield dead("source-tombstone", b"k", None, "no-value")
    fingerprint = OrderPlaced.__avro__.header
    yield dead("source-truncated-avro", b"k", fingerprint + b"\x10ab", "corrupt-avro")
    yield dead(
        "source-unknown-fingerprint", b"k", MAGIC + os.urandom(8) + b"\x02", "unknown-schema"
    )
    yield dead("source-wrong-type", b"k", _payment(f"chaos-{run}-wt").encode(), "unexpected-type")
    at = _value_room(run, "source-garbage-at-input-limit", b"k", INPUT_LIMIT)
    yield dead("source-garbage-at-input-limit", b"k", b"\x01" * at, "not-avro")
    over = _value_room(run, "source-just-over-input-limit", b"k", INPUT_LIMIT + 1)
    yield dead("source-just-over-input-limit", b"k", MAGIC + bytes(over - 2), "too-large")
    near = TOPIC_LIMIT - SLACK
    yield dead("source-order-near-topic-limit", b"k", _padded_order(run, "near", near), "too-large")
    at_key = f"chaos-{run}-at".encode()
    room = _value_room(run, "source-order-at-input-limit", at_key, INPUT_LIMIT)
    yield dead(
        "source-order-at-input-limit",
        at_key,
        _padded_order(run, "at", room),
        "outputs-too-large",  # accepted as an input; its routed copy (more headers) cannot fit
    )
    long_id = f"chaos-{run}-" + "i" * 300_000
    yield dead("source-300kb-order-id", b"k", _order(long_id).encode(), "instance-id-too-long")
    # A service's topic cannot carry a worker's reply or an operator's action, whatever headers.
    forged_id = command_id(SAGA_NAME, f"chaos-{run}-ghost", "payment", 1).encode()
    pay = PaymentCompleted(order_id=f"chaos-{run}-ghost", payment_id="p").encode()
    yield Hostile(
        "source-reply-with-command-id",
        SOURCE,
        b"k",
        pay,
        _tag(run, "source-reply-with-command-id", [(COMMAND_ID, forged_id)]),
        SAGA_DLQ,
        frozenset({"unexpected-type"}),
    )
    cancel = OperatorAction(action="cancel", by="mallory", reason="x").encode()
    yield dead("source-operator-cancel", b"k", cancel, "unexpected-type")
    mismatched = f"chaos-{run}-mismatched-key"
    yield Hostile(
        "source-key-disagrees-with-field",
        SOURCE,
        b"some-other-key",
        _order(mismatched).encode(),
        _tag(run, "source-key-disagrees-with-field"),
        "",
        order_id=mismatched,
    )
    many_headers = _tag(run, "source-many-headers", [(f"h{i}", b"v") for i in range(2_000)])
    crowded = f"chaos-{run}-many-headers"
    yield Hostile(
        "source-many-headers",
        SOURCE,
        crowded.encode(),
        _order(crowded).encode(),
        many_headers,
        "",
        order_id=crowded,
    )


def _inbox(run: str) -> Iterator[Hostile]:
    """Records written straight to the saga's inbox."""
    ghost = f"chaos-{run}-ghost"
    reply = PaymentCompleted(order_id=ghost, payment_id="p").encode()

    def dead(kind: str, key: bytes | None, value: bytes | None, *reasons: str) -> Hostile:
        return Hostile(kind, INBOX, key, value, _tag(run, kind), SAGA_DLQ, frozenset(reasons))

    yield dead("inbox-no-key", None, reply, "no-key")
    yield dead("inbox-bad-key", b"\xff\xfe\xfd", reply, "bad-key")
    yield dead("inbox-unknown-instance", ghost.encode(), reply, "unknown-instance")
    yield dead("inbox-not-avro", ghost.encode(), b"{json: true}", "not-avro")
    over = _value_room(run, "inbox-just-over-input-limit", b"k", INPUT_LIMIT + 1)
    yield dead("inbox-just-over-input-limit", b"k", MAGIC + bytes(over - 2), "too-large")
    journal_entry = JournalEntry(
        instance=ghost, seq=0, kind="SagaStarted", at_ms=1, saga_version=1
    ).encode()
    yield dead("inbox-journal-entry", ghost.encode(), journal_entry, "unexpected-type")
    command = _payment(ghost).encode()
    yield dead("inbox-a-command", ghost.encode(), command, "unexpected-type")
    yield dead(
        "inbox-start-event-key-mismatch",
        b"not-the-order-id",
        _order(f"chaos-{run}-inbox-start").encode(),
        "key-mismatch",
    )
    label = ShippingLabelCreated(order_id=ghost, tracking_number="t").encode()
    yield dead("inbox-label-for-unknown-instance", ghost.encode(), label, "unknown-instance")


def _commands(run: str) -> Iterator[Hostile]:
    """Records written to a worker's command topic."""

    def dead(kind: str, topic: str, key: bytes, value: bytes, headers: Headers, *r: str) -> Hostile:
        dlq = f"{topic}.dlq"
        return Hostile(kind, topic, key, value, _tag(run, kind, headers), dlq, frozenset(r))

    target = f"chaos-{run}-cmd"
    payment = _payment(target).encode()
    key = target.encode()
    yield dead("command-no-headers", PAYMENTS, key, payment, [], "no-reply-address")
    yield dead("command-not-avro", PAYMENTS, key, b"\x05garbage", [], "not-avro")
    label = CreateShippingLabel(order_id=target, postcode="1")
    yield dead(
        "command-for-another-worker",
        PAYMENTS,
        key,
        label.encode(),
        _command_headers(target),
        "no-handler",
    )
    for kind, reply_to, reasons in (
        ("command-reply-to-snapshots", f"{SAGA_NAME}.snapshots", ("bad-reply-address",)),
        ("command-reply-to-journal", f"{SAGA_NAME}.journal", ("bad-reply-address",)),
        ("command-reply-to-schemas", "_sagalog.schemas", ("bad-reply-address",)),
        (
            "command-reply-to-missing-topic",
            f"chaos-{run}-nowhere.inbox",
            ("reply-undeliverable", "bad-reply-address"),
        ),
        (
            "command-reply-to-invalid-name",
            "not a topic!",
            ("reply-undeliverable", "bad-reply-address"),
        ),
    ):
        headers = _command_headers(f"{target}-{kind}", reply_to)
        yield dead(kind, PAYMENTS, key, payment, headers, *reasons)
    # Services own their command topics; one that raised the topic's limit gets a 10 MB record.
    huge = MAGIC + bytes(HUGE_COMMAND)
    yield dead(
        "command-10mb", PAYMENTS, key, huge, _command_headers(target), "too-large", "not-avro"
    )
    yield dead(
        "command-unknown-fingerprint",
        SHIPPING,
        key,
        MAGIC + os.urandom(8) + b"\x02",
        _command_headers(target, step="shipping"),
        "unknown-schema",
    )


def corpus(run: str) -> list[Hostile]:
    """Every untargeted hostile record of one run (see the module docstring)."""
    return [*_source(run), *_inbox(run), *_commands(run)]


def fingerprint_storm(run: str, count: int) -> list[Hostile]:
    """``count`` inbox records of random schema fingerprints: garbage that must stay cheap."""
    return [
        Hostile(
            "inbox-fingerprint-storm",
            INBOX,
            f"chaos-{run}-storm-{n}".encode(),
            MAGIC + os.urandom(8) + b"\x02",
            _tag(run, "inbox-fingerprint-storm"),
            SAGA_DLQ,
            frozenset({"unknown-schema"}),
        )
        for n in range(count)
    ]


def unknown_operator_actions(run: str, order_ids: list[str]) -> list[Hostile]:
    """Operator actions of names that do not exist, to live orders: ignored, one label."""
    return [
        Hostile(
            "inbox-unknown-operator-action",
            INBOX,
            order_id.encode(),
            OperatorAction(action=f"detonate-{n}", by="mallory", reason="x").encode(),
            _tag(run, "inbox-unknown-operator-action"),
            IGNORED,
            frozenset({"operator-unknown-not-applicable", "unknown-operator-action"}),
        )
        for n, order_id in enumerate(order_ids)
    ]


def forged_reply(run: str, order_id: str, attempt_id: str, transient: bool) -> Hostile:
    """A reply with the right command id that no worker sent: success, or a transient failure."""
    record: Record = (
        CommandFailed(error="ConnectionError", message="forged")
        if transient
        else PaymentCompleted(order_id=order_id, payment_id="forged")
    )
    kind = "forged-command-failed" if transient else "forged-payment-completed"
    headers = _tag(run, kind, [(COMMAND_ID, attempt_id.encode())])
    return Hostile(
        kind,
        INBOX,
        order_id.encode(),
        record.encode(),
        headers,
        SAGA_DLQ,
        frozenset({"bad-signature"}),
        forged=True,
    )


def forged_command(run: str, order_id: str) -> Hostile:
    """A MakePayment with the id the saga will give its real command, declined, sent first."""
    headers = _command_headers(order_id)
    kind = "forged-future-command"
    return Hostile(
        kind,
        PAYMENTS,
        order_id.encode(),
        _payment(order_id, card="tok_declined").encode(),
        _tag(run, kind, headers),
        PAYMENTS_DLQ,
        frozenset({"bad-signature"}),
        forged=True,
    )


__all__ = [
    "IGNORED",
    "INBOX",
    "Hostile",
    "corpus",
    "fingerprint_storm",
    "forged_command",
    "forged_reply",
    "unknown_operator_actions",
]
