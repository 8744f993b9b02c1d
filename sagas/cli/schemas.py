"""The ``sagas schemas`` commands: foreign writers' schemas on the history, and record classes
exported as ``.avsc`` files.

    sagas schemas register shipping-v2.avsc --topic shipping.events [--module M] [--force]
    sagas schemas list shipping.events [--json]
    sagas schemas forget shipping.events 3f0c9a1b2c3d4e5f [--module M] [--force]
    sagas schemas export examples.order_fulfillment.messages [--out DIR | --check DIR]

A record names its writer schema by fingerprint only, and Sagalog reads it only if that schema
is recorded on ``_sagalog.schemas`` (``stream_processors.engine.schema_history``). Sagalog's own
writers record theirs; a producer in another language does not, so its records are
dead-lettered as ``unknown-schema`` until ``register`` records its schema, marked ``foreign``
(a processor already running reads them from then on: it follows the history once it met a
fingerprint the history lacked).

``register`` first checks that the readers of the topic can read the new writer
(``stream_processors.codecs.compatibility``), and refuses, naming the field, when one cannot. The
readers' schema of the same full name is the one in your schema folders (``./schemas``,
``$SAGALOG_SCHEMA_PATH``) or classes (``--module``, derived classes included) and the latest one
recorded for the topic by Sagalog itself (not by ``register``). When no reader is known it
refuses too (a mistyped name or topic is the likely cause), unless ``--force``: then it records
the schema with a warning.

``forget`` writes a tombstone for one (topic, fingerprint): processes that load the history
afterwards no longer know that writer, so records already written with it are dead-lettered as
``unknown-schema`` by them (a processor already running keeps what it learned until it
restarts). It refuses to forget a schema that is the current schema of a record class or schema
file here (Sagalog writes and reads it), unless ``--force``.

``export`` writes one ``.avsc`` file per record class declared in a module (``<Name>.avsc``,
``stream_processors.codecs.derive.contract_json``); with ``--check DIR`` it writes nothing and
exits 1
listing every file of DIR that differs from the classes (for a CI job).
"""

from __future__ import annotations

import getpass
import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sagas.cli.app import Bootstrap, app, fail, load_module
from stream_processors.codecs.avro import AvroSchema, SchemaCatalog, SchemaError, parse
from stream_processors.codecs.compatibility import incompatibilities
from stream_processors.codecs.derive import contract_json
from stream_processors.codecs.records import (
    BUILTIN_SCHEMAS,
    CATALOG,
    Record,
    load_schema_directory,
    record_type,
    schema_path_folders,
)
from stream_processors.engine.schema_history import (
    SCHEMAS_TOPIC,
    RecordedSchema,
    SchemaHistory,
    SchemaHistoryError,
)

schemas_app = typer.Typer(
    no_args_is_help=True,
    help="Record foreign writers' schemas for a topic; export record classes as .avsc files.",
)
app.add_typer(schemas_app, name="schemas")

Topic = Annotated[str, typer.Argument(help="The topic the schema's records are written to")]
Modules = Annotated[
    list[str] | None,
    typer.Option(
        "--module",
        help="A module whose record classes are readers' schemas too (repeatable)",
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Go ahead where the command would refuse")]


def _history(bootstrap: str | None) -> SchemaHistory:
    history = SchemaHistory(bootstrap, catalog=SchemaCatalog())
    try:
        history.load()
    except SchemaHistoryError as error:
        raise fail(error) from error
    return history


def _load_local_schemas(modules: list[str] | None) -> None:
    """Make this project's current schemas known: its schema folders and record classes."""
    try:
        for folder in [Path("schemas"), *schema_path_folders(), BUILTIN_SCHEMAS]:
            load_schema_directory(folder)
    except SchemaError as error:
        raise fail(error) from error
    for module in modules or []:
        load_module(module)


def _local_current(full_name: str) -> AvroSchema | None:
    return CATALOG.current(full_name) if CATALOG.has(full_name) else None


def _latest_own(history: SchemaHistory, topic: str, full_name: str) -> RecordedSchema | None:
    """The latest schema named ``full_name`` recorded for ``topic`` by Sagalog itself."""
    own = [
        entry
        for entry in history.entries(topic)
        if entry.schema.full_name == full_name and not entry.foreign
    ]
    return max(own, key=lambda e: e.recorded_at_ms or 0, default=None)


def readers_of(history: SchemaHistory, topic: str, full_name: str) -> list[tuple[AvroSchema, str]]:
    """The readers' schemas of ``full_name`` on ``topic``, each with where it was found."""
    readers: dict[bytes, tuple[AvroSchema, str]] = {}
    local = _local_current(full_name)
    if local is not None:
        bound = record_type(full_name)
        where = f"class {bound.__module__}.{bound.__qualname__}" if bound else local.source
        readers[local.fingerprint] = (local, where or "this project")
    recorded = _latest_own(history, topic, full_name)
    if recorded is not None:
        by = recorded.recorded_by or "Sagalog"
        where = f"recorded for {topic} by {by} ({recorded.schema.fingerprint.hex()})"
        readers.setdefault(recorded.schema.fingerprint, (recorded.schema, where))
    return list(readers.values())


def _read_schema_file(path: Path) -> AvroSchema:
    try:
        definition = json.loads(path.read_text())
    except OSError as error:
        raise fail(SchemaError(f"{path}: {error.strerror or error}")) from error
    except json.JSONDecodeError as error:
        raise fail(SchemaError(f"{path}: not valid JSON ({error})")) from error
    if not isinstance(definition, dict):
        raise fail(SchemaError(f"{path}: not a record schema"))
    try:
        return parse(definition, str(path))
    except SchemaError as error:
        raise fail(error) from error


def _who() -> str:
    try:
        user = getpass.getuser()
    except OSError:
        user = "?"
    return f"{user}@{socket.gethostname()}"


def _warn(text: str) -> None:
    typer.secho(f"warning: {text}", err=True, fg=typer.colors.YELLOW)


def _fingerprint_lines(schema: AvroSchema) -> None:
    typer.echo(f"fingerprint {schema.fingerprint.hex()}")
    typer.echo(
        f"header      {schema.header.hex()} (10 bytes: C3 01, then the CRC-64-AVRO fingerprint "
        "little-endian; Java's BinaryMessageEncoder writes it)"
    )


@schemas_app.command("register")
def register(
    file: Annotated[Path, typer.Argument(help="The writer's schema, an .avsc file")],
    topic: Annotated[str, typer.Option(help="The topic the producer writes it to")],
    module: Modules = None,
    force: Force = False,
    by: Annotated[
        str | None, typer.Option(help="Who registers it, kept on the history [user@host]")
    ] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Record a foreign producer's writer schema for a topic, once its readers can read it."""
    writer = _read_schema_file(file)
    _load_local_schemas(module)
    history = _history(bootstrap)
    name = writer.full_name
    readers = readers_of(history, topic, name)
    if not readers:
        why = (
            f"no reader of {name} is known for {topic}: none in ./schemas, $SAGALOG_SCHEMA_PATH "
            f"or --module classes, none recorded for the topic by Sagalog"
        )
        if not force:
            raise fail(SchemaError(f"{why}; check the name and topic, or pass --force"))
        _warn(f"{why}; recording it unchecked (--force)")
    for reader, where in readers:
        problems = incompatibilities(writer, reader)
        if problems:
            raise fail(
                SchemaError(
                    f"{file}: the readers of {topic} cannot read {name} written with it "
                    f"(reader: {where}): {'; '.join(problems)}"
                )
            )
    who = f"sagas schemas register by {by or _who()}"
    try:
        produced = history.record(topic, writer, recorded_by=who, foreign=True)
    except SchemaHistoryError as error:
        raise fail(error) from error
    verb = "recorded" if produced else "already recorded"
    typer.echo(f"{verb} {name} for {topic} in {SCHEMAS_TOPIC}")
    _fingerprint_lines(writer)


def format_time(ms: int | None) -> str:
    if ms is None:
        return "?"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _entry_json(entry: RecordedSchema) -> dict[str, Any]:
    return {
        "topic": entry.topic,
        "full_name": entry.schema.full_name,
        "fingerprint": entry.schema.fingerprint.hex(),
        "header": entry.schema.header.hex(),
        "recorded_by": entry.recorded_by,
        "recorded_at_ms": entry.recorded_at_ms,
        "foreign": entry.foreign,
        "definition": json.loads(contract_json(entry.schema.definition)),
    }


@schemas_app.command("list")
def list_(
    topic: Topic,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
    bootstrap: Bootstrap = None,
) -> None:
    """Show the writer schemas recorded for a topic: name, fingerprint, who and when."""
    entries = _history(bootstrap).entries(topic)
    if as_json:
        typer.echo(json.dumps([_entry_json(e) for e in entries], indent=2))
        return
    if not entries:
        typer.echo(f"no schemas recorded for {topic} in {SCHEMAS_TOPIC}")
        return
    table = Table(title=f"{topic}: {len(entries)} writer schemas")
    for column in ("full name", "fingerprint", "recorded by", "recorded at (UTC)", "foreign"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(
            entry.schema.full_name,
            entry.schema.fingerprint.hex(),
            entry.recorded_by or "?",
            format_time(entry.recorded_at_ms),
            "yes" if entry.foreign else "no",
        )
    Console(width=160).print(table)


def parse_fingerprint(text: str) -> bytes:
    """A fingerprint as 16 hex digits, or as the 10-byte header (``c301`` and 16 more)."""
    cleaned = text.strip().lower().removeprefix("0x")
    if len(cleaned) == 20 and cleaned.startswith("c301"):
        cleaned = cleaned[4:]
    try:
        fingerprint = bytes.fromhex(cleaned)
    except ValueError:
        fingerprint = b""
    if len(fingerprint) != 8:
        raise typer.BadParameter(
            f"{text!r} is not a fingerprint (16 hex digits)", param_hint="FINGERPRINT"
        )
    return fingerprint


@schemas_app.command("forget")
def forget(
    topic: Topic,
    fingerprint: Annotated[str, typer.Argument(help="The schema's fingerprint (16 hex digits)")],
    module: Modules = None,
    force: Force = False,
    bootstrap: Bootstrap = None,
) -> None:
    """Forget a writer schema of a topic (registered by mistake): a tombstone on the history.

    Records already written with it become unreadable to processes that load the history
    afterwards: they are dead-lettered as unknown-schema.
    """
    fp = parse_fingerprint(fingerprint)
    history = _history(bootstrap)
    entry = next((e for e in history.entries(topic) if e.schema.fingerprint == fp), None)
    if entry is None:
        raise fail(
            SchemaHistoryError(
                f"no schema with fingerprint {fp.hex()} is recorded for {topic} "
                f"(see sagas schemas list {topic})"
            )
        )
    name = entry.schema.full_name
    _load_local_schemas(module)
    current = _local_current(name)
    if current is not None and current.fingerprint == fp:
        bound = record_type(name)
        what = f"class {bound.__module__}.{bound.__qualname__}" if bound else current.source
        why = f"{name} {fp.hex()} is the current schema of {what}: Sagalog writes and reads it"
        if not force:
            raise fail(SchemaError(f"{why}; pass --force to forget it all the same"))
        _warn(why)
    if not entry.foreign:
        _warn(f"{name} {fp.hex()} was recorded by {entry.recorded_by or 'Sagalog'}, not register")
    try:
        history.forget(topic, fp)
    except SchemaHistoryError as error:
        raise fail(error) from error
    typer.echo(
        f"forgot {name} {fp.hex()} for {topic}: records written with it are dead-lettered as "
        "unknown-schema by processes that load the history from now on"
    )


# -- export -------------------------------------------------------------------------------------


def exported_files(module_name: str) -> dict[str, str]:
    """The ``.avsc`` files ``export`` writes for a module: file name -> text, by file name."""
    module = load_module(module_name)
    classes = sorted(
        (
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, Record)
            and "__avro__" in vars(value)
            and value.__module__ == module.__name__
        ),
        key=lambda cls: cls.__avro__.full_name,
    )
    if not classes:
        raise fail(SchemaError(f"module {module_name} declares no record classes"))
    files: dict[str, str] = {}
    owners: dict[str, str] = {}
    for cls in classes:
        name = f"{cls.__avro__.full_name.rpartition('.')[2]}.avsc"
        if name in files:
            raise fail(
                SchemaError(
                    f"{owners[name]} and {cls.__avro__.full_name} would both be {name}: "
                    "export them from separate modules"
                )
            )
        owners[name] = cls.__avro__.full_name
        files[name] = contract_json(cls.__avro__.definition)
    return dict(sorted(files.items()))


def drifted(files: dict[str, str], folder: Path) -> list[str]:
    """Which of ``files`` are missing from ``folder`` or say something else there."""
    found = []
    for name, text in files.items():
        path = folder / name
        try:
            on_disk = json.loads(path.read_text())
        except FileNotFoundError:
            found.append(f"{path}: missing")
            continue
        except (OSError, json.JSONDecodeError) as error:
            found.append(f"{path}: unreadable ({error})")
            continue
        if on_disk != json.loads(text):
            found.append(f"{path}: differs from the class")
    return found


@schemas_app.command("export")
def export(
    module: Annotated[str, typer.Argument(help="A module that declares record classes")],
    out: Annotated[
        Path | None, typer.Option(help="Write the .avsc files here [default: this folder]")
    ] = None,
    check: Annotated[
        Path | None,
        typer.Option(help="Write nothing; exit 1 listing the files of this folder that differ"),
    ] = None,
) -> None:
    """Write one .avsc file per record class of MODULE (the contract other languages use)."""
    if out is not None and check is not None:
        raise typer.BadParameter("give --out or --check, not both")
    files = exported_files(module)
    if check is not None:
        differing = drifted(files, check)
        for line in differing:
            typer.echo(line)
        if differing:
            raise fail(
                SchemaError(
                    f"{len(differing)} of {len(files)} schema files in {check} differ from the "
                    f"classes of {module}: run sagas schemas export {module} --out {check}"
                )
            )
        typer.echo(f"{len(files)} schema files in {check} match the classes of {module}")
        return
    folder = out or Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
        typer.echo(f"wrote {folder / name}")
