"""Event classes made from an Avro schema alone, for definitions that have no Python code.

A declarative definition may start from an event on a service's topic (its ``StartOn``): the
team publishes that event with its own Avro schema (an ``.avsc`` in a ``schemas/`` folder), and
no Python class declares it. ``event_class(full_name, topic, key)`` returns the class bound to
the schema if the process has one, else makes one: a frozen dataclass whose annotations are the
schema's field types (``string`` → ``str``, ``["null", "long"]`` → ``int | None``, arrays and
maps of those), so it binds, checks and encodes exactly as a declared class does. A field type
the mapping does not cover (a nested record, an enum, a fixed) is refused with its name: declare
such an event as a Python class instead.
"""

from __future__ import annotations

import copy
import dataclasses
import types
from collections.abc import Mapping
from typing import Any

from stream_processors.codecs.records import (
    CATALOG,
    DeclarationError,
    Event,
    record_type,
)

_PRIMITIVE: Mapping[str, Any] = {
    "string": str,
    "int": int,
    "long": int,
    "float": float,
    "double": float,
    "boolean": bool,
    "bytes": bytes,
}


def annotation_of(avro_type: Any, where: str) -> Any:
    """The Python annotation of an Avro field type (raises ``DeclarationError``)."""
    if isinstance(avro_type, str) and avro_type in _PRIMITIVE:
        return _PRIMITIVE[avro_type]
    if isinstance(avro_type, list):
        members = [t for t in avro_type if t != "null"]
        if len(members) == 1 and len(avro_type) == 2:
            return annotation_of(members[0], where) | None
    if isinstance(avro_type, dict):
        kind = avro_type.get("type")
        if kind == "array":
            return list[annotation_of(avro_type["items"], where)]  # type: ignore[misc]
        if kind == "map":
            return dict[str, annotation_of(avro_type["values"], where)]  # type: ignore[misc]
        if isinstance(kind, str) and kind in _PRIMITIVE and "logicalType" not in avro_type:
            return _PRIMITIVE[kind]
    raise DeclarationError(
        f"{where}: the Avro type {avro_type!r} has no plain Python form here: declare the event "
        "as a Python class (sagas.Event) instead"
    )


def _copier(default: Any) -> Any:
    def fresh() -> Any:
        return copy.deepcopy(default)

    return fresh


def event_class(full_name: str, topic: str, key: str) -> type[Event]:
    """The event class bound to schema ``full_name`` (declared, or made from the schema), read
    from ``topic`` and keyed by field ``key``. The schema must be in the catalog (loaded from a
    ``schemas/`` folder or ``SAGALOG_SCHEMA_PATH``)."""
    declared = record_type(full_name)
    if declared is not None:
        if not issubclass(declared, Event):
            raise DeclarationError(f"{full_name} is bound to {declared.__qualname__}, not an Event")
        return declared
    if not CATALOG.has(full_name):
        raise DeclarationError(
            f"no Avro schema named {full_name!r}: add {full_name.rpartition('.')[2]}.avsc to a "
            "schemas/ folder beside the definition, or to SAGALOG_SCHEMA_PATH"
        )
    definition = CATALOG.current(full_name).definition
    required: dict[str, Any] = {}
    optional: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for field in definition["fields"]:
        annotation = annotation_of(field["type"], f"{full_name}.{field['name']}")
        if "default" in field:
            optional[field["name"]] = annotation
            defaults[field["name"]] = field["default"]
        else:
            required[field["name"]] = annotation

    def body(namespace: dict[str, Any]) -> None:
        namespace["__annotations__"] = {**required, **optional}  # defaults last: dataclass
        for field_name, default in defaults.items():  # a list or map default: fresh each time
            mutable = isinstance(default, list | dict)
            namespace[field_name] = (
                dataclasses.field(default_factory=_copier(default)) if mutable else default
            )
        namespace["__module__"] = __name__
        namespace["__doc__"] = definition.get("doc") or f"{full_name}, made from its schema."

    name = full_name.rpartition(".")[2]
    made = types.new_class(name, (Event,), {"schema": full_name, "topic": topic, "key": key}, body)
    return made
