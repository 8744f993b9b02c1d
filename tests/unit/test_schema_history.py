"""Unit tests for the pure part of ``stream_processors.engine.schema_history``: the start check.

Covers which schemas a saga reads and writes on which topic (the example order saga), ``check``
against recorded writer schemas (only same-named ones, never the reader's own version; each
message naming topic, schema, recorded writer and field), ``refuse_incompatible`` and
``check_saga_schemas`` raising ``IncompatibleSchemaError`` with every problem listed. Writer
schemas are made known with ``remember`` (what ``load`` does per record read), into a catalog of
the test's own so the process catalog never sees them. Reading and writing the history topic is
tested against a real broker in ``tests/integration/test_schema_evolution.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from examples.order_fulfillment.messages import (
    CreateShippingLabel,
    MakePayment,
    OrderPlaced,
    OrderState,
    PaymentCompleted,
    RefundPayment,
)
from examples.order_fulfillment.saga import OrderFulfillment
from stream_processors.codecs import records
from stream_processors.codecs.avro import AvroSchema, SchemaCatalog, parse
from stream_processors.codecs.records import CATALOG
from stream_processors.core.journal import JournalEntry
from stream_processors.core.model import CommandFailed, OperatorAction
from stream_processors.engine.schema_history import (
    IncompatibleSchemaError,
    SchemaHistory,
    check_saga_schemas,
    refuse_incompatible,
    saga_reads,
    saga_writes,
)
from stream_processors.kafka.topics import SagaTopics

TOPICS = SagaTopics.for_saga(OrderFulfillment.definition)
SNAPSHOT = CATALOG.current("sagalog.Snapshot")


def history() -> SchemaHistory:
    return SchemaHistory("unused:9092", catalog=SchemaCatalog())


def variant(schema: AvroSchema, **changed_types: Any) -> AvroSchema:
    """``schema`` with some fields retyped (or added, when not there)."""
    definition = dict(schema.definition)
    fields = [dict(f) for f in definition["fields"]]
    for name, avro_type in changed_types.items():
        existing = [f for f in fields if f["name"] == name]
        if existing:
            existing[0]["type"] = avro_type
        else:
            fields.append({"name": name, "type": avro_type})
    definition["fields"] = fields
    return parse(definition)


def names(schemas: list[AvroSchema]) -> set[str]:
    return {s.full_name for s in schemas}


def test_a_saga_reads_its_inputs_snapshots_and_journal_from_their_topics() -> None:
    reads = saga_reads(OrderFulfillment.definition, TOPICS)
    inputs = OrderFulfillment.definition.inputs
    assert names(reads[TOPICS.inbox]) == {t.__avro__.full_name for t in inputs}
    assert {CommandFailed.__avro__.full_name, OperatorAction.__avro__.full_name} <= names(
        reads[TOPICS.inbox]
    )
    assert names(reads["orders.events"]) == {OrderPlaced.__avro__.full_name}
    assert names(reads[TOPICS.snapshots]) == {"sagalog.Snapshot", OrderState.__avro__.full_name}
    assert names(reads[TOPICS.journal]) == {"sagalog.JournalEntry"}
    assert set(reads) == {TOPICS.inbox, "orders.events", TOPICS.snapshots, TOPICS.journal}


def test_a_saga_writes_journal_snapshots_state_and_commands() -> None:
    writes = saga_writes(OrderFulfillment.definition, TOPICS)
    assert names(writes[TOPICS.journal]) == {JournalEntry.__avro__.full_name}
    assert names(writes[TOPICS.snapshots]) == {"sagalog.Snapshot", OrderState.__avro__.full_name}
    assert names(writes["payments.commands"]) == {
        MakePayment.__avro__.full_name,
        RefundPayment.__avro__.full_name,
    }
    assert names(writes["shipping.commands"]) == {CreateShippingLabel.__avro__.full_name}
    assert TOPICS.inbox not in writes  # routed events keep the bytes their publisher wrote


def test_check_compares_recorded_writers_of_the_same_name_only() -> None:
    h = history()
    current = OrderPlaced.__avro__
    h.remember("orders.events", current)  # the reader's own version: nothing to check
    h.remember("orders.events", variant(PaymentCompleted.__avro__, payment_id="long"))
    h.remember("elsewhere", variant(current, amount_cents="string"))  # another topic
    assert h.check("orders.events", [current]) == []
    assert len(h.recorded("orders.events")) == 2
    assert h.recorded("orders.events")[0] is current


def test_check_names_topic_schema_writer_and_field() -> None:
    h = history()
    old = variant(OrderPlaced.__avro__, amount_cents="string")
    h.remember("orders.events", old)
    assert h.check("orders.events", [OrderPlaced.__avro__]) == [
        f"topic orders.events, schema {OrderPlaced.__avro__.full_name} "
        f"(recorded writer {old.fingerprint.hex()}): "
        "OrderPlaced.amount_cents: writer string cannot be read as long"
    ]


def test_a_field_the_old_writer_lacks_needs_a_default() -> None:
    h = history()
    definition = dict(OrderPlaced.__avro__.definition)
    definition["fields"] = [f for f in definition["fields"] if f["name"] != "postcode"]
    older = parse(definition)
    h.remember("orders.events", older)
    assert h.check("orders.events", [OrderPlaced.__avro__]) == [
        f"topic orders.events, schema {OrderPlaced.__avro__.full_name} "
        f"(recorded writer {older.fingerprint.hex()}): "
        "OrderPlaced.postcode: reader field has no default and the writer lacks it"
    ]
    # Reading it needs a default for postcode; the other way round (an older reader) is fine.
    assert h.check("orders.events", [older]) == []


def test_a_writer_an_upcaster_reads_is_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's rename: an old writer had ``amount``, an upcaster renames it."""
    h = history()
    definition = dict(OrderPlaced.__avro__.definition)
    definition["fields"] = [
        {"name": "amount", "type": "long"} if f["name"] == "amount_cents" else f
        for f in definition["fields"]
    ]
    older = parse(definition)
    h.remember("orders.events", older)
    assert h.check("orders.events", [OrderPlaced.__avro__])  # without the upcaster: refused

    def renamed(old: dict[str, Any]) -> dict[str, Any]:
        return {**old, "amount_cents": old.pop("amount")}

    name = OrderPlaced.__avro__.full_name
    monkeypatch.setitem(records._upcasters, name, {older.fingerprint: renamed})
    assert h.check("orders.events", [OrderPlaced.__avro__]) == []


def test_remember_teaches_the_catalog_the_writer() -> None:
    h = history()
    old = variant(OrderPlaced.__avro__, coupon=["null", "string"])
    assert h.catalog.writer(old.fingerprint) is None
    h.remember("orders.events", old)
    assert h.catalog.writer(old.fingerprint) is old
    assert h.lookup(old.fingerprint) is old


def test_refuse_incompatible_lists_every_problem() -> None:
    h = history()
    h.remember("orders.events", variant(OrderPlaced.__avro__, amount_cents="string"))
    h.remember(TOPICS.snapshots, variant(OrderState.__avro__, postcode="long"))
    with pytest.raises(IncompatibleSchemaError) as raised:
        refuse_incompatible(
            h,
            {"orders.events": [OrderPlaced.__avro__], TOPICS.snapshots: [OrderState.__avro__]},
        )
    assert len(raised.value.problems) == 2
    message = str(raised.value)
    assert message.startswith("refusing to start")
    assert "topic orders.events" in message
    assert "OrderPlaced.amount_cents: writer string cannot be read as long" in message
    assert f"topic {TOPICS.snapshots}" in message
    assert "OrderState.postcode: writer long cannot be read as string" in message
    refuse_incompatible(h, {"orders.events": [PaymentCompleted.__avro__]})  # nothing to compare


def test_the_start_check_covers_source_topics_state_and_engine_schemas() -> None:
    h = history()
    for topic, schema in [
        ("orders.events", variant(OrderPlaced.__avro__, amount_cents="boolean")),
        (TOPICS.snapshots, variant(SNAPSHOT, seq="string")),
        (TOPICS.journal, variant(JournalEntry.__avro__, kind="int")),
        (TOPICS.inbox, variant(CommandFailed.__avro__, error="double")),
    ]:
        h.remember(topic, schema)
    with pytest.raises(IncompatibleSchemaError) as raised:
        check_saga_schemas(h, OrderFulfillment.definition, TOPICS)
    fields = sorted(p.split("): ", 1)[1].split(":")[0] for p in raised.value.problems)
    assert fields == [
        "CommandFailed.error",
        "JournalEntry.kind",
        "OrderPlaced.amount_cents",
        "Snapshot.seq",
    ]


def test_the_start_check_passes_with_nothing_or_compatible_writers_recorded() -> None:
    h = history()
    check_saga_schemas(h, OrderFulfillment.definition, TOPICS)
    for topic, schemas in saga_writes(OrderFulfillment.definition, TOPICS).items():
        for schema in schemas:
            h.remember(topic, schema)
    older_state = dict(OrderState.__avro__.definition)
    older_state["fields"] = [f for f in older_state["fields"] if f["name"] != "tracking_number"]
    h.remember(TOPICS.snapshots, parse(older_state))  # tracking_number has a default
    check_saga_schemas(h, OrderFulfillment.definition, TOPICS)
