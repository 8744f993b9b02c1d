"""``sagas validate`` and ``sagas start``: declarative definitions from the command line.

``validate FILE`` lists every problem of a definition (JSON Schema first, then the compiler's
own checks), each with its state, field and line, and exits 1 if there is one. ``start FILE
--input JSON [--id ID]`` starts an execution; with ``--id`` of an execution that exists already
it starts nothing and says so (the engine would ignore a second start anyway), and ``--wait``
follows the execution to its end and prints its output.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from sagas.cli.app import Bootstrap, app, fail, saga_definition
from sagas.publisher import Publisher
from stream_processors.core.documents import ROOT_SCOPE, Documents
from stream_processors.core.instance import Instance
from stream_processors.core.model import SagaDefinition
from stream_processors.declarative.definition import problems
from stream_processors.kafka.topics import SagaTopics
from stream_processors.tools.history import fold_until, read_history

DefinitionFile = Annotated[Path, typer.Argument(help="A definition file (.json, .yaml)")]


@app.command()
def validate(path: DefinitionFile) -> None:
    """Check a definition: every problem, with its state, field and line."""
    if not path.is_file():
        raise typer.BadParameter(f"no file {str(path)!r}")
    found = problems(path)
    for problem in found:
        typer.echo(f"{path}: {problem}")
    if found:
        raise typer.Exit(1)
    definition = saga_definition(str(path))
    nodes = len(definition.tasks) + len(definition.flow)
    typer.echo(f"{path}: ok ({definition.name}, version {definition.version}, {nodes} states)")


@app.command()
def start(
    target: Annotated[str, typer.Argument(help="A definition file (.json, .yaml)")],
    input_json: Annotated[str, typer.Option("--input", help="The execution's input (JSON)")] = "{}",
    execution: Annotated[
        str | None, typer.Option("--id", help="The execution's id [default: a new UUID]")
    ] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to follow the execution to its end (0: do not wait)")
    ] = 0.0,
    bootstrap: Bootstrap = None,
) -> None:
    """Start an execution of a definition (idempotent by --id)."""
    definition = saga_definition(target)
    try:
        document = json.loads(input_json)
    except ValueError as error:
        raise typer.BadParameter(f"--input is not JSON: {error}") from None
    if execution is not None:
        existing = _instance(definition, execution, bootstrap)
        if existing is not None:
            typer.echo(f"execution {execution} exists already: {existing.status.value}")
            _report(existing)
            return
    try:
        with Publisher(bootstrap, client_id=f"sagalog-start-{definition.name}") as publisher:
            execution = publisher.start(definition, document, execution)
            if publisher.flush(30):
                raise fail(RuntimeError("the start was not acknowledged in 30 s"))
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    typer.echo(f"started execution {execution}")
    if wait > 0:
        _follow(definition, execution, wait, bootstrap)


def _instance(definition: SagaDefinition, execution: str, bootstrap: str | None) -> Instance | None:
    """The execution as its journal folds, or None if it has none."""
    journal = SagaTopics.for_saga(definition).journal
    return fold_until(definition, read_history(journal, execution, bootstrap))


def _follow(
    definition: SagaDefinition, execution: str, seconds: float, bootstrap: str | None
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        instance = _instance(definition, execution, bootstrap)
        if instance is not None and instance.status.finished:
            typer.echo(f"execution {execution}: {instance.status.value}")
            _report(instance)
            return
        time.sleep(0.5)
    typer.echo(f"execution {execution} has not finished after {seconds:g} s", err=True)
    raise typer.Exit(2)


def _report(instance: Instance) -> None:
    """The execution's output (its main path's document) and why it ended, if it did not
    succeed."""
    if instance.reason and instance.status.value != "completed":
        typer.echo(f"reason: {instance.reason}")
    data: Any = instance.data
    if isinstance(data, Documents):
        typer.echo(json.dumps(data.document(ROOT_SCOPE), indent=2))
