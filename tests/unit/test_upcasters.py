"""Unit tests for reading old records: Avro resolution, and upcasters where it is not enough.

Covers: an old state written before a field with a default was added reads with the default,
inside a snapshot (and is unreadable until its writer schema is known, which is what the schema
history provides); resolution alone loses the value of a renamed field, and an upcaster moves it;
records of the current schema never go through an upcaster; an upcaster for one writer version
wins over the general one; fields an upcaster leaves out take their defaults; a failing,
misfitting or mistyped upcaster gives ``DecodeError("upcast-failed")`` naming what went wrong;
registering two different upcasters for one schema and writer is a ``DeclarationError``; and a
saga's ``upcasters = {...}`` registers them, refusing anything that is not a record class or a
function.

Current schemas are written to a folder of this module's own (namespace ``tests.unit.upcast``);
older versions are parsed here and made known with ``CATALOG.add_writer``, as ``SchemaHistory``
does when it loads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from examples.order_fulfillment.messages import MakePayment, OrderPlaced, OrderState
from examples.order_fulfillment.messages import PaymentCompleted as Paid
from sagas import Saga, Step
from stream_processors.codecs.avro import AvroSchema, DecodeError, encode, parse
from stream_processors.codecs.records import (
    CATALOG,
    DeclarationError,
    Event,
    State,
    decode_record,
    load_schema_directory,
    register_upcaster,
)
from stream_processors.core.instance import Instance, Status, decode_snapshot

NS = "tests.unit.upcast"


def schema(name: str, *fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": NS, "fields": list(fields)}


ID = {"name": "id", "type": "string"}
WEIGHT_V1 = {"name": "weight", "type": "long"}  # renamed weight_g in the current version
WEIGHT_G = {"name": "weight_g", "type": "long", "default": 0}
FRAGILE = {"name": "fragile", "type": "boolean", "default": False}

#: Current versions, by the file they are written to.
CURRENT = {
    "Plain": schema("Plain", ID, WEIGHT_G),
    "Parcel": schema("Parcel", ID, WEIGHT_G, FRAGILE),
    "Versioned": schema("Versioned", ID, WEIGHT_G),
    "Failing": schema("Failing", ID, WEIGHT_G),
    "FromSaga": schema("FromSaga", ID, WEIGHT_G),
    "Ticket": schema(
        "Ticket", ID, {"name": "priority", "type": "int", "default": 3}
    ),  # v1 had no priority
}


def old(name: str, *fields: dict[str, Any]) -> AvroSchema:
    """An older version of a schema, known as a writer (as a loaded history makes it)."""
    parsed = parse(schema(name, *fields))
    CATALOG.add_writer(parsed)
    return parsed


@pytest.fixture(scope="module")
def types(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("upcast-schemas")
    for name, definition in CURRENT.items():
        (folder / f"{name}.avsc").write_text(json.dumps(definition))
    load_schema_directory(Path(folder))

    class Plain(Event, schema=f"{NS}.Plain"):
        id: str
        weight_g: int = 0

    class Parcel(Event, schema=f"{NS}.Parcel"):
        id: str
        weight_g: int = 0
        fragile: bool = False

    class Versioned(Event, schema=f"{NS}.Versioned"):
        id: str
        weight_g: int = 0

    class Failing(Event, schema=f"{NS}.Failing"):
        id: str
        weight_g: int = 0

    class FromSaga(Event, schema=f"{NS}.FromSaga"):
        id: str
        weight_g: int = 0

    class Ticket(State, schema=f"{NS}.Ticket"):
        id: str
        priority: int = 3

    return SimpleNamespace(
        **{cls.__name__: cls for cls in (Plain, Parcel, Versioned, Failing, FromSaga, Ticket)}
    )


def renamed(datum: dict[str, Any]) -> Mapping[str, Any]:
    """v1 -> current: ``weight`` became ``weight_g``."""
    return {"id": datum["id"], "weight_g": datum["weight"]}


# --- resolution ---------------------------------------------------------------------------------


def test_an_old_state_in_a_snapshot_reads_with_the_new_fields_default(
    types: SimpleNamespace,
) -> None:
    v1_state = parse(schema("Ticket", ID))  # not known to the catalog yet
    snapshot = encode(
        CATALOG.current("sagalog.Snapshot"),
        {
            "instance": "t-1",
            "saga_version": 1,
            "status": "running",
            "seq": 2,
            "started_at_ms": 1,
            "updated_at_ms": 2,
            "reason": None,
            "steps": [],
            "completed": [],
            "data": encode(v1_state, {"id": "t-1"}),
            "timers": [],
        },
    )
    with pytest.raises(DecodeError) as unknown:
        decode_snapshot(snapshot)
    assert unknown.value.reason == "unknown-schema"
    CATALOG.add_writer(v1_state)  # what SchemaHistory.load does for every recorded schema
    instance = decode_snapshot(snapshot)
    assert isinstance(instance, Instance) and instance.status is Status.RUNNING
    assert instance.data == types.Ticket(id="t-1", priority=3)


def test_resolution_alone_loses_a_renamed_fields_value(types: SimpleNamespace) -> None:
    v1 = old("Plain", ID, WEIGHT_V1)
    assert decode_record(encode(v1, {"id": "p-1", "weight": 1250})) == types.Plain("p-1", 0)


# --- upcasters ----------------------------------------------------------------------------------


def test_an_upcaster_moves_a_renamed_field(types: SimpleNamespace) -> None:
    v1 = old("Parcel", ID, WEIGHT_V1)
    seen: list[dict[str, Any]] = []

    def parcel_v1(datum: dict[str, Any]) -> Mapping[str, Any]:
        seen.append(datum)
        return renamed(datum)

    register_upcaster(f"{NS}.Parcel", parcel_v1)
    record = decode_record(encode(v1, {"id": "p-1", "weight": 1250}))
    assert record == types.Parcel(id="p-1", weight_g=1250, fragile=False)  # fragile: its default
    assert seen == [{"id": "p-1", "weight": 1250}]  # the record as written, not resolved

    current = types.Parcel(id="p-2", weight_g=7, fragile=True)
    assert decode_record(current.encode()) == current
    assert len(seen) == 1  # records of the current schema skip the upcaster


def test_an_upcaster_for_one_writer_wins_over_the_general_one(types: SimpleNamespace) -> None:
    v0 = old("Versioned", ID, {"name": "grams", "type": "string"})
    v1 = old("Versioned", ID, WEIGHT_V1)
    register_upcaster(f"{NS}.Versioned", renamed)
    register_upcaster(
        f"{NS}.Versioned",
        lambda d: {"id": d["id"], "weight_g": int(d["grams"])},
        writer_fingerprint=v0.fingerprint,
    )
    assert decode_record(encode(v0, {"id": "a", "grams": "12"})) == types.Versioned("a", 12)
    assert decode_record(encode(v1, {"id": "b", "weight": 34})) == types.Versioned("b", 34)


@pytest.mark.parametrize(
    ("upcaster", "expected"),
    [
        (lambda d: 1 / 0, "ZeroDivisionError: division by zero"),
        (lambda d: {**renamed(d), "weight": 1}, "fields not in the schema: ['weight']"),
        (lambda d: {"id": d["id"], "weight_g": "heavy"}, "weight_g"),
        (lambda d: {"weight_g": 1}, "tests.unit.upcast.Failing.id"),
    ],
    ids=["raises", "unknown-field", "wrong-type", "missing-required"],
)
def test_a_bad_upcaster_is_a_decode_error_naming_the_problem(
    types: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, upcaster: Any, expected: str
) -> None:
    import stream_processors.codecs.records as records

    monkeypatch.setitem(records._upcasters, f"{NS}.Failing", {None: upcaster})
    v1 = old("Failing", ID, WEIGHT_V1)
    with pytest.raises(DecodeError) as raised:
        decode_record(encode(v1, {"id": "f", "weight": 1}))
    assert raised.value.reason == "upcast-failed"
    assert expected in raised.value.detail
    assert v1.fingerprint.hex() in raised.value.detail


def test_two_upcasters_for_one_schema_and_writer_are_refused(types: SimpleNamespace) -> None:
    def first(datum: dict[str, Any]) -> dict[str, Any]:
        return datum

    def second(datum: dict[str, Any]) -> dict[str, Any]:
        return datum

    register_upcaster(f"{NS}.Twice", first)
    register_upcaster(f"{NS}.Twice", first)  # the same function again: fine (a re-import)
    with pytest.raises(DeclarationError, match=r"two upcasters for tests.unit.upcast.Twice"):
        register_upcaster(f"{NS}.Twice", second)
    register_upcaster(f"{NS}.Twice", second, writer_fingerprint=b"\x01" * 8)  # another writer


# --- declared by a saga -------------------------------------------------------------------------


def _saga(upcasters: Any, name: str) -> type[Saga]:
    namespace: dict[str, Any] = {
        "start": OrderPlaced,
        "state": OrderState,
        "begin": staticmethod(lambda event: None),
        "payment": Step(MakePayment, success=Paid),
        "upcasters": upcasters,
    }
    return type(name, (Saga,), namespace, name=name)


def test_a_saga_declares_upcasters_for_its_records(types: SimpleNamespace) -> None:
    v1 = old("FromSaga", ID, WEIGHT_V1)
    saga = _saga({types.FromSaga: staticmethod(renamed)}, "upcasting_saga")
    assert saga.definition.name == "upcasting_saga"
    assert decode_record(encode(v1, {"id": "s", "weight": 5})) == types.FromSaga("s", 5)


@pytest.mark.parametrize(
    ("upcasters", "message"),
    [
        ({int: renamed}, r"upcasters: <class 'int'> is not a record class"),
        ({Event: renamed}, r"upcasters: Event has no schema"),
        ("not a mapping", r"upcasters must map record classes to functions"),
    ],
)
def test_a_saga_with_bad_upcasters_fails_at_declaration(upcasters: Any, message: str) -> None:
    with pytest.raises(DeclarationError, match=message):
        _saga(upcasters, "bad_upcasters")


def test_a_saga_upcaster_that_is_not_a_function_fails(types: SimpleNamespace) -> None:
    with pytest.raises(DeclarationError, match=r"the upcaster for \S*FromSaga is not a function"):
        _saga({types.FromSaga: 42}, "bad_upcaster_value")
