"""A definition file, checked and compiled: what ``sagas`` commands load where a class may go.

``load_definition(path)`` reads a JSON or YAML file (``loader``), checks it against the shipped
JSON Schema (``schema.validate``), then compiles it to a ``SagaDefinition``: a States Language
machine directly (``machine.compile_machine``), a seed-000 state-machine dict through the
States Language it means (``state_machine``). ``problems(path)`` returns every problem instead
of stopping at the first, for ``sagas validate``. Every problem names the state, the field and,
where the file says, the line.

The saga's name is the definition's ``WorkflowName`` if it has one, else the file's name
(``user_onboarding.yaml`` runs as ``user_onboarding``), with characters a topic name cannot take
replaced by ``-``.
"""

from __future__ import annotations

import re
from pathlib import Path

from stream_processors.codecs.records import load_schema_directory, schema_path_folders
from stream_processors.core.model import SagaDefinition
from stream_processors.declarative import loader, schema
from stream_processors.declarative.loader import LoadedDefinition
from stream_processors.declarative.machine import compile_machine
from stream_processors.declarative.problems import DefinitionError, Problem, with_line
from stream_processors.declarative.state_machine import to_states_language

#: File names ``sagas`` commands take as a definition rather than as ``module:Class``.
SUFFIXES = (".json", ".yaml", ".yml")
_NOT_TOPIC = re.compile(r"[^A-Za-z0-9._-]+")


def is_definition_file(target: str) -> bool:
    """Whether a command's target names a definition file (by its suffix)."""
    return Path(target).suffix.lower() in SUFFIXES


def name_of(path: str | Path) -> str:
    """The saga name a file gives when its definition names none."""
    return _NOT_TOPIC.sub("-", Path(path).stem).strip("-") or "definition"


def problems(path: str | Path) -> list[Problem]:
    """Every problem of the definition in ``path`` (empty: it compiles and can run)."""
    try:
        loaded = loader.load(path)
    except DefinitionError as error:
        return [Problem(error.state, error.field, error.line, error.reason)]
    found = schema.validate(loaded.doc, loaded.lines)
    if found:
        return found
    try:
        _compiled(loaded, name_of(path))
    except DefinitionError as error:
        return [_located(error, loaded)]
    return []


def load_definition(path: str | Path) -> SagaDefinition:
    """The compiled definition in ``path``; raises ``DefinitionError`` for its first problem."""
    found = problems(path)
    if found:
        first = found[0]
        more = f" (and {len(found) - 1} more: sagas validate {path})" if len(found) > 1 else ""
        raise DefinitionError(
            f"{path}: {first.message}{more}", state=first.state, field=first.field, line=first.line
        )
    return _compiled(loader.load(path), name_of(path))


def _compiled(loaded: LoadedDefinition, name: str) -> SagaDefinition:
    # The schemas of the events it starts from: beside the definition, or on the schema path.
    for folder in (Path(loaded.source).parent / "schemas", *schema_path_folders()):
        load_schema_directory(folder)
    document = loaded.doc
    if schema.dialect_of(document) == "state-machine":
        return compile_machine(to_states_language(document, name), name)
    return compile_machine(document, name)


def _located(error: DefinitionError, loaded: LoadedDefinition) -> Problem:
    """A compiler's problem, with the line of its state's field from the line map."""
    error = with_line(error, loaded.lines)
    return Problem(error.state, error.field, error.line, error.reason)
