"""Avro schemas derived from record classes: the Python class as the one source of a record.

A team that owns its contract as ``.avsc`` files binds each class to its file, and the class is
checked against the file at import (``stream_processors.codecs.records``). A team that would rather
write the class once opts in with ``derive=True``::

    class OrderPlaced(Event, schema="shop.OrderPlaced", derive=True,
                      topic="orders.events", key="order_id"):
        \"\"\"A customer placed an order.\"\"\"      # becomes the schema's "doc"
        order_id: str
        amount_cents: int
        coupon: str | None = None

and the schema is derived from the dataclass fields, in their order, and their type hints:

=========================  ============================================================
Python                      Avro
=========================  ============================================================
``str``                     ``"string"``
``int``                     ``"long"``
``float``                   ``"double"``
``bool``                    ``"boolean"``
``bytes``                   ``"bytes"``
``X | None``                ``["null", X]`` with default null (with a default other than
                            None: ``[X, "null"]`` and that default)
``list[X]``                 ``{"type": "array", "items": X}``
``dict[str, X]``            ``{"type": "map", "values": X}``
a ``Record`` class          its named record, defined where first used, then by full name
=========================  ============================================================

A field's default (or ``default_factory``) becomes its Avro default (bytes as Avro's JSON
string of code points, a record as its fields). Anything else (``Any``, ``datetime``, a union of
two types, ``dict[int, X]``, a default that is none of these) is refused when the class is
created, with a ``DeclarationError`` naming the class and the field.

``contract_json`` writes a schema as the ``.avsc`` text ``sagas schemas export`` writes (keys in
a fixed order, two-space indent), and ``same_contract`` compares two definitions as the wire
sees them plus their defaults (docs aside).

This module is pure: no Kafka, no I/O.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastavro.schema import parse_schema

SUPPORTED = "str, int, float, bool, bytes, X | None, list[X], dict[str, X] and record classes"

PRIMITIVES: dict[Any, str] = {
    str: "string",
    int: "long",
    float: "double",
    bool: "boolean",
    bytes: "bytes",
}

#: No default: ``dataclasses.MISSING``.
MISSING: Any = dataclasses.MISSING

#: A record class's Avro definition, or None when ``hint`` is not a record class.
NamedSchema = Callable[[Any], Mapping[str, Any] | None]
#: A record instance as Avro fields (for defaults), or None when ``value`` is not a record.
AsDatum = Callable[[Any], Mapping[str, Any] | None]


class DerivationError(TypeError):
    """A field that cannot be described in Avro; the message names the field."""


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """A dataclass field as derivation sees it: its name, type hint and default (or MISSING)."""

    name: str
    hint: Any
    default: Any = MISSING


def field_specs(cls: Any, hints: Mapping[str, Any]) -> list[FieldSpec]:
    """The dataclass fields of ``cls`` in order, with their resolved hints and defaults."""
    specs = []
    for field in dataclasses.fields(cls):
        default, factory = field.default, field.default_factory
        if default is MISSING and callable(factory):
            default = factory()
        specs.append(FieldSpec(field.name, hints[field.name], default))
    return specs


def derive_definition(
    full_name: str,
    fields: Sequence[FieldSpec],
    *,
    doc: str | None = None,
    named: NamedSchema,
    as_datum: AsDatum,
) -> dict[str, Any]:
    """The Avro record definition of ``full_name`` with ``fields`` (see the module's table)."""
    namespace, _, name = full_name.rpartition(".")
    deriving = _Deriving(named, as_datum, {full_name})
    definition: dict[str, Any] = {"type": "record", "name": name}
    if namespace:
        definition["namespace"] = namespace
    if doc:
        definition["doc"] = doc
    definition["fields"] = [deriving.field(spec) for spec in fields]
    return definition


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _describe(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__qualname__
    return str(hint).replace("typing.", "")


class _Deriving:
    def __init__(self, named: NamedSchema, as_datum: AsDatum, defined: set[str]) -> None:
        self.named = named
        self.as_datum = as_datum
        self.defined = defined  # full names already defined in the schema being derived

    def field(self, spec: FieldSpec) -> dict[str, Any]:
        hint, default = spec.hint, spec.default
        optional = _is_union(hint) and type(None) in typing.get_args(hint)
        avro_type = self.type(hint, spec.name)
        result: dict[str, Any] = {"name": spec.name, "type": avro_type}
        if optional and default is not MISSING and default is not None:
            # A union's default must be of its first branch: put the default's type first.
            result["type"] = [*avro_type[1:], "null"]
        if default is None and not optional:
            raise DerivationError(
                f"field {spec.name!r}: default None, but {_describe(hint)} "
                "does not allow None (write it X | None)"
            )
        if optional and default is MISSING:
            result["default"] = None
        elif default is not MISSING:
            result["default"] = self.default(default, spec.name)
        return result

    def type(self, hint: Any, path: str) -> Any:
        primitive = PRIMITIVES.get(hint) if isinstance(hint, type) else None
        if primitive is not None:
            return primitive
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if _is_union(hint):
            others = [a for a in args if a is not type(None)]
            if len(others) == 1 and len(args) == 2:
                return ["null", self.type(others[0], path)]
        elif origin is list and len(args) == 1:
            return {"type": "array", "items": self.type(args[0], f"{path}[]")}
        elif origin is dict and len(args) == 2 and args[0] is str:
            return {"type": "map", "values": self.type(args[1], f"{path}{{}}")}
        else:
            try:
                definition = self.named(hint)
            except DerivationError as error:
                raise DerivationError(f"field {path!r}: {error}") from None
            if definition is not None:
                return self.record(definition)
        raise DerivationError(
            f"field {path!r} is {_describe(hint)}: a derived schema takes {SUPPORTED}"
        )

    def record(self, definition: Mapping[str, Any]) -> Any:
        """A nested record: its definition the first time, its full name after that (and the
        same for every named type inside it)."""
        return self._inline(definition, "")

    def _inline(self, schema: Any, namespace: str) -> Any:
        if isinstance(schema, list):
            return [self._inline(branch, namespace) for branch in schema]
        if not isinstance(schema, Mapping):
            return schema
        kind = schema.get("type")
        result = plain(schema)
        if kind in ("record", "error", "enum", "fixed"):
            full_name = _full_name(schema, namespace)
            if full_name in self.defined:
                return full_name
            self.defined.add(full_name)
            namespace = full_name.rpartition(".")[0]
            result["name"], result["namespace"] = full_name.rpartition(".")[2], namespace
            if not namespace:
                del result["namespace"]
        if "fields" in schema:
            result["fields"] = [
                {**plain(f), "type": self._inline(f["type"], namespace)} for f in schema["fields"]
            ]
        for key in ("items", "values"):
            if key in schema:
                result[key] = self._inline(schema[key], namespace)
        if isinstance(kind, Mapping | list):
            result["type"] = self._inline(kind, namespace)
        return result

    def default(self, value: Any, path: str) -> Any:
        if value is None or isinstance(value, str | bool | int | float):
            return value
        if isinstance(value, bytes):
            return value.decode("latin-1")  # Avro's JSON encoding of bytes: one code point each
        if isinstance(value, list | tuple):
            return [self.default(v, f"{path}[]") for v in value]
        if isinstance(value, Mapping):
            return {str(k): self.default(v, f"{path}{{}}") for k, v in value.items()}
        datum = self.as_datum(value)
        if datum is not None:
            return {k: self.default(v, f"{path}.{k}") for k, v in datum.items()}
        raise DerivationError(
            f"field {path!r}: default {value!r} cannot be written as an Avro default"
        )


def _full_name(definition: Mapping[str, Any], namespace: str) -> str:
    name = str(definition["name"])
    if "." in name:
        return name
    own = definition.get("namespace", namespace)
    return f"{own}.{name}" if own else name


def plain(value: Any) -> Any:
    """A schema definition as plain JSON types (definitions may hold any Mapping)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


# -- the .avsc text -------------------------------------------------------------------------------

#: Key order in a written schema: these first, in this order, then any others by name.
_SCHEMA_KEYS = (
    "type",
    "name",
    "namespace",
    "aliases",
    "doc",
    "symbols",
    "default",
    "size",
    "items",
    "values",
    "logicalType",
    "fields",
)
_FIELD_KEYS = ("name", "type", "default", "order", "aliases", "doc")


def _ordered(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_ordered(branch) for branch in schema]
    if not isinstance(schema, Mapping):
        return schema
    result = {}
    for key in _by_preference(schema, _SCHEMA_KEYS):
        value = schema[key]
        if key == "fields":
            result[key] = [_ordered_field(f) for f in value]
        elif key in ("type", "items", "values"):
            result[key] = _ordered(value)
        else:
            result[key] = plain(value)
    return result


def _ordered_field(field: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: _ordered(field[key]) if key == "type" else plain(field[key])
        for key in _by_preference(field, _FIELD_KEYS)
    }


def _by_preference(mapping: Mapping[str, Any], preferred: Sequence[str]) -> list[str]:
    first = [key for key in preferred if key in mapping]
    return first + sorted(key for key in mapping if key not in preferred)


def contract_json(definition: Mapping[str, Any]) -> str:
    """The ``.avsc`` text of a schema: keys in a fixed order, two-space indent, final newline."""
    return json.dumps(_ordered(definition), indent=2, ensure_ascii=False) + "\n"


def _without_docs(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_without_docs(s) for s in schema]
    if isinstance(schema, Mapping):
        return {k: _without_docs(v) for k, v in schema.items() if k != "doc"}
    return schema


def same_contract(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two definitions describe the same records and defaults (docs and key order aside;
    names compared fully qualified)."""

    def semantic(definition: Mapping[str, Any]) -> Any:
        return _without_docs(parse_schema(plain(definition), _write_hint=False))

    return bool(semantic(a) == semantic(b))


__all__ = [
    "SUPPORTED",
    "DerivationError",
    "FieldSpec",
    "contract_json",
    "derive_definition",
    "field_specs",
    "plain",
    "same_contract",
]
