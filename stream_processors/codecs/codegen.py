"""What the generated Avro writer and reader share: the source being generated, the schemas
neither covers, Avro's integer ranges, and turning the source into a function. Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: The half-open ranges of Avro's int and long.
RANGES = {"int": (-(1 << 31), 1 << 31), "long": (-(1 << 63), 1 << 63)}
#: The primitive types both cover (float and double are left to fastavro).
PRIMITIVES = ("null", "boolean", "int", "long", "string", "bytes")


class Unsupported(Exception):
    """A schema the generated code does not cover: fastavro handles it."""


class Source:
    """The lines of a generated function, and fresh variable names for nested values."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._names = 0

    def name(self) -> str:
        self._names += 1
        return f"v{self._names}"

    def add(self, depth: int, *lines: str) -> None:
        self.lines.extend("    " * depth + line for line in lines)


def kind_of(schema: Any) -> str:
    """The kind of a (sub)schema the generated code covers: a primitive's name, ``optional``
    (a union of null and one primitive), ``record``, ``array`` or ``map``; raises
    ``Unsupported`` for any other (enums, fixed, floats, logical types, named references,
    wider unions)."""
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return schema
        raise Unsupported(schema)
    if isinstance(schema, list):
        if len(schema) != 2 or "null" not in schema:
            raise Unsupported(str(schema))
        other = schema[1 - schema.index("null")]
        if not isinstance(other, str) or other == "null" or other not in PRIMITIVES:
            raise Unsupported(str(schema))
        return "optional"
    if not isinstance(schema, Mapping) or "logicalType" in schema:
        raise Unsupported(str(schema))
    kind = schema.get("type")
    if kind in ("record", "array", "map"):
        return str(kind)
    if isinstance(kind, str) and kind in PRIMITIVES:
        return kind
    raise Unsupported(str(schema))


def generated(
    emit: Callable[[Source], None],
    head: Sequence[str],
    tail: Sequence[str],
    label: str,
    namespace: dict[str, Any],
) -> Any:
    """The function whose source is ``head``, the lines ``emit`` adds (inside the ``try`` that
    ``head`` opens), then ``tail``, compiled under ``label`` (what tracebacks and profiles show)
    with ``namespace`` as its globals; None when ``emit`` meets a schema it does not cover."""
    source = Source()
    try:
        emit(source)
    except (Unsupported, KeyError, TypeError):
        return None
    body = source.lines or ["        pass  # a record with no fields: no bytes of its own"]
    code = "\n".join([*head, *body, *tail])
    exec(compile(code, label, "exec"), namespace)
    return namespace[head[0].split("def ", 1)[1].split("(", 1)[0]]
