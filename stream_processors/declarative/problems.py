"""What a definition's problems look like: ``DefinitionError`` and ``Problem``.

Every problem found in a definition, at load, by the schema or by a compiler, names the state,
the field and, when the loader knows it, the line, so that a user can find it in the file. The
message reads ``state 'X', field 'Y' (line N): ...``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stream_processors.codecs.records import DeclarationError

#: Where a node sits in a definition: the keys and list indexes from the root.
NodePath = tuple[str | int, ...]
#: The 1-based line of each node the loader saw (for a mapping member, the line of its key).
LineMap = Mapping[NodePath, int]


def describe(state: str | None, field: str | None, line: int | None, message: str) -> str:
    """``state 'X', field 'Y' (line N): message``, leaving out what is unknown."""
    where = [f"state '{state}'"] if state is not None else []
    if field:
        where.append(f"field '{field}'")
    head = ", ".join(where) or "definition"
    if line is not None:
        head += f" (line {line})"
    return f"{head}: {message}"


class DefinitionError(DeclarationError):
    """A definition that cannot run as written, naming the state, the field and the line."""

    def __init__(
        self,
        message: str,
        *,
        state: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(describe(state, field, line, message))
        self.state = state
        self.field = field
        self.line = line
        self.reason = message


@dataclass(frozen=True)
class Problem:
    """One problem the schema found; ``str()`` gives the same text as ``DefinitionError``."""

    state: str | None
    field: str | None
    line: int | None
    message: str

    def __str__(self) -> str:
        return describe(self.state, self.field, self.line, self.message)

    def error(self) -> DefinitionError:
        """This problem as an exception, for a caller that stops at the first one."""
        return DefinitionError(self.message, state=self.state, field=self.field, line=self.line)


def field_name(parts: Sequence[str | int]) -> str:
    """``("Retry", 0, "MaxAttempts")`` as ``Retry[0].MaxAttempts``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def line_of(lines: LineMap, path: NodePath) -> int | None:
    """The line of ``path``, or of its nearest ancestor the loader saw."""
    for end in range(len(path), -1, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None


def _opens_states(path: NodePath, at: int) -> bool:
    """Whether ``path[at]`` is a ``States`` map: the root's, a branch's or a Map's processor's."""
    key = path[at]
    if at == 0:
        return key in ("States", "states")
    before = path[at - 1]
    in_branch = isinstance(before, int) and at >= 2 and path[at - 2] == "Branches"
    return key == "States" and (in_branch or before in ("ItemProcessor", "Iterator"))


def locate(path: NodePath) -> tuple[str | None, str | None]:
    """The innermost state a node belongs to and the field within it, for messages.

    ``("States", "P", "Branches", 0, "States", "Q", "Retry", 1)`` is state ``Q``, field
    ``Retry[1]``; a node outside any state has no state, and its path is the field.
    """
    state: str | None = None
    start = 0
    for at in range(len(path) - 1):
        name = path[at + 1]
        if isinstance(name, str) and _opens_states(path, at):
            state, start = name, at + 2
    return state, field_name(path[start:]) or None


def line_for(lines: LineMap, state: str | None, field: str | None) -> int | None:
    """The line of ``field`` in ``state`` (or of the nearest part of it the file has).

    The inverse of ``locate``, for errors raised where only the document was at hand (a
    compiler's ``DefinitionError``): a field the file lacks (a missing ``Next``) gives the line
    of its parent, then of the state. Two states of one name (in different branches) give the
    first one's line.
    """
    wanted = field or ""
    best: tuple[int, int] | None = None  # (how much of the field matched, line)
    for path, line in lines.items():
        where, found = locate(path)
        found = found or ""
        if where != state:
            continue
        if found == wanted:
            return line
        rest = wanted[len(found) :] if wanted.startswith(found) else "-"
        covers = not found or rest[:1] in ("", ".", "[")
        if covers and (best is None or len(found) > best[0]):
            best = (len(found), line)
    return best[1] if best else None


def with_line(error: DefinitionError, lines: LineMap) -> DefinitionError:
    """``error`` with its line from ``lines`` (itself when it has one, or none is known)."""
    if error.line is not None:
        return error
    line = line_for(lines, error.state, error.field)
    if line is None:
        return error
    return DefinitionError(error.reason, state=error.state, field=error.field, line=line)
