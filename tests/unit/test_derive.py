"""Unit tests for record classes as the source of their schema (``derive=True``) and export.

Covers ``stream_processors.codecs.derive`` through ``Record``: every supported type (str, int,
float,
bool, bytes), ``X | None`` (default null, or the default's branch first), defaults and default
factories, nested records (defined once, then by name, in lists, maps and unions) with encode
and decode round trips; each refusal at class creation (an unsupported type, a union of two
types, a non-str map key, a default None on a required type, an unwritable default, a nested
class with no schema, derive=True without schema=, a schema file that says otherwise); the
``.avsc`` text (``contract_json``: fixed key order); and ``sagas schemas export`` with
``--out`` and ``--check`` on the example's messages (semantically the hand-written files of
``schemas/examples/orders``) and on a module of derived classes written for the test, whose
drift ``--check`` lists. Derived schemas are named ``tests.unit.derive.*``: the process catalog
keeps them, so each name is declared once.
"""

from __future__ import annotations

import dataclasses
import datetime  # noqa: F401  (an annotation the refusal tests name)
import json
import re
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import pytest

import examples.order_fulfillment.messages as messages
from sagas.cli import app
from sagas.cli.errors import run_cli
from sagas.cli.schemas import exported_files
from stream_processors.codecs.avro import decode
from stream_processors.codecs.derive import (
    contract_json,
    derive_definition,
    field_specs,
    same_contract,
)
from stream_processors.codecs.records import CATALOG, DeclarationError, Event, Record, decode_record

NS = "tests.unit.derive"
REPO = Path(__file__).resolve().parents[2]


class Address(Record, schema=f"{NS}.Address", derive=True):
    street: str
    postcode: str | None = None


class Line(Record, schema=f"{NS}.Line", derive=True):
    sku: str
    quantity: int = 1
    deliver_to: Address | None = None


class Everything(Event, schema=f"{NS}.Everything", derive=True, topic="t.derive", key="id"):
    """Every kind of field a derived schema takes."""

    id: str
    count: int
    ratio: float
    flag: bool
    blob: bytes
    billing: Address
    note: str | None
    lines: list[Line] = dataclasses.field(default_factory=list)
    by_name: dict[str, Address] = dataclasses.field(default_factory=dict)
    tags: list[str] = dataclasses.field(default_factory=lambda: ["new"])
    limits: dict[str, int] = dataclasses.field(default_factory=dict)
    currency: str = "EUR"
    priority: int = 3
    weight: float = 1.5
    gift: bool = False
    magic: bytes = b"\x00\xff"
    coupon: str | None = "WELCOME"
    shipping: Address | None = None
    fallback: Address = Address("nowhere")


class Abstract(Record):
    """A record class with no schema (as Event and Command are): not a field type."""


def fields_of(cls: type[Record]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in cls.__avro__.definition["fields"]}


def test_each_python_type_becomes_its_avro_type() -> None:
    fields = fields_of(Everything)
    assert list(fields) == [f.name for f in dataclasses.fields(Everything)]
    assert {name: fields[name]["type"] for name in ("id", "count", "ratio", "flag", "blob")} == {
        "id": "string",
        "count": "long",
        "ratio": "double",
        "flag": "boolean",
        "blob": "bytes",
    }
    assert fields["tags"]["type"] == {"type": "array", "items": "string"}
    assert fields["limits"]["type"] == {"type": "map", "values": "long"}
    assert Everything.__avro__.definition["doc"] == "Every kind of field a derived schema takes."
    assert Everything.__avro__.full_name == f"{NS}.Everything"
    assert CATALOG.current(f"{NS}.Everything") is Everything.__avro__
    assert Everything.__derived__ and not messages.OrderPlaced.__derived__


def test_optional_fields_default_to_null_unless_given_another_default() -> None:
    fields = fields_of(Everything)
    assert fields["note"] == {"name": "note", "type": ["null", "string"], "default": None}
    assert fields["coupon"] == {"name": "coupon", "type": ["string", "null"], "default": "WELCOME"}
    assert fields["shipping"] == {
        "name": "shipping",
        "type": ["null", f"{NS}.Address"],
        "default": None,
    }


def test_defaults_and_default_factories_become_avro_defaults() -> None:
    fields = fields_of(Everything)
    defaults = {name: f.get("default", "<none>") for name, f in fields.items()}
    assert defaults["id"] == "<none>"
    assert defaults["billing"] == "<none>"
    assert defaults["lines"] == []
    assert defaults["by_name"] == {}
    assert defaults["tags"] == ["new"]
    assert defaults["currency"] == "EUR"
    assert defaults["priority"] == 3
    assert defaults["weight"] == 1.5
    assert defaults["gift"] is False
    assert defaults["magic"] == "\u0000\u00ff"  # Avro's JSON form of bytes
    assert defaults["fallback"] == {"street": "nowhere", "postcode": None}


def test_nested_records_are_defined_once_then_named() -> None:
    fields = fields_of(Everything)
    billing = fields["billing"]["type"]
    assert billing["type"] == "record" and billing["name"] == "Address"
    assert billing["namespace"] == NS
    line = fields["lines"]["type"]["items"]
    assert line["name"] == "Line"
    # Address, defined by billing, is referred to by name inside Line and everywhere after.
    assert {f["name"]: f["type"] for f in line["fields"]}["deliver_to"] == ["null", f"{NS}.Address"]
    assert fields["by_name"]["type"] == {"type": "map", "values": f"{NS}.Address"}
    assert fields["fallback"]["type"] == f"{NS}.Address"


def test_a_derived_record_with_nested_records_round_trips() -> None:
    record = Everything(
        id="e-1",
        count=2**40,
        ratio=0.25,
        flag=True,
        blob=b"\x01\x02",
        billing=Address("1 Main St", "12345"),
        note=None,
        lines=[Line("a", 2, Address("dock")), Line("b")],
        by_name={"home": Address("2 Side St")},
        shipping=Address("3 Far Rd"),
    )
    data = record.encode()
    assert data[:10] == Everything.__avro__.header
    assert decode_record(data) == record
    assert Everything.decode(data).lines[0].deliver_to == Address("dock")
    # On the wire it is plain Avro: any reader of the schema gets the nested fields.
    _, datum = decode(CATALOG, data)
    assert datum["billing"] == {"street": "1 Main St", "postcode": "12345"}
    assert datum["lines"][1] == {"sku": "b", "quantity": 1, "deliver_to": None}


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ("Any", r"field 'bad' is Any: a derived schema takes str, int"),
        ("datetime.datetime", r"field 'bad' is datetime: a derived schema takes"),
        ("int | str", r"field 'bad' is int \| str"),
        ("dict[int, str]", r"field 'bad' is dict\[int, str\]"),
        ("list[set[str]]", r"field 'bad\[\]' is set\[str\]"),
        ("tuple[str, ...]", r"field 'bad' is tuple\[str, ...\]"),
    ],
)
def test_an_unsupported_type_is_refused_at_import_naming_the_field(
    annotation: str, message: str
) -> None:
    # Annotations are resolved in this module (its globals), as get_type_hints does.
    source = f"""
        class Refused(Record, schema="{NS}.Refused", derive=True):
            ok: str
            bad: {annotation}
    """
    with pytest.raises(DeclarationError) as refused:
        exec(textwrap.dedent(source), {"__name__": __name__, "Record": Record})
    assert str(refused.value).startswith(f"Refused (derived schema {NS}.Refused): ")
    assert re.search(message, str(refused.value)), str(refused.value)


def test_other_derivation_mistakes_are_refused_naming_the_field() -> None:
    with pytest.raises(DeclarationError, match=r"field 'name': default None, but str"):

        class NoneDefault(Record, schema=f"{NS}.NoneDefault", derive=True):
            name: str = None  # type: ignore[assignment]

    with pytest.raises(DeclarationError, match=r"field 'when': default .* cannot be written"):

        class OddDefault(Record, schema=f"{NS}.OddDefault", derive=True):
            when: str = dataclasses.field(default_factory=lambda: object())  # type: ignore[arg-type]

    with pytest.raises(
        DeclarationError, match=r"field 'inner': Abstract is a record class with no schema"
    ):

        class HoldsAbstract(Record, schema=f"{NS}.HoldsAbstract", derive=True):
            inner: Abstract

    with pytest.raises(DeclarationError, match=r"derive=True needs schema="):

        class Nameless(Record, derive=True):
            x: str


def test_a_derived_class_refuses_a_schema_file_that_says_otherwise(schema_path: Path) -> None:
    # sagalog.examples.orders.PaymentCompleted is in schemas/examples/orders with two strings.
    with pytest.raises(DeclarationError, match=r"PaymentCompleted.avsc defines .* differently"):

        class PaymentCompleted(
            Event, schema="sagalog.examples.orders.PaymentCompleted", derive=True
        ):
            order_id: str
            payment_id: int

    # One that agrees with a file (docs aside) is bound to it.
    class Agreed(Record, schema=f"{NS}.Agreed", derive=True):
        id: str

    assert Agreed.__avro__.source == str(schema_path / "derive" / "Agreed.avsc")


def test_contract_json_writes_keys_in_a_fixed_order() -> None:
    text = contract_json(Line.__avro__.definition)
    assert text.endswith("}\n")
    parsed = json.loads(text)
    assert list(parsed) == ["type", "name", "namespace", "fields"]
    assert list(parsed["fields"][1]) == ["name", "type", "default"]
    shuffled = {"fields": parsed["fields"], "namespace": NS, "name": "Line", "type": "record"}
    assert contract_json(shuffled) == text


def test_the_example_classes_derive_the_hand_written_contracts() -> None:
    """What derive=True would make of the example's classes is what its .avsc files say."""
    folder = REPO / "schemas" / "examples" / "orders"
    classes = [
        value
        for value in vars(messages).values()
        if isinstance(value, type) and issubclass(value, Record) and "__avro__" in vars(value)
    ]
    assert len(classes) == len(list(folder.glob("*.avsc"))) == 10
    for cls in classes:
        full_name = cls.__avro__.full_name
        derived = derive_definition(
            full_name,
            field_specs(cls, _hints(cls)),
            named=lambda hint: None,
            as_datum=lambda value: None,
        )
        written = json.loads((folder / f"{full_name.rpartition('.')[2]}.avsc").read_text())
        assert same_contract(derived, written), full_name


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def test_export_writes_the_examples_contracts_and_check_finds_them_equal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = "examples.order_fulfillment.messages"
    assert run_cli(app, ["schemas", "export", module, "--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.glob("*.avsc"))
    folder = REPO / "schemas" / "examples" / "orders"
    assert written == sorted(p.name for p in folder.glob("*.avsc"))
    for name in written:
        exported = json.loads((tmp_path / name).read_text())
        assert same_contract(exported, json.loads((folder / name).read_text())), name
        assert (tmp_path / name).read_text() == contract_json(exported)
    capsys.readouterr()
    assert run_cli(app, ["schemas", "export", module, "--check", str(folder)]) == 0
    assert "10 schema files" in capsys.readouterr().out


DERIVED_MODULE = '''
"""Derived classes for tests/unit/test_derive.py's export check."""

from __future__ import annotations

from stream_processors.codecs.records import Command, Event


class Ship(Command, schema="tests.unit.derive.export.Ship", derive=True, topic="ship.commands"):
    """Ship an order."""

    order_id: str
    express: bool = False


class Shipped(Event, schema="tests.unit.derive.export.Shipped", derive=True):
    order_id: str
    tracking: str | None = None
'''


def test_export_check_lists_every_file_that_drifted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "derive_export_module.py").write_text(DERIVED_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "contract"
    module = "derive_export_module"
    try:
        assert run_cli(app, ["schemas", "export", module, "--out", str(out)]) == 0
        assert sorted(exported_files(module)) == ["Ship.avsc", "Shipped.avsc"]
        assert run_cli(app, ["schemas", "export", module, "--check", str(out)]) == 0
        ship = json.loads((out / "Ship.avsc").read_text())
        assert ship["doc"] == "Ship an order."
        ship["fields"][1]["default"] = True  # someone edited the contract by hand
        (out / "Ship.avsc").write_text(json.dumps(ship))
        (out / "Shipped.avsc").unlink()
        capsys.readouterr()
        assert run_cli(app, ["schemas", "export", module, "--check", str(out)]) == 1
        captured = capsys.readouterr()
        assert f"{out / 'Ship.avsc'}: differs from the class" in captured.out
        assert f"{out / 'Shipped.avsc'}: missing" in captured.out
        assert "2 of 2 schema files" in captured.err
        assert len(captured.err.strip().splitlines()) == 1
    finally:
        sys.modules.pop(module, None)
