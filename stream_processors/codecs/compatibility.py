"""Whether records written with one Avro schema can be read with another: the resolution rules.

``incompatibilities(writer, reader)`` answers the question schema evolution turns on: can every
record written with ``writer`` be read as ``reader``? It follows the Avro specification's schema
resolution (the rules ``fastavro.schemaless_reader(body, writer, reader)`` applies record by
record), but decides for *every* possible record at once, and says why not:

- records are matched by name (unqualified, or a reader alias); their fields by name or by a
  reader field's alias. A writer field the reader lacks is skipped; a reader field the writer
  lacks takes its default, so it needs one;
- primitives must be equal or promotable: int to long, float or double; long to float or
  double; float to double; string to bytes and bytes to string. Logical types are annotations
  and do not change what is readable;
- a writer union is readable when each of its branches is readable by the reader (by some branch
  of it, if it is a union); a writer that is not a union needs a matching reader branch;
- an enum's writer symbols must all be reader symbols, unless the reader enum has a default;
- arrays and maps by their items and values; fixed by name and size.

Each problem is one message that names the field path from the top record, for example
``OrderPlaced.amount_cents: writer long cannot be read as string`` or
``OrderPlaced.coupon: reader field has no default and the writer lacks it``. Array items add
``[]`` to the path and map values ``{}``.

This module is pure: no Kafka.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fastavro.schema import parse_schema

from stream_processors.codecs.avro import AvroSchema

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "enum", "fixed", "error"})

#: What each primitive writer type may be read as besides itself.
PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}


def incompatibilities(
    writer: AvroSchema | Mapping[str, Any], reader: AvroSchema | Mapping[str, Any]
) -> list[str]:
    """Why records written with ``writer`` cannot be read as ``reader``; empty when they can."""
    w, r = _parsed(writer), _parsed(reader)
    checker = _Checker(_named_types(w), _named_types(r))
    checker.check(w, r, _short(_name_of(r) or _name_of(w) or "schema"))
    return checker.problems


def compatible(
    writer: AvroSchema | Mapping[str, Any], reader: AvroSchema | Mapping[str, Any]
) -> bool:
    return not incompatibilities(writer, reader)


def _parsed(schema: AvroSchema | Mapping[str, Any]) -> Any:
    if isinstance(schema, AvroSchema):
        return schema.parsed
    # parse_schema qualifies every name and leaves later uses of a named type as its full name.
    return parse_schema(dict(schema), _write_hint=False)


def _name_of(schema: Any) -> str | None:
    return str(schema["name"]) if isinstance(schema, dict) and "name" in schema else None


def _short(full_name: str) -> str:
    return full_name.rsplit(".", 1)[-1]


def _walk(schema: Any) -> Iterator[dict[str, Any]]:
    """Every named type defined in a parsed schema (definitions, not references)."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _walk(branch)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in NAMED:
            yield schema
        if kind in ("record", "error"):
            for field in schema.get("fields", ()):
                yield from _walk(field["type"])
        elif kind == "array":
            yield from _walk(schema["items"])
        elif kind == "map":
            yield from _walk(schema["values"])
        elif isinstance(kind, dict | list):  # {"type": {...}} wrapping another schema
            yield from _walk(kind)


def _named_types(schema: Any) -> dict[str, dict[str, Any]]:
    return {str(named["name"]): named for named in _walk(schema)}


def _describe(schema: Any) -> str:
    """A short human name for a (resolved) schema, as used in messages."""
    if isinstance(schema, list):
        return "[" + ", ".join(_describe(branch) for branch in schema) + "]"
    if isinstance(schema, str):
        return schema
    kind = schema.get("type")
    if kind in ("record", "error", "enum"):
        return f"{'record' if kind == 'error' else kind} {schema['name']}"
    if kind == "fixed":
        return f"fixed {schema['name']} (size {schema['size']})"
    if kind == "array":
        return f"array<{_describe(schema['items'])}>"
    if kind == "map":
        return f"map<{_describe(schema['values'])}>"
    return _describe(kind)


class _Checker:
    def __init__(self, writer_names: dict[str, Any], reader_names: dict[str, Any]) -> None:
        self.writer_names = writer_names
        self.reader_names = reader_names
        self.problems: list[str] = []
        # Pairs of named types being compared: recursive schemas compare each pair once.
        self._in_progress: set[tuple[str, str]] = set()

    # -- resolving references and annotations -------------------------------------------------

    def _resolve(self, schema: Any, names: dict[str, Any]) -> Any:
        """The schema itself: references looked up, ``{"type": "long", ...}`` unwrapped."""
        while True:
            if isinstance(schema, str):
                if schema in PRIMITIVES:
                    return schema
                named = names.get(schema)
                if named is None:  # parse_schema refuses unknown names; be safe all the same
                    return schema
                return named
            if isinstance(schema, dict) and schema.get("type") not in NAMED | {"array", "map"}:
                schema = schema["type"]  # a primitive with a logical type, or a wrapper
                continue
            return schema

    @staticmethod
    def _kind(schema: Any) -> str:
        if isinstance(schema, list):
            return "union"
        if isinstance(schema, str):
            return schema
        kind = str(schema["type"])
        return "record" if kind == "error" else kind

    # -- matching ---------------------------------------------------------------------------

    def _matches(self, writer: Any, reader: Any) -> bool:
        """Whether a (non-union) writer selects a (non-union) reader schema: same kind and name,
        or a promotion. Deeper differences are the business of ``check``."""
        w_kind, r_kind = self._kind(writer), self._kind(reader)
        if w_kind in PRIMITIVES:
            return w_kind == r_kind or r_kind in PROMOTIONS.get(w_kind, frozenset())
        if w_kind != r_kind:
            return False
        if w_kind in ("record", "enum", "fixed"):
            return self._same_name(writer, reader)
        return True  # array, map

    @staticmethod
    def _same_name(writer: Mapping[str, Any], reader: Mapping[str, Any]) -> bool:
        w_full, r_full = str(writer["name"]), str(reader["name"])
        if w_full == r_full or _short(w_full) == _short(r_full):
            return True
        namespace = r_full.rpartition(".")[0]
        for alias in reader.get("aliases", ()):
            qualified = alias if "." in alias or not namespace else f"{namespace}.{alias}"
            if w_full in (alias, qualified) or _short(w_full) == alias:
                return True
        return False

    def _branch_for(self, writer: Any, reader_union: list[Any]) -> Any | None:
        """The reader branch a writer schema resolves to: an exact kind first, then promotion."""
        branches = [self._resolve(b, self.reader_names) for b in reader_union]
        w_kind = self._kind(writer)
        for branch in branches:
            if self._kind(branch) == w_kind and self._matches(writer, branch):
                return branch
        for branch in branches:
            if self._matches(writer, branch):
                return branch
        return None

    # -- checking ---------------------------------------------------------------------------

    def check(self, writer: Any, reader: Any, path: str) -> None:
        writer = self._resolve(writer, self.writer_names)
        reader = self._resolve(reader, self.reader_names)
        if isinstance(writer, list):
            for branch in writer:
                resolved = self._resolve(branch, self.writer_names)
                self._check_branch(resolved, reader, path, f"writer branch {_describe(resolved)}")
            return
        self._check_branch(writer, reader, path, f"writer {_describe(writer)}")

    def _check_branch(self, writer: Any, reader: Any, path: str, what: str) -> None:
        """A writer that is not a union (``what`` says which), against any reader."""
        if isinstance(reader, list):
            branch = self._branch_for(writer, reader)
            if branch is None:
                self.problems.append(f"{path}: {what} cannot be read as any of {_describe(reader)}")
                return
            reader = branch
        if not self._matches(writer, reader):
            self.problems.append(f"{path}: {what} cannot be read as {_describe(reader)}")
            return
        kind = self._kind(writer)
        if kind == "record":
            self._check_record(writer, reader, path)
        elif kind == "enum":
            self._check_enum(writer, reader, path)
        elif kind == "fixed":
            if writer["size"] != reader["size"]:
                self.problems.append(f"{path}: {what} cannot be read as {_describe(reader)}")
        elif kind == "array":
            self.check(writer["items"], reader["items"], f"{path}[]")
        elif kind == "map":
            self.check(writer["values"], reader["values"], f"{path}{{}}")

    def _check_record(
        self, writer: Mapping[str, Any], reader: Mapping[str, Any], path: str
    ) -> None:
        pair = (str(writer["name"]), str(reader["name"]))
        if pair in self._in_progress:
            return
        self._in_progress.add(pair)
        try:
            written = {f["name"]: f for f in writer.get("fields", ())}
            for field in reader.get("fields", ()):
                where = f"{path}.{field['name']}"
                source = written.get(field["name"])
                if source is None:
                    source = next(
                        (written[a] for a in field.get("aliases", ()) if a in written), None
                    )
                if source is not None:
                    self.check(source["type"], field["type"], where)
                elif "default" not in field:
                    self.problems.append(
                        f"{where}: reader field has no default and the writer lacks it"
                    )
        finally:
            self._in_progress.discard(pair)

    def _check_enum(self, writer: Mapping[str, Any], reader: Mapping[str, Any], path: str) -> None:
        if reader.get("default") is not None:
            return
        known = set(reader["symbols"])
        missing = [s for s in writer["symbols"] if s not in known]
        if missing:
            listed = ", ".join(repr(s) for s in missing)
            self.problems.append(
                f"{path}: writer symbol(s) {listed} of enum {writer['name']} are not in the "
                f"reader's symbols, and the reader enum has no default"
            )


__all__ = ["PROMOTIONS", "compatible", "incompatibilities"]
