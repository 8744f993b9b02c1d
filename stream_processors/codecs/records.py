"""Typed Python records bound to Avro schemas: the base of every event, command, reply and state.

A record class names the Avro schema it is bound to; the schema file is the contract shared with
services in other languages, and the class must agree with it field for field. The check runs
when the class is created, so a mismatch fails at import with a message naming the field::

    class OrderPlaced(Event, schema="sagalog.examples.orders.OrderPlaced",
                      topic="orders.events", key="order_id"):
        order_id: str
        amount_cents: int

Subclasses are frozen dataclasses. Schemas are found by full name in, in order: the process-wide
catalog; every ``schemas/`` folder beside the module that declares the class or above it, nearest
first, up to and including the folder that holds its top-level package (so a subpackage may keep
schemas of its own next to the project's); the folders in ``SAGALOG_SCHEMA_PATH`` (separated by
``os.pathsep``); and Sagalog's own schemas, which ship inside the package.

A team that would rather have the class as the one source of the record declares it with
``derive=True``: the schema is then derived from the dataclass fields and type hints
(``stream_processors.codecs.derive`` has the rules), and ``sagas schemas export`` writes the
``.avsc``
files other languages use. A derived class may nest other record classes, in lists and maps too.

Records written with an older version of a schema are read as the current version by Avro
schema resolution (a new field takes its default). Where resolution is not enough (a field was
renamed, split, or changed meaning), an *upcaster* registered with ``register_upcaster`` turns
the old record, decoded as it was written, into the current shape (see its docstring).

This module is pure: no Kafka.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self, dataclass_transform

from fastavro.validation import ValidationError, validate

from stream_processors.codecs.avro import (
    AvroSchema,
    DecodeError,
    SchemaCatalog,
    SchemaError,
    decode,
    parse,
)
from stream_processors.codecs.derive import (
    DerivationError,
    derive_definition,
    field_specs,
    same_contract,
)
from stream_processors.codecs.frozen import fast_init
from stream_processors.codecs.schema_registry import HttpSchemaRegistry
from stream_processors.codecs.writer import ObjectWriter, Unwritable

#: The schemas of Sagalog itself (journal, snapshots, operator actions): package data.
BUILTIN_SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"

CATALOG = SchemaCatalog()
_loaded_directories: set[Path] = set()


def use_registry(url: str | None) -> None:
    """Write the Confluent wire format through the registry at ``url`` (None: single-object)."""
    CATALOG.registry = HttpSchemaRegistry(url) if url else None


use_registry(os.environ.get("SAGALOG_SCHEMA_REGISTRY_URL"))
_types_by_schema: dict[str, type[Record]] = {}


class DeclarationError(TypeError):
    """A record, saga or worker declared wrongly; raised at import, naming the problem."""


def load_schema_directory(directory: Path) -> None:
    """Add a folder of ``.avsc`` files to the process catalog (once per folder)."""
    directory = directory.resolve()
    if directory in _loaded_directories or not directory.is_dir():
        return
    _loaded_directories.add(directory)
    CATALOG.load_directory(directory)


def module_schema_folders(module_file: Path) -> list[Path]:
    """The ``schemas/`` folders beside ``module_file`` and above it, nearest first.

    The walk goes up through the module's packages and stops after the folder that holds the
    top-level package (the first folder without ``__init__.py``): the project's root, where a
    project usually keeps its ``schemas/``. It does not wander further up the file system.
    """
    folders = []
    for parent in module_file.resolve().parents:
        if (parent / "schemas").is_dir():
            folders.append(parent / "schemas")
        if not (parent / "__init__.py").is_file():
            break
    return folders


def schema_path_folders() -> list[Path]:
    """The folders named in ``SAGALOG_SCHEMA_PATH``, in order."""
    return [Path(p) for p in os.environ.get("SAGALOG_SCHEMA_PATH", "").split(os.pathsep) if p]


def schema_search_path(module: str) -> list[Path]:
    """Where a class declared in ``module`` looks for its schema, in order (see above)."""
    module_file = getattr(sys.modules.get(module), "__file__", None)
    candidates = module_schema_folders(Path(module_file)) if module_file else []
    candidates += schema_path_folders()
    candidates.append(BUILTIN_SCHEMAS)
    return candidates


def _search_schema(full_name: str, module: str) -> tuple[AvroSchema | None, list[Path]]:
    """The schema ``full_name`` from the catalog or the search path, and the folders searched."""
    if CATALOG.has(full_name):
        return CATALOG.current(full_name), []
    candidates = schema_search_path(module)
    for directory in candidates:
        load_schema_directory(directory)
        if CATALOG.has(full_name):
            return CATALOG.current(full_name), candidates
    return None, candidates


def _find_schema(full_name: str, module: str) -> AvroSchema:
    found, candidates = _search_schema(full_name, module)
    if found is not None:
        return found
    searched = ", ".join(str(c) for c in candidates)
    raise DeclarationError(
        f"no Avro schema named {full_name!r}: add {full_name.rpartition('.')[2]}.avsc to a "
        f"schemas/ folder of your project or to SAGALOG_SCHEMA_PATH (searched {searched})"
    )


_PRIMITIVES: dict[Any, frozenset[str]] = {
    str: frozenset({"string"}),
    int: frozenset({"int", "long"}),
    float: frozenset({"float", "double"}),
    bool: frozenset({"boolean"}),
    bytes: frozenset({"bytes"}),
    type(None): frozenset({"null"}),
}


def _avro_type_name(avro_type: Any) -> str:
    if isinstance(avro_type, str):
        return avro_type
    if isinstance(avro_type, list):
        return "[" + ", ".join(_avro_type_name(t) for t in avro_type) + "]"
    if isinstance(avro_type, dict):
        return str(avro_type.get("logicalType") or avro_type.get("type"))
    return repr(avro_type)


def _matches(annotation: Any, avro_type: Any) -> bool:
    """Whether a Python annotation and an Avro field type describe the same values."""
    if isinstance(avro_type, dict) and avro_type.get("type") in ("array", "map"):
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if avro_type["type"] == "array":
            return origin in (list, tuple) and bool(args) and _matches(args[0], avro_type["items"])
        return origin is dict and len(args) == 2 and _matches(args[1], avro_type["values"])
    if isinstance(avro_type, dict):
        return _matches(annotation, avro_type["type"])
    if isinstance(avro_type, list):  # a union: the annotation must be the same union
        members = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
        if len(members) != len(avro_type):
            return False
        return all(any(_matches(m, t) for m in members) for t in avro_type)
    return avro_type in _PRIMITIVES.get(annotation, frozenset())


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _check_fields(cls: type, schema: AvroSchema) -> None:
    hints = _type_hints(cls)
    own = {name: hint for name, hint in hints.items() if typing.get_origin(hint) is not ClassVar}
    avro_fields = {f["name"]: f for f in schema.definition["fields"]}
    where = f"{cls.__qualname__} (schema {schema.full_name})"
    for name in avro_fields:
        if name not in own:
            raise DeclarationError(f"{where}: field {name!r} is in the schema but not the class")
    for name, hint in own.items():
        if name not in avro_fields:
            raise DeclarationError(f"{where}: field {name!r} is in the class but not the schema")
        avro_type = avro_fields[name]["type"]
        if not _matches(hint, avro_type):
            raise DeclarationError(
                f"{where}: field {name!r} is {getattr(hint, '__name__', hint)} in the class "
                f"but {_avro_type_name(avro_type)} in the schema"
            )


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except NameError as error:
        raise DeclarationError(
            f"{cls.__qualname__}: cannot resolve an annotation ({error})"
        ) from error


def _record_definition(hint: Any) -> Mapping[str, Any] | None:
    if not (isinstance(hint, type) and issubclass(hint, Record)):
        return None
    if "__avro__" not in vars(hint):
        raise DerivationError(f"{hint.__qualname__} is a record class with no schema")
    return hint.__avro__.definition


def _as_datum(value: Any) -> Mapping[str, Any] | None:
    return value.to_avro() if isinstance(value, Record) else None


def _derive_schema(cls: type, full_name: str, doc: str | None) -> AvroSchema:
    """The schema derived from ``cls``: made current, unless a file defines it differently."""
    where = f"{cls.__qualname__} (derived schema {full_name})"
    try:
        definition = derive_definition(
            full_name,
            field_specs(cls, _type_hints(cls)),
            doc=inspect.cleandoc(doc) if doc else None,
            named=_record_definition,
            as_datum=_as_datum,
        )
        derived = parse(definition, f"derived from {cls.__module__}.{cls.__qualname__}")
    except (DerivationError, SchemaError) as error:
        raise DeclarationError(f"{where}: {error}") from None
    existing, _ = _search_schema(full_name, cls.__module__)
    if existing is None:
        return CATALOG.add(derived)
    if same_contract(existing.definition, definition):
        return existing
    raise DeclarationError(
        f"{where}: {existing.source or 'the catalog'} defines {full_name} differently; with "
        "derive=True the class is the source: export it again (sagas schemas export) or delete "
        "that file"
    )


#: A field's value -> its Avro datum, and back (for fields that hold records).
_Convert = Callable[[Any], Any]


def _converters(hint: Any) -> tuple[_Convert, _Convert] | None:
    """How to turn a field holding records into Avro data and back; None: as it is."""
    if isinstance(hint, type) and issubclass(hint, Record):
        record = hint

        def out(value: Any) -> Any:
            return value.to_avro() if isinstance(value, Record) else value

        def into(datum: Any) -> Any:
            return record.from_avro(datum) if isinstance(datum, Mapping) else datum

        return out, into
    args = typing.get_args(hint)
    if _is_union(hint):
        inner = next((_converters(a) for a in args if a is not type(None)), None)
        if inner is None:
            return None
        inner_out, inner_into = inner
        return (
            lambda v: None if v is None else inner_out(v),
            lambda d: None if d is None else inner_into(d),
        )
    origin = typing.get_origin(hint)
    if origin in (list, dict):
        items = _converters(args[-1])
        if items is None:
            return None
        item_out, item_into = items
        if origin is list:
            return (lambda v: [item_out(x) for x in v], lambda d: [item_into(x) for x in d])
        return (
            lambda v: {k: item_out(x) for k, x in v.items()},
            lambda d: {k: item_into(x) for k, x in d.items()},
        )
    return None


@dataclass_transform(frozen_default=True)
class Record:
    """A frozen dataclass bound to an Avro schema. Subclass with ``schema="full.Name"``, and
    ``derive=True`` to derive the schema from the class instead of reading it from a file."""

    __avro__: ClassVar[AvroSchema]
    __fields__: ClassVar[tuple[str, ...]]
    #: Fields that hold records (derived classes only): (name, to Avro, from Avro).
    __nested__: ClassVar[tuple[tuple[str, _Convert, _Convert], ...]] = ()
    #: Whether the schema was derived from the class (``derive=True``).
    __derived__: ClassVar[bool] = False
    #: Writes the record straight from its fields, without ``to_avro``'s dictionary: the
    #: schema's compiled writer (``stream_processors.codecs.writer``), unless the class converts
    #: nested records or overrides ``to_avro``. None: ``to_avro``, then the catalog's encoder.
    __object_writer__: ClassVar[ObjectWriter | None] = None

    def __init_subclass__(
        cls, *, schema: str | None = None, derive: bool = False, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if schema is None:  # an abstract intermediate such as Event or Command
            if derive:
                raise DeclarationError(f"{cls.__qualname__}: derive=True needs schema='full.Name'")
            return
        doc = cls.__dict__.get("__doc__")  # before dataclass() writes one of its own
        dataclasses.dataclass(frozen=True)(cls)
        fast_init(cls)  # records are made for every input: see stream_processors.codecs.frozen
        if derive:
            bound = _derive_schema(cls, schema, doc)
            hints = _type_hints(cls)
            cls.__nested__ = tuple(
                (f.name, *converters)
                for f in dataclasses.fields(typing.cast(Any, cls))
                if (converters := _converters(hints[f.name])) is not None
            )
        else:
            bound = _find_schema(schema, cls.__module__)
            _check_fields(cls, bound)
        cls.__derived__ = derive
        cls.__avro__ = bound
        plain = not cls.__nested__ and cls.to_avro is Record.to_avro
        cls.__object_writer__ = bound.object_writer if plain else None
        cls.__fields__ = bound.field_names
        previous = _types_by_schema.get(bound.full_name)
        if previous is not None and previous.__qualname__ != cls.__qualname__:
            raise DeclarationError(
                f"{cls.__qualname__}: schema {schema} is already bound to {previous.__qualname__}"
            )
        _types_by_schema[bound.full_name] = cls

    def to_avro(self) -> dict[str, Any]:
        datum = {name: getattr(self, name) for name in self.__fields__}
        for name, out, _ in self.__nested__:
            datum[name] = out(datum[name])
        return datum

    def encode(self) -> bytes:
        schema, write = self.__avro__, type(self).__object_writer__  # not bound as a method
        if write is not None:
            try:
                return write(CATALOG.header(schema), self)
            except (Unwritable, UnicodeError):
                pass  # fastavro writes it, or raises its own error
        return CATALOG.encode(schema, self.to_avro())

    @classmethod
    def from_avro(cls, datum: Mapping[str, Any]) -> Self:
        if cls.__nested__:
            datum = dict(datum)
            for name, _, into in cls.__nested__:
                if name in datum:
                    datum[name] = into(datum[name])
        return cls(**datum)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        record = decode_record(data)
        if not isinstance(record, cls):
            raise DecodeError(
                "wrong-type", f"expected {cls.__qualname__}, got {type(record).__qualname__}"
            )
        return record


class Event(Record):
    """A domain event: a fact a service publishes, to ``topic``, keyed by its ``key`` field."""

    __topic__: ClassVar[str | None] = None
    __key__: ClassVar[str | None] = None

    def __init_subclass__(
        cls, *, topic: str | None = None, key: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if topic is not None:
            cls.__topic__ = topic
        if key is not None:
            if key not in getattr(cls, "__fields__", ()):
                _types_by_schema.pop(cls.__avro__.full_name, None)  # the class never existed
                raise DeclarationError(f"{cls.__qualname__}: key field {key!r} is not a field")
            cls.__key__ = key

    def key(self) -> str | None:
        return None if self.__key__ is None else str(getattr(self, self.__key__))


class Command(Record):
    """An instruction to one service, sent to ``topic`` (the service's command topic)."""

    __topic__: ClassVar[str | None] = None

    def __init_subclass__(cls, *, topic: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if topic is not None:
            cls.__topic__ = topic


class State(Record):
    """A saga's own typed state, folded from its journal and kept in snapshots."""


def record_type(full_name: str) -> type[Record] | None:
    """The class bound to the schema ``full_name``, if any."""
    return _types_by_schema.get(full_name)


def record_classes() -> list[type[Record]]:
    """Every record class bound to a schema in this process, by full name."""
    return [_types_by_schema[name] for name in sorted(_types_by_schema)]


#: An upcaster: a record's fields as its old writer schema has them -> the current fields.
Upcaster = Callable[[dict[str, Any]], Mapping[str, Any]]
#: Upcasters by the schema's full name, then by writer fingerprint (None: any older writer).
_upcasters: dict[str, dict[bytes | None, Upcaster]] = {}


def register_upcaster(
    full_name: str, upcaster: Upcaster, writer_fingerprint: bytes | None = None
) -> None:
    """Read records of ``full_name`` written with an older schema through ``upcaster``.

    Avro resolution maps an old record onto the current schema field by field, by name: a new
    field takes its default, a field the current schema dropped is skipped. That loses data when
    a field was renamed or reshaped, because resolution has already dropped the old field by the
    time anyone could look at it. So an upcaster gets the record decoded *as it was written*
    (the writer schema's fields, no resolution) and returns the fields of the *current* schema;
    fields it leaves out take their declared defaults. It is not called for records written with
    the current schema. The result is checked against the current schema, and a failing or
    misfitting upcaster sends the record to the dead-letter topic with reason ``upcast-failed``.

    ``writer_fingerprint`` limits it to records written with that one schema version (its
    fingerprint: ``stream_processors.codecs.avro.parse(old_definition).fingerprint``); None applies
    it
    to every writer other than the current schema that has no upcaster of its own.

    Upcasters are pure functions of the old fields, like ``fold``: a journal replayed later goes
    through them again and must give the same state. Registration is process-wide (a schema has
    one current shape per process); registering a different function for the same schema and
    writer is a ``DeclarationError``. Sagas usually declare theirs with ``upcasters = {...}``.
    """
    table = _upcasters.setdefault(full_name, {})
    existing = table.get(writer_fingerprint)
    if existing is not None and _function_name(existing) != _function_name(upcaster):
        which = "any older writer" if writer_fingerprint is None else writer_fingerprint.hex()
        raise DeclarationError(
            f"two upcasters for {full_name} ({which}): "
            f"{_function_name(existing)} and {_function_name(upcaster)}"
        )
    table[writer_fingerprint] = upcaster


def _function_name(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", "?")
    return f"{module}.{getattr(function, '__qualname__', repr(function))}"


def registered_upcaster(full_name: str, writer_fingerprint: bytes) -> Upcaster | None:
    """The upcaster that reads records of ``full_name`` written with that writer, if any."""
    table = _upcasters.get(full_name)
    if table is None:
        return None
    return table.get(writer_fingerprint) or table.get(None)


def _upcaster_for(writer: AvroSchema) -> tuple[AvroSchema, Upcaster] | None:
    reader = CATALOG.reader_for(writer)
    if reader.fingerprint == writer.fingerprint:
        return None
    upcaster = registered_upcaster(reader.full_name, writer.fingerprint)
    return None if upcaster is None else (reader, upcaster)


def _upcast(data: bytes, reader: AvroSchema, upcaster: Upcaster) -> dict[str, Any]:
    writer, datum = decode(CATALOG, data, as_written=True)
    name = f"{reader.full_name} (written with {writer.fingerprint.hex()})"
    try:
        result = dict(upcaster(datum))
    except Exception as error:
        raise DecodeError(
            "upcast-failed", f"{name}: {_function_name(upcaster)}: {type(error).__name__}: {error}"
        ) from error
    unknown = sorted(set(result) - set(reader.field_names))
    if unknown:
        raise DecodeError(
            "upcast-failed", f"{name}: the upcaster returned fields not in the schema: {unknown}"
        )
    try:
        validate(result, reader.parsed, raise_errors=True)
    except ValidationError as error:
        raise DecodeError("upcast-failed", f"{name}: the upcaster's result: {error}") from error
    return result


def decode_record(data: bytes | None) -> Record:
    """Decode framed Avro into an instance of the class bound to its (reader) schema.

    The writer schema is resolved onto the current one, or, if an upcaster is registered for
    it, the record is decoded as written and upcast (see ``register_upcaster``).
    """
    upcasting = None
    if _upcasters:
        upcasting = _upcaster_for(CATALOG.writer_of(data)[0])
    if upcasting is not None:
        reader = upcasting[0]
        assert data is not None  # writer_of raised for None
        datum = _upcast(data, *upcasting)
    else:
        reader, datum = decode(CATALOG, data)
    cls = _types_by_schema.get(reader.full_name)
    if cls is None:
        raise DecodeError("unbound-schema", f"no record class is bound to {reader.full_name}")
    try:
        return cls.from_avro(datum)
    except TypeError as error:
        raise DecodeError("wrong-shape", f"{reader.full_name}: {error}") from error


__all__ = [
    "CATALOG",
    "Command",
    "DeclarationError",
    "Event",
    "Record",
    "SchemaError",
    "State",
    "Upcaster",
    "decode_record",
    "load_schema_directory",
    "record_classes",
    "record_type",
    "register_upcaster",
    "registered_upcaster",
]
