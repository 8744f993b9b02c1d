"""Records written by an earlier Sagalog release stay readable after its own schemas change.

The first release's snapshots had no ``timers`` and its journal entries no ``timer``/``due_ms``;
``stream_processors/schemas/sagalog/previous/`` keeps those versions, so the catalog reads such
records as the current versions (the new fields take their defaults).
"""

from __future__ import annotations

import json

from examples.order_fulfillment.messages import OrderState
from stream_processors.codecs.avro import AvroSchema, encode, parse
from stream_processors.codecs.records import BUILTIN_SCHEMAS
from stream_processors.core.instance import decode_snapshot
from stream_processors.core.journal import JournalEntry

PREVIOUS = BUILTIN_SCHEMAS / "sagalog" / "previous"


def _previous(name: str) -> AvroSchema:
    return parse(json.loads((PREVIOUS / f"{name}.v1.avsc").read_text()))


def test_a_first_release_snapshot_reads_as_the_current_one_without_timers() -> None:
    state = OrderState(
        order_id="o-1", customer_id="c", amount_cents=5, card_token="t", postcode="1"
    )
    old = encode(
        _previous("Snapshot"),
        {
            "instance": "o-1",
            "saga_version": 1,
            "status": "running",
            "seq": 2,
            "started_at_ms": 10,
            "updated_at_ms": 11,
            "reason": None,
            "steps": [
                {
                    "name": "payment",
                    "status": "pending",
                    "command_id": "order_fulfillment/o-1/payment/1",
                    "attempt": 1,
                    "sent_at_ms": 11,
                }
            ],
            "completed": [],
            "data": state.encode(),
        },
    )
    instance = decode_snapshot(old)
    assert instance.timers == {}
    assert instance.steps["payment"].command_id == "order_fulfillment/o-1/payment/1"
    assert instance.data == state


def test_a_first_release_journal_entry_reads_with_no_timer() -> None:
    old = encode(
        _previous("JournalEntry"),
        {
            "instance": "o-1",
            "seq": 0,
            "kind": "SagaStarted",
            "at_ms": 10,
            "saga_version": 1,
            "step": None,
            "command_id": None,
            "attempt": 0,
            "record": b"x",
            "reason": None,
        },
    )
    entry = JournalEntry.decode(old)
    assert (entry.kind, entry.timer, entry.due_ms) == ("SagaStarted", None, None)
