"""Unit tests for ``stream_processors.codecs.compatibility``: Avro schema resolution, decided up
front.

Covers each rule of the specification's schema resolution with the message it gives (field
added with and without a default, removed, retyped; every promotion and its reverse; unions on
either side; enums with and without a reader default; arrays, maps, fixed; nested, referenced
and recursive named records; reader aliases for fields and records; logical types), and
cross-checks the verdicts with fastavro, an independent implementation: for every compatible
pair, records written with the writer (one per union branch and enum symbol) decode with
``schemaless_reader(writer, reader)``; for every incompatible pair, some such record does not.
"""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest
from fastavro.schema import parse_schema

from stream_processors.codecs.avro import parse
from stream_processors.codecs.compatibility import PROMOTIONS, compatible, incompatibilities

NS = "tests.unit.compat"
PRIMITIVES = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]


def record(name: str, *fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": NS, "fields": list(fields), **extra}


def f(name: str, avro_type: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": avro_type, **extra}


def order(*fields: dict[str, Any]) -> dict[str, Any]:
    return record("OrderPlaced", f("order_id", "string"), *fields)


def enum(symbols: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "enum", "name": "Status", "symbols": symbols, **extra}


def address(*extra_fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "record",
        "name": "Address",
        "fields": [f("street", "string"), *extra_fields],
    }


# --- fields ------------------------------------------------------------------------------------


def test_identical_schemas_are_compatible() -> None:
    schema = order(f("amount_cents", "long"))
    assert incompatibilities(schema, schema) == []
    assert compatible(schema, schema)


def test_a_field_added_with_a_default_is_compatible() -> None:
    v1 = order(f("amount_cents", "long"))
    v2 = order(f("amount_cents", "long"), f("coupon", ["null", "string"], default=None))
    assert incompatibilities(v1, v2) == []


def test_a_field_added_without_a_default_is_named() -> None:
    v1 = order(f("amount_cents", "long"))
    v2 = order(f("amount_cents", "long"), f("coupon", "string"))
    assert incompatibilities(v1, v2) == [
        "OrderPlaced.coupon: reader field has no default and the writer lacks it"
    ]


def test_a_removed_field_is_compatible() -> None:
    v1 = order(f("amount_cents", "long"), f("note", "string"))
    v2 = order(f("amount_cents", "long"))
    assert incompatibilities(v1, v2) == []


def test_a_retyped_field_is_named_with_both_types() -> None:
    v1 = order(f("amount_cents", "long"))
    v2 = order(f("amount_cents", "string"))
    assert incompatibilities(v1, v2) == [
        "OrderPlaced.amount_cents: writer long cannot be read as string"
    ]


def test_a_retyped_field_with_a_default_is_still_incompatible() -> None:
    # The writer has the field: its values must be readable; the default is for absent fields.
    v1 = order(f("amount_cents", "long"))
    v2 = order(f("amount_cents", "boolean", default=False))
    assert incompatibilities(v1, v2) == [
        "OrderPlaced.amount_cents: writer long cannot be read as boolean"
    ]


def test_every_problem_is_reported() -> None:
    v1 = order(f("a", "long"), f("b", "string"))
    v2 = order(f("a", "int"), f("b", "boolean"), f("c", "string"))
    assert incompatibilities(v1, v2) == [
        "OrderPlaced.a: writer long cannot be read as int",
        "OrderPlaced.b: writer string cannot be read as boolean",
        "OrderPlaced.c: reader field has no default and the writer lacks it",
    ]


def test_a_reader_field_alias_reads_the_renamed_writer_field() -> None:
    v1 = order(f("amount", "long"))
    v2 = order(f("amount_cents", "long", aliases=["amount"]))
    assert incompatibilities(v1, v2) == []
    v2_bad = order(f("amount_cents", "string", aliases=["amount"]))
    assert incompatibilities(v1, v2_bad) == [
        "OrderPlaced.amount_cents: writer long cannot be read as string"
    ]


def test_a_renamed_field_without_alias_or_default_is_named() -> None:
    v1 = order(f("amount", "long"))
    v2 = order(f("amount_cents", "long"))
    assert incompatibilities(v1, v2) == [
        "OrderPlaced.amount_cents: reader field has no default and the writer lacks it"
    ]


def test_parsed_schemas_are_accepted_as_well_as_definitions() -> None:
    v1 = parse(order(f("amount_cents", "long")))
    v2 = parse(order(f("amount_cents", "string")))
    assert incompatibilities(v1, v2) == [
        "OrderPlaced.amount_cents: writer long cannot be read as string"
    ]
    assert incompatibilities(v1, order(f("amount_cents", "double"))) == []


# --- primitives and promotions -----------------------------------------------------------------


@pytest.mark.parametrize("writer", PRIMITIVES)
@pytest.mark.parametrize("reader", PRIMITIVES)
def test_primitive_promotions_follow_the_specification(writer: str, reader: str) -> None:
    allowed = writer == reader or reader in PROMOTIONS.get(writer, frozenset())
    problems = incompatibilities(order(f("x", writer)), order(f("x", reader)))
    if allowed:
        assert problems == []
    else:
        assert problems == [f"OrderPlaced.x: writer {writer} cannot be read as {reader}"]


def test_the_promotions_are_exactly_the_specifications() -> None:
    assert {w: set(r) for w, r in PROMOTIONS.items()} == {
        "int": {"long", "float", "double"},
        "long": {"float", "double"},
        "float": {"double"},
        "string": {"bytes"},
        "bytes": {"string"},
    }


def test_logical_types_do_not_change_what_is_readable() -> None:
    millis = {"type": "long", "logicalType": "timestamp-millis"}
    assert incompatibilities(order(f("at", "long")), order(f("at", millis))) == []
    assert incompatibilities(order(f("at", millis)), order(f("at", "long"))) == []
    assert incompatibilities(order(f("at", millis)), order(f("at", "string"))) == [
        "OrderPlaced.at: writer long cannot be read as string"
    ]


# --- unions ------------------------------------------------------------------------------------


def test_a_union_may_gain_branches() -> None:
    v1 = order(f("note", ["null", "string"], default=None))
    v2 = order(f("note", ["null", "string", "long"], default=None))
    assert incompatibilities(v1, v2) == []


def test_a_writer_branch_the_reader_union_lacks_is_named() -> None:
    v1 = order(f("note", ["null", "string", "boolean"], default=None))
    v2 = order(f("note", ["null", "string"], default=None))
    assert incompatibilities(v1, v2) == [
        "OrderPlaced.note: writer branch boolean cannot be read as any of [null, string]"
    ]


def test_a_field_made_optional_is_compatible() -> None:
    assert incompatibilities(order(f("note", "string")), order(f("note", ["null", "string"]))) == []


def test_a_value_matches_a_promoted_union_branch() -> None:
    assert incompatibilities(order(f("n", "int")), order(f("n", ["null", "long"]))) == []
    assert (
        incompatibilities(order(f("n", ["null", "int"])), order(f("n", ["null", "double"]))) == []
    )


def test_a_value_no_union_branch_takes_is_named() -> None:
    assert incompatibilities(order(f("n", "boolean")), order(f("n", ["null", "long"]))) == [
        "OrderPlaced.n: writer boolean cannot be read as any of [null, long]"
    ]


def test_an_optional_field_made_required_fails_on_the_null_branch() -> None:
    v1 = order(f("note", ["null", "string"], default=None))
    v2 = order(f("note", "string"))
    assert incompatibilities(v1, v2) == [
        "OrderPlaced.note: writer branch null cannot be read as string"
    ]


# --- enums, arrays, maps, fixed ----------------------------------------------------------------


def test_an_enum_may_gain_symbols() -> None:
    assert (
        incompatibilities(order(f("s", enum(["A", "B"]))), order(f("s", enum(["A", "B", "C"]))))
        == []
    )


def test_an_enum_symbol_removed_is_named() -> None:
    problems = incompatibilities(order(f("s", enum(["A", "B", "C"]))), order(f("s", enum(["A"]))))
    assert problems == [
        f"OrderPlaced.s: writer symbol(s) 'B', 'C' of enum {NS}.Status are not in the reader's "
        "symbols, and the reader enum has no default"
    ]


def test_an_enum_symbol_removed_is_fine_when_the_reader_has_a_default() -> None:
    v2 = order(f("s", enum(["A", "UNKNOWN"], default="UNKNOWN")))
    assert incompatibilities(order(f("s", enum(["A", "B"]))), v2) == []


def test_arrays_and_maps_are_checked_by_their_items_and_values() -> None:
    v1 = order(
        f("tags", {"type": "array", "items": "int"}), f("m", {"type": "map", "values": "int"})
    )
    ok = order(
        f("tags", {"type": "array", "items": "long"}), f("m", {"type": "map", "values": "double"})
    )
    assert incompatibilities(v1, ok) == []
    bad = order(
        f("tags", {"type": "array", "items": "string"}),
        f("m", {"type": "map", "values": "boolean"}),
    )
    assert incompatibilities(v1, bad) == [
        "OrderPlaced.tags[]: writer int cannot be read as string",
        "OrderPlaced.m{}: writer int cannot be read as boolean",
    ]


def test_an_array_is_not_a_map() -> None:
    v1 = order(f("tags", {"type": "array", "items": "string"}))
    v2 = order(f("tags", {"type": "map", "values": "string"}))
    assert incompatibilities(v1, v2) == [
        "OrderPlaced.tags: writer array<string> cannot be read as map<string>"
    ]


def test_fixed_must_keep_its_name_and_size() -> None:
    def fixed(size: int, name: str = "Hash") -> dict[str, Any]:
        return {"type": "fixed", "name": name, "size": size}

    assert incompatibilities(order(f("h", fixed(16))), order(f("h", fixed(16)))) == []
    assert incompatibilities(order(f("h", fixed(16))), order(f("h", fixed(32)))) == [
        f"OrderPlaced.h: writer fixed {NS}.Hash (size 16) cannot be read as "
        f"fixed {NS}.Hash (size 32)"
    ]
    assert incompatibilities(order(f("h", fixed(16))), order(f("h", fixed(16, "Digest")))) == [
        f"OrderPlaced.h: writer fixed {NS}.Hash (size 16) cannot be read as "
        f"fixed {NS}.Digest (size 16)"
    ]


# --- named records -----------------------------------------------------------------------------


def test_nested_records_are_checked_field_by_field_with_the_path() -> None:
    v1 = order(f("ship_to", address()), f("bill_to", f"{NS}.Address"))
    v2 = order(f("ship_to", address(f("city", "string"))), f("bill_to", f"{NS}.Address"))
    assert incompatibilities(v1, v2) == [
        "OrderPlaced.ship_to.city: reader field has no default and the writer lacks it",
        "OrderPlaced.bill_to.city: reader field has no default and the writer lacks it",
    ]
    v2_ok = order(
        f("ship_to", address(f("city", "string", default=""))), f("bill_to", f"{NS}.Address")
    )
    assert incompatibilities(v1, v2_ok) == []


def test_records_in_arrays_and_unions_carry_the_path() -> None:
    v1 = order(
        f("lines", {"type": "array", "items": record("Line", f("qty", "long"))}),
        f("gift", ["null", record("Gift", f("message", "string"))], default=None),
    )
    v2 = order(
        f("lines", {"type": "array", "items": record("Line", f("qty", "int"))}),
        f("gift", ["null", record("Gift", f("message", "bytes"), f("wrap", "boolean"))]),
    )
    assert incompatibilities(v1, v2) == [
        "OrderPlaced.lines[].qty: writer long cannot be read as int",
        "OrderPlaced.gift.wrap: reader field has no default and the writer lacks it",
    ]


def test_a_nested_record_renamed_needs_an_alias() -> None:
    v1 = order(f("ship_to", address()))
    renamed = {**address(), "name": "Destination"}
    assert incompatibilities(v1, order(f("ship_to", renamed))) == [
        f"OrderPlaced.ship_to: writer record {NS}.Address cannot be read as record {NS}.Destination"
    ]
    assert incompatibilities(v1, order(f("ship_to", {**renamed, "aliases": ["Address"]}))) == []
    qualified = {**renamed, "aliases": [f"{NS}.Address"]}
    assert incompatibilities(v1, order(f("ship_to", qualified))) == []


def test_a_record_moved_to_another_namespace_still_matches_by_its_name() -> None:
    # The specification matches records by unqualified name, as fastavro does.
    v1 = order(f("ship_to", address()))
    moved = {**address(), "namespace": "elsewhere"}
    assert incompatibilities(v1, order(f("ship_to", moved))) == []


def test_a_record_union_branch_matches_by_name() -> None:
    a, b = record("A", f("x", "long")), record("B", f("y", "string"))
    v1 = order(f("choice", [a, b]))
    v2 = order(f("choice", [record("B", f("y", "string")), record("A", f("x", "double"))]))
    assert incompatibilities(v1, v2) == []
    v2_without_b = order(f("choice", [record("A", f("x", "long"))]))
    assert incompatibilities(v1, v2_without_b) == [
        f"OrderPlaced.choice: writer branch record {NS}.B cannot be read as any of [record {NS}.A]"
    ]


def test_recursive_schemas_are_checked_once_per_pair() -> None:
    def node(*extra: dict[str, Any]) -> dict[str, Any]:
        return record(
            "Node", f("value", "long"), f("next", ["null", f"{NS}.Node"], default=None), *extra
        )

    assert incompatibilities(node(), node()) == []
    assert incompatibilities(node(), node(f("weight", "double", default=1.0))) == []
    assert incompatibilities(node(), node(f("weight", "double"))) == [
        "Node.weight: reader field has no default and the writer lacks it"
    ]


def test_the_top_record_names_must_match() -> None:
    assert incompatibilities(record("A", f("x", "long")), record("B", f("x", "long"))) == [
        f"B: writer record {NS}.A cannot be read as record {NS}.B"
    ]


def test_the_builtin_snapshot_schema_is_compatible_with_itself(catalog_schemas: None) -> None:
    from stream_processors.codecs.records import CATALOG

    snapshot = CATALOG.current("sagalog.Snapshot")
    assert incompatibilities(snapshot, snapshot) == []
    older = dict(snapshot.definition)
    older["fields"] = [field for field in older["fields"] if field["name"] != "timers"]
    assert incompatibilities(older, snapshot) == []  # timers has a default
    assert incompatibilities(snapshot, older) == []  # and may be dropped


@pytest.fixture
def catalog_schemas() -> None:
    import stream_processors.core.journal  # noqa: F401  (loads the built-in schemas)


# --- cross-checking with fastavro --------------------------------------------------------------


def _sample(schema: Any, names: dict[str, Any], k: int, depth: int = 0) -> Any:
    """A value of ``schema`` (parsed); ``k`` picks union branches and enum symbols."""
    if isinstance(schema, str):
        if schema in names:
            return _sample(names[schema], names, k, depth)
        return {
            "null": None,
            "boolean": k % 2 == 0,
            "int": k + 1,
            "long": 2**33 + k,
            "float": 1.5,
            "double": 2.25,
            "bytes": b"b%d" % k,
            "string": f"s{k}",
        }[schema]
    if isinstance(schema, list):
        if depth > 3 and "null" in schema:
            return None
        return _sample(schema[k % len(schema)], names, k, depth + 1)
    kind = schema["type"]
    if kind == "record":
        names.setdefault(schema["name"], schema)
        return {
            field["name"]: _sample(field["type"], names, k, depth + 1) for field in schema["fields"]
        }
    if kind == "enum":
        names.setdefault(schema["name"], schema)
        return schema["symbols"][k % len(schema["symbols"])]
    if kind == "fixed":
        names.setdefault(schema["name"], schema)
        return bytes(schema["size"])
    if kind == "array":
        return [_sample(schema["items"], names, k + i, depth + 1) for i in range(2)]
    if kind == "map":
        return {"a": _sample(schema["values"], names, k, depth + 1)}
    return _sample(kind, names, k, depth)


def _round_trips(writer: dict[str, Any], reader: dict[str, Any]) -> list[str]:
    """fastavro's failures decoding samples written with ``writer`` as ``reader``."""
    w, r = parse_schema(writer, _write_hint=False), parse_schema(reader, _write_hint=False)
    failures = []
    for k in range(6):
        datum = _sample(w, {}, k)
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, w, datum)
        buffer.seek(0)
        try:
            fastavro.schemaless_reader(buffer, w, r)
        except Exception as error:
            failures.append(f"{type(error).__name__}: {error}")
    return failures


COMPATIBLE_PAIRS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (order(f("a", "long")), order(f("a", "long"), f("b", "string", default="x"))),
    (order(f("a", "long"), f("b", "string")), order(f("a", "long"))),
    (order(f("a", "int")), order(f("a", "long"))),
    (order(f("a", "int")), order(f("a", "double"))),
    (order(f("a", "long")), order(f("a", "float"))),
    (order(f("a", "float")), order(f("a", "double"))),
    (order(f("a", "string")), order(f("a", "bytes"))),
    (order(f("a", "bytes")), order(f("a", "string"))),
    (order(f("a", "string")), order(f("a", ["null", "string"]))),
    (order(f("a", ["null", "int"])), order(f("a", ["null", "long", "string"]))),
    (order(f("a", "long")), order(f("b", "long", aliases=["a"]))),
    (order(f("s", enum(["A", "B"]))), order(f("s", enum(["B", "A", "C"])))),
    (order(f("s", enum(["A", "B", "C"]))), order(f("s", enum(["A", "Z"], default="Z")))),
    (
        order(f("t", {"type": "array", "items": "int"})),
        order(f("t", {"type": "array", "items": "long"})),
    ),
    (
        order(f("m", {"type": "map", "values": "float"})),
        order(f("m", {"type": "map", "values": "double"})),
    ),
    (
        order(f("ship_to", address()), f("bill_to", f"{NS}.Address")),
        order(
            f("ship_to", address(f("city", "string", default="?"))), f("bill_to", f"{NS}.Address")
        ),
    ),
    (
        order(f("ship_to", address())),
        order(f("ship_to", {**address(), "name": "D", "aliases": ["Address"]})),
    ),
    (
        order(f("c", [record("A", f("x", "int")), record("B", f("y", "string"))])),
        order(f("c", [record("B", f("y", "bytes")), record("A", f("x", "long"))])),
    ),
    (
        record("Node", f("v", "int"), f("next", ["null", f"{NS}.Node"], default=None)),
        record(
            "Node",
            f("v", "long"),
            f("next", ["null", f"{NS}.Node"], default=None),
            f("w", "double", default=0.0),
        ),
    ),
    (
        order(f("h", {"type": "fixed", "name": "Hash", "size": 4})),
        order(f("h", {"type": "fixed", "name": "Hash", "size": 4})),
    ),
    (order(f("at", "long")), order(f("at", {"type": "long", "logicalType": "timestamp-millis"}))),
]

INCOMPATIBLE_PAIRS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (order(f("a", "long")), order(f("a", "long"), f("b", "string"))),
    (order(f("a", "long")), order(f("a", "int"))),
    (order(f("a", "double")), order(f("a", "float"))),
    (order(f("a", "long")), order(f("a", "string"))),
    (order(f("a", ["null", "string"])), order(f("a", "string"))),
    (order(f("a", ["null", "string", "int"])), order(f("a", ["null", "string"]))),
    (order(f("s", enum(["A", "B", "C"]))), order(f("s", enum(["A", "B"])))),
    (
        order(f("t", {"type": "array", "items": "long"})),
        order(f("t", {"type": "array", "items": "int"})),
    ),
    (
        order(f("ship_to", address())),
        order(f("ship_to", address(f("city", "string")))),
    ),
    (
        order(f("h", {"type": "fixed", "name": "Hash", "size": 4})),
        order(f("h", {"type": "fixed", "name": "Hash", "size": 8})),
    ),
    (order(f("ship_to", address())), order(f("ship_to", {**address(), "name": "Destination"}))),
]


@pytest.mark.parametrize(("writer", "reader"), COMPATIBLE_PAIRS)
def test_fastavro_reads_what_is_judged_compatible(
    writer: dict[str, Any], reader: dict[str, Any]
) -> None:
    assert incompatibilities(writer, reader) == []
    assert _round_trips(writer, reader) == []


@pytest.mark.parametrize(("writer", "reader"), INCOMPATIBLE_PAIRS)
def test_fastavro_fails_on_what_is_judged_incompatible(
    writer: dict[str, Any], reader: dict[str, Any]
) -> None:
    assert incompatibilities(writer, reader) != []
    assert _round_trips(writer, reader) != []
