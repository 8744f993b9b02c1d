"""The corpus of bad inputs the chaos run mixes into the order saga's inbox and source topic.

Each kind is a way real input goes wrong. All but one must land in the saga's dead-letter topic
with a known reason; a duplicate reply must be ignored (no journal entry, no dead letter). Every
bad record carries ``chaos.run`` and ``chaos.kind`` headers, which the dead-letter topic keeps,
so the run can count its own bad records there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from examples.order_fulfillment.messages import MakePayment, OrderPlaced, PaymentCompleted
from stream_processors.codecs.avro import MAGIC, encode, parse
from stream_processors.codecs.records import CATALOG
from stream_processors.core.journal import JournalEntry
from stream_processors.engine.routing import COMMAND_ID, Headers
from stream_processors.engine.schema_history import SchemaHistory

#: A topic no processor reads: where the incompatible schema is recorded, so a processor can
#: look it up by fingerprint without its start check refusing the topics it does read.
ELSEWHERE = "chaos.elsewhere"


@dataclass(frozen=True)
class BadInput:
    kind: str
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    reason: str | None  # the dead-letter reason expected; None: ignored, not dead-lettered


def _headers(run: str, kind: str, extra: Headers | None = None) -> Headers:
    return [("chaos.run", run.encode()), ("chaos.kind", kind.encode()), *(extra or [])]


def _incompatible_order(history: SchemaHistory) -> bytes:
    """An OrderPlaced written by a service whose schema made ``amount_cents`` a string."""
    current = CATALOG.current(OrderPlaced.__avro__.full_name).definition
    fields = [
        {**f, "type": "string"} if f["name"] == "amount_cents" else dict(f)
        for f in current["fields"]
    ]
    schema = parse({**current, "fields": fields}, "chaos: incompatible OrderPlaced")
    history.record(ELSEWHERE, schema)
    return encode(
        schema,
        {
            "order_id": "chaos-incompatible",
            "customer_id": "c",
            "amount_cents": "twelve",
            "card_token": "t",
            "postcode": "1",
        },
    )


def corpus(
    run: str, inbox: str, source: str, max_record_bytes: int, history: SchemaHistory
) -> list[BadInput]:
    """One bad input of each kind that needs no live instance (see ``duplicate_reply``)."""
    reply = PaymentCompleted(order_id=f"chaos-ghost-{run}", payment_id="p").encode()
    wrong = MakePayment(order_id=f"chaos-{run}", customer_id="c", amount_cents=1, card_token="t")
    inputs = [
        ("not-avro", source, b"k", b"this is not Avro at all", "not-avro"),
        ("unknown-fingerprint", inbox, b"k", MAGIC + os.urandom(8) + b"\x02", "unknown-schema"),
        ("no-key", inbox, None, reply, "no-key"),
        ("wrong-type", source, b"k", wrong.encode(), "unexpected-type"),
        ("unknown-instance", inbox, f"chaos-ghost-{run}".encode(), reply, "unknown-instance"),
        ("oversized", source, b"k", MAGIC + bytes(max_record_bytes + 1), "too-large"),
        ("incompatible-schema", source, b"k", _incompatible_order(history), "incompatible-schema"),
        ("bad-key", inbox, b"\xff\xfe\xfd", reply, "bad-key"),
    ]
    return [
        BadInput(kind, topic, key, value, _headers(run, kind), reason)
        for kind, topic, key, value, reason in inputs
    ]


def duplicate_reply(run: str, inbox: str, accepted: JournalEntry) -> BadInput:
    """A worker's reply delivered again: the saga must ignore it (it was already applied)."""
    assert accepted.record is not None and accepted.command_id is not None
    extra: Headers = [(COMMAND_ID, accepted.command_id.encode())]
    return BadInput(
        "duplicate-reply",
        inbox,
        accepted.instance.encode(),
        accepted.record,
        _headers(run, "duplicate-reply", extra),
        None,
    )
