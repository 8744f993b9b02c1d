"""Reading a definition file, JSON or YAML, keeping the line of every node.

``load(path)`` reads a file; ``loads(text)`` a string. The format follows the file's extension
(``.json``, ``.yaml``, ``.yml``), else its first character (``{`` or ``[`` is JSON). The result
is a ``LoadedDefinition``: the document as plain JSON values and a line map from each node's
path (keys and list indexes) to its 1-based line, which every later problem report uses.

YAML is read with PyYAML's safe loader under the YAML 1.2 core schema's rules for plain
scalars, so only ``true``/``false`` are booleans (not ``yes``, ``on``...), a timestamp stays a
string (the States Language compares timestamps as strings it parses itself), and ``12:30`` is
not a base-60 number. Duplicate keys, non-string keys and tags that make non-JSON values are
refused, naming the line: PyYAML would otherwise keep the last duplicate silently. JSON is read
with the standard library (its numbers and strings are authoritative); its lines come from the
same YAML pass, since JSON is, in practice, YAML: a JSON text YAML cannot read simply has no
line map. This module's only I/O is ``load`` reading its file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from stream_processors.declarative.problems import (
    DefinitionError,
    LineMap,
    NodePath,
    locate,
)
from stream_processors.declarative.values import JSON

__all__ = ["DefinitionError", "LoadedDefinition", "load", "loads"]

Format = Literal["json", "yaml"]


@dataclass(frozen=True)
class LoadedDefinition:
    """A definition as read: its JSON document, the line of each node, and where it came from."""

    doc: dict[str, JSON]
    lines: LineMap
    source: str
    format: Format

    def line(self, path: NodePath) -> int | None:
        """The line of the node at ``path`` (None when unknown)."""
        return self.lines.get(path)


_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class _Loader(yaml.SafeLoader):
    """The safe loader with the YAML 1.2 core schema's plain scalars (see the module doc)."""


# Start from the safe loader's resolvers, less those that the YAML 1.2 core schema reads
# otherwise, then add the 1.2 ones (add_implicit_resolver copies the dict before changing it).
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT, _TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"),
)


def _error(message: str, path: NodePath, line: int | None) -> DefinitionError:
    state, field = locate(path)
    return DefinitionError(message, state=state, field=field, line=line)


class _Walker:
    """Builds the JSON value and the line map from a composed YAML node tree."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.lines: dict[NodePath, int] = {}

    def value(self, node: Node, path: NodePath) -> JSON:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, MappingNode):
            return self.mapping(node, path)
        if isinstance(node, SequenceNode):
            return [self.value(item, (*path, index)) for index, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        scalar = self.loader.construct_object(node)
        if scalar is not None and not isinstance(scalar, str | int | float | bool):
            raise _error(f"{node.tag} values are not JSON", path, node.start_mark.line + 1)
        return scalar

    def mapping(self, node: MappingNode, path: NodePath) -> JSON:
        self.loader.flatten_mapping(node)  # YAML merge keys (<<) become ordinary members
        members: dict[str, JSON] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = self.loader.construct_object(key_node)
            if not isinstance(key, str):
                raise _error(f"key {key!r} is not a string", path, line)
            if key in members:
                raise _error(f"key {key!r} appears twice", (*path, key), line)
            self.lines[(*path, key)] = line
            members[key] = self.value(value_node, (*path, key))
        return members


def _read_yaml(text: str) -> tuple[JSON, dict[NodePath, int]]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise DefinitionError("the file is empty")
        walker = _Walker(loader)
        return walker.value(node, ()), walker.lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise DefinitionError(f"not valid YAML: {exc.problem or exc}", line=line) from None
    finally:
        loader.dispose()


def _reject_duplicates(pairs: list[tuple[str, JSON]]) -> dict[str, JSON]:
    members: dict[str, JSON] = {}
    for key, value in pairs:
        if key in members:
            raise DefinitionError(f"key {key!r} appears twice")
        members[key] = value
    return members


def _reject_constant(name: str) -> JSON:
    raise DefinitionError(f"{name} is not a JSON number")


def _read_json(text: str) -> tuple[JSON, dict[NodePath, int]]:
    try:
        _, lines = _read_yaml(text)
    except DefinitionError as exc:
        if exc.reason.startswith(("not valid YAML", "the file is empty")):
            lines = {}  # JSON that YAML cannot read: the JSON parser below reports or reads it
        else:
            raise
    try:
        doc: JSON = json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as exc:
        raise DefinitionError(f"not valid JSON: {exc.msg}", line=exc.lineno) from None
    return doc, lines


def _format_of(text: str, source: str) -> Format:
    suffix = Path(source).suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".json":
        return "json"
    return "json" if text.lstrip()[:1] in ("{", "[") else "yaml"


def loads(text: str, *, source: str = "<string>", format: Format | None = None) -> LoadedDefinition:
    """Read a definition from ``text``; ``source`` names it (its extension may set the format)."""
    chosen = format or _format_of(text, source)
    doc, lines = (_read_json if chosen == "json" else _read_yaml)(text)
    if not isinstance(doc, dict):
        raise DefinitionError("a definition must be an object (a mapping)", line=1)
    return LoadedDefinition(doc, lines, source, chosen)


def load(path: str | Path) -> LoadedDefinition:
    """Read the definition file at ``path`` (UTF-8)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"cannot read {path}: {exc}") from None
    return loads(text, source=str(path))
