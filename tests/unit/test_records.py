"""Unit tests for ``stream_processors.codecs.records``: typed records bound to Avro schemas.

Covers: the field-for-field check at class creation (a field missing from the class, a field
missing from the schema, a wrong type, optional against non-optional, arrays and maps), each
raising ``DeclarationError`` naming the field; how schemas are found (``SAGALOG_SCHEMA_PATH``,
and a clear error naming the folders searched); ``Event`` key checks; encode/decode round trips
of the example ``OrderPlaced`` and of a record using every supported Avro type; and the
``DecodeError`` reasons of ``Record.decode`` / ``decode_record``.

Test schemas come from ``conftest.py`` (namespace ``tests.unit.records``). A class that passes
the check is bound to its schema for the rest of the process, so each schema is bound by at most
one class here; the classes that must fail all target ``Shape``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path

import pytest

from examples.order_fulfillment.messages import OrderPlaced, OrderState, PaymentCompleted
from stream_processors.codecs.avro import MAGIC, DecodeError, encode, parse
from stream_processors.codecs.records import (
    CATALOG,
    Command,
    DeclarationError,
    Event,
    Record,
    State,
    decode_record,
    record_type,
)

NS = "tests.unit.records"

ORDER = OrderPlaced(
    order_id="o-1", customer_id="c-9", amount_cents=4_200, card_token="tok_ok", postcode="SW1A 1AA"
)

pytestmark = pytest.mark.usefixtures("schema_path")


# --- the field check at class creation ----------------------------------------------------------


def test_a_class_that_matches_its_schema_binds() -> None:
    class AllTypes(Record, schema=f"{NS}.AllTypes"):
        id: str
        count: int
        small: int
        ratio: float
        flag: bool
        blob: bytes
        tags: list[str]
        limits: dict[str, int]
        note: str | None = None

    assert AllTypes.__avro__.full_name == f"{NS}.AllTypes"
    assert AllTypes.__fields__ == (
        "id", "count", "small", "ratio", "flag", "blob", "tags", "limits", "note",
    )  # fmt: skip
    assert record_type(f"{NS}.AllTypes") is AllTypes
    assert dataclasses.is_dataclass(AllTypes)

    value = AllTypes(
        id="x", count=2**40, small=-3, ratio=0.25, flag=True, blob=b"\x00\xff",
        tags=["a", "b"], limits={"daily": 10},
    )  # fmt: skip
    assert AllTypes.decode(value.encode()) == value
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.count = 3  # type: ignore[misc]


def test_field_missing_from_the_class_is_named() -> None:
    with pytest.raises(DeclarationError, match=r"field 'note' is in the schema but not the class"):

        class Shape(Record, schema=f"{NS}.Shape"):
            id: str
            count: int


def test_field_missing_from_the_schema_is_named() -> None:
    with pytest.raises(
        DeclarationError, match=r"field 'colour' is in the class but not the schema"
    ):

        class Shape(Record, schema=f"{NS}.Shape"):
            id: str
            count: int
            note: str | None = None
            colour: str = "red"


def test_wrong_type_is_named_with_both_types() -> None:
    with pytest.raises(DeclarationError) as caught:

        class Shape(Record, schema=f"{NS}.Shape"):
            id: str
            count: str
            note: str | None = None

    message = str(caught.value)
    assert "field 'count'" in message
    assert "str in the class but long in the schema" in message
    assert f"schema {NS}.Shape" in message


def test_bool_is_not_accepted_for_a_long() -> None:
    with pytest.raises(DeclarationError, match=r"field 'count'"):

        class Shape(Record, schema=f"{NS}.Shape"):
            id: str
            count: bool
            note: str | None = None


def test_optional_in_the_class_but_required_in_the_schema_is_refused() -> None:
    with pytest.raises(DeclarationError, match=r"field 'id'"):

        class Shape(Record, schema=f"{NS}.Shape"):
            id: str | None
            count: int
            note: str | None = None


def test_required_in_the_class_but_optional_in_the_schema_is_refused() -> None:
    with pytest.raises(
        DeclarationError, match=r"field 'note' is str in the class but \[null, string\]"
    ):

        class Shape(Record, schema=f"{NS}.Shape"):
            id: str
            count: int
            note: str = ""


def test_a_union_with_another_member_is_refused() -> None:
    with pytest.raises(DeclarationError, match=r"field 'note'"):

        class Shape(Record, schema=f"{NS}.Shape"):
            id: str
            count: int
            note: int | None = None


def test_a_union_wider_than_the_schemas_is_refused() -> None:
    with pytest.raises(DeclarationError, match=r"field 'note'"):

        class Shape(Record, schema=f"{NS}.Shape"):
            id: str
            count: int
            note: str | int | None = None


def test_array_item_types_are_checked() -> None:
    with pytest.raises(DeclarationError, match=r"field 'tags'"):

        class AllTypes(Record, schema=f"{NS}.AllTypes"):
            id: str
            count: int
            small: int
            ratio: float
            flag: bool
            blob: bytes
            tags: list[int]
            limits: dict[str, int]
            note: str | None = None


def test_failed_classes_are_not_bound() -> None:
    with pytest.raises(DeclarationError):

        class Shape(Record, schema=f"{NS}.Shape"):
            id: str

    assert record_type(f"{NS}.Shape") is None


# --- finding schemas ---------------------------------------------------------------------------


def test_unknown_schema_names_the_folders_searched(unit_schema_dir: Path) -> None:
    with pytest.raises(DeclarationError) as caught:

        class Ghost(Record, schema=f"{NS}.Ghost"):
            id: str

    message = str(caught.value)
    assert f"no Avro schema named '{NS}.Ghost'" in message
    assert str(unit_schema_dir) in message


def test_schemas_are_found_through_sagalog_schema_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"{NS}.pathcheck.Lonely"
    (tmp_path / "Lonely.avsc").write_text(
        json.dumps(
            {
                "type": "record",
                "name": "Lonely",
                "namespace": f"{NS}.pathcheck",
                "fields": [{"name": "id", "type": "string"}],
            }
        )
    )
    monkeypatch.delenv("SAGALOG_SCHEMA_PATH")
    with pytest.raises(DeclarationError, match="no Avro schema named"):

        class Lonely(Record, schema=name):
            id: str

    monkeypatch.setenv(
        "SAGALOG_SCHEMA_PATH", os.pathsep.join(["/nonexistent/folder", str(tmp_path)])
    )

    class Lonely(Record, schema=name):  # type: ignore[no-redef]
        id: str

    assert CATALOG.current(name).source == str(tmp_path / "Lonely.avsc")
    assert Lonely.decode(Lonely(id="x").encode()) == Lonely(id="x")


def test_a_subpackage_with_its_own_schemas_still_finds_the_projects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """project/schemas/Outer.avsc and project/shop/billing/schemas/Inner.avsc, both found."""

    def schema(folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        definition = {
            "type": "record",
            "name": name,
            "namespace": f"{NS}.nested",
            "fields": [{"name": "id", "type": "string"}],
        }
        (folder / f"{name}.avsc").write_text(json.dumps(definition))

    project = tmp_path / "project"
    billing = project / "shop_nested" / "billing"
    billing.mkdir(parents=True)
    for package in (project / "shop_nested", billing):
        (package / "__init__.py").write_text("")
    schema(project / "schemas", "Outer")
    schema(billing / "schemas", "Inner")
    (billing / "records.py").write_text(
        "from stream_processors.codecs.records import Record\n"
        f"class Inner(Record, schema='{NS}.nested.Inner'):\n    id: str\n"
        f"class Outer(Record, schema='{NS}.nested.Outer'):\n    id: str\n"
    )
    (tmp_path / "schemas").mkdir()  # above the project's root: never searched
    monkeypatch.delenv("SAGALOG_SCHEMA_PATH")
    monkeypatch.syspath_prepend(str(project))

    module = importlib.import_module("shop_nested.billing.records")

    assert CATALOG.current(f"{NS}.nested.Inner").source == str(billing / "schemas" / "Inner.avsc")
    assert CATALOG.current(f"{NS}.nested.Outer").source == str(project / "schemas" / "Outer.avsc")
    assert module.Outer.decode(module.Outer(id="x").encode()) == module.Outer(id="x")


# --- Event, Command, State --------------------------------------------------------------------


def test_event_key_that_is_not_a_field_is_refused() -> None:
    with pytest.raises(DeclarationError, match=r"key field 'nope' is not a field"):

        class Keyed(Event, schema=f"{NS}.Keyed", key="nope"):
            id: str


def test_example_event_key_and_topic() -> None:
    assert OrderPlaced.__topic__ == "orders.events"
    assert OrderPlaced.__key__ == "order_id"
    assert ORDER.key() == "o-1"
    assert PaymentCompleted(order_id="o-1", payment_id="p").key() is None
    assert issubclass(OrderPlaced, Event)
    assert not issubclass(OrderPlaced, Command | State)


def test_example_order_placed_round_trip() -> None:
    framed = ORDER.encode()
    assert framed.startswith(MAGIC + OrderPlaced.__avro__.fingerprint)
    assert ORDER.to_avro() == {
        "order_id": "o-1",
        "customer_id": "c-9",
        "amount_cents": 4_200,
        "card_token": "tok_ok",
        "postcode": "SW1A 1AA",
    }
    decoded = OrderPlaced.decode(framed)
    assert type(decoded) is OrderPlaced
    assert decoded == ORDER
    assert decode_record(framed) == ORDER
    # Encoding is deterministic: the same record always gives the same bytes.
    assert decoded.encode() == framed


def test_record_written_with_an_older_schema_decodes_into_the_current_class() -> None:
    # OrderState before ``tracking_number`` existed: snapshots written then must stay readable.
    current = OrderState.__avro__.definition
    older = {**current, "fields": [f for f in current["fields"] if f["name"] != "tracking_number"]}
    writer = parse(older, "OrderState v0")
    assert writer.full_name == OrderState.__avro__.full_name
    assert writer.fingerprint != OrderState.__avro__.fingerprint
    CATALOG.add_writer(writer)
    assert CATALOG.current(writer.full_name) is OrderState.__avro__  # still the current version

    old_bytes = encode(
        writer,
        {
            "order_id": "o-1",
            "customer_id": "c-9",
            "amount_cents": 4_200,
            "card_token": "tok",
            "postcode": "N1 9GU",
            "payment_id": "pay-1",
        },
    )
    state = OrderState.decode(old_bytes)
    assert state == OrderState(
        order_id="o-1",
        customer_id="c-9",
        amount_cents=4_200,
        card_token="tok",
        postcode="N1 9GU",
        payment_id="pay-1",
        tracking_number=None,
    )
    # Re-encoding writes the current version.
    assert state.encode().startswith(MAGIC + OrderState.__avro__.fingerprint)


def test_decode_of_another_type_is_wrong_type() -> None:
    paid = PaymentCompleted(order_id="o-1", payment_id="pay-1")
    with pytest.raises(DecodeError) as caught:
        OrderPlaced.decode(paid.encode())
    assert caught.value.reason == "wrong-type"
    assert "OrderPlaced" in caught.value.detail
    assert "PaymentCompleted" in caught.value.detail


def test_decode_of_non_avro_bytes_is_not_avro() -> None:
    with pytest.raises(DecodeError) as caught:
        OrderPlaced.decode(b'{"order_id": "o-1", "amount_cents": 4200}')
    assert caught.value.reason == "not-avro"


def test_decode_of_a_schema_no_class_is_bound_to_is_unbound_schema() -> None:
    with pytest.raises(DeclarationError):  # loads the test schemas into the catalog, binds nothing

        class Shape(Record, schema=f"{NS}.Shape"):
            id: str

    framed = encode(CATALOG.current(f"{NS}.Unbound"), {"x": "y"})
    with pytest.raises(DecodeError) as caught:
        decode_record(framed)
    assert caught.value.reason == "unbound-schema"


def test_one_schema_cannot_be_bound_by_two_classes() -> None:
    with pytest.raises(DeclarationError, match="already bound to OrderPlaced"):

        class SomethingElse(Event, schema=OrderPlaced.__avro__.full_name):
            order_id: str
            customer_id: str
            amount_cents: int
            card_token: str
            postcode: str

    assert record_type(OrderPlaced.__avro__.full_name) is OrderPlaced
