"""Records for the control-flow tests (``test_control_flow*.py``, ``tools/construct_costs.py``).

Schemas are derived from the classes (``derive=True``), under the ``tests.unit.flow``
namespace, so the sagas can be declared at module level. A saga needs a distinct reply type per
step (a reply names its step), so each *letter* is a family of its own: ``DoA`` answered by
``ADone`` or ``AFailed``, undone by ``UndoA`` answered by ``AUndone``; ``A.step(...)`` declares
the step. Every command is built from the state's ``id`` (the default builder).

``Line`` is a map item as a record; ``Pack`` is the map's command, built from the item.

Helpers the tests share: ``kinds``, ``cid``, ``reply`` and ``undo`` (answer the one outstanding
command or compensation of a letter), and ``verify_every_journal`` (for an autouse fixture:
every journal a test makes is re-decided by ``verify_histories``).
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sagas import Command, Compensate, Event, State, Step
from sagas.testing import SagaTest, verify_histories
from stream_processors.core.journal import Kind

NS = "tests.unit.flow"
COMMANDS = "flow.commands"
EVENTS = "flow.events"


def _declare(base: type[Any], name: str, fields: dict[str, Any], **options: Any) -> type[Any]:
    """A derived record class ``name`` with ``fields`` (name: type, all without defaults)."""

    def body(namespace: dict[str, Any]) -> None:
        namespace.update({"__annotations__": fields, "__module__": __name__, "__qualname__": name})

    return types.new_class(
        name, (base,), {"schema": f"{NS}.{name}", "derive": True, **options}, body
    )


@dataclass(frozen=True)
class Letter:
    """One step's family of records: its command, replies, compensation and its replies."""

    name: str
    do: type[Command]
    done: type[Event]
    failed: type[Event]
    undo: type[Command]
    undone: type[Event]

    def step(self, **options: Any) -> Step:
        """``Step(DoX, success=XDone, failure=XFailed, compensate=UndoX/XUndone, **options)``."""
        return Step(
            self.do,
            success=self.done,
            failure=self.failed,
            compensate=Compensate(self.undo, success=self.undone),
            **options,
        )


def letter(name: str) -> Letter:
    ids = {"id": str}
    return Letter(
        name,
        _declare(Command, f"Do{name}", ids, topic=COMMANDS),
        _declare(Event, f"{name}Done", ids),
        _declare(Event, f"{name}Failed", ids),
        _declare(Command, f"Undo{name}", ids, topic=COMMANDS),
        _declare(Event, f"{name}Undone", ids),
    )


A, B, C, D, E, F, G, H = (letter(name) for name in "ABCDEFGH")


class Line(Event, schema=f"{NS}.Line", derive=True):
    """A map item as a record: the ``Pack`` command takes its fields."""

    sku: str
    qty: int


class Started(Event, schema=f"{NS}.Started", topic=EVENTS, key="id", derive=True):
    id: str
    express: bool = False
    skus: list[str] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    wake_at: int = 0


class Flow(State, schema=f"{NS}.Flow", derive=True):
    """Every control-flow test saga's state."""

    id: str
    express: bool = False
    skus: list[str] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    wake_at: int = 0
    #: What a map's or a parallel's ``gather`` put in.
    gathered: list[str] = field(default_factory=list)
    #: A loop's count (an evolver bumps it).
    rounds: int = 0


def begin(event: Started) -> Flow:
    return Flow(
        id=event.id,
        express=event.express,
        skus=event.skus,
        lines=event.lines,
        wake_at=event.wake_at,
    )


class Pack(Command, schema=f"{NS}.Pack", topic="packing.commands", derive=True):
    """A map item's command: ``id`` from the state, ``sku`` and ``qty`` from the item."""

    id: str
    sku: str
    qty: int


class Packed(Event, schema=f"{NS}.Packed", derive=True):
    sku: str
    box: str


class PackFailed(Event, schema=f"{NS}.PackFailed", derive=True):
    sku: str


class Unpack(Command, schema=f"{NS}.Unpack", topic="packing.commands", derive=True):
    id: str
    sku: str
    qty: int


class Unpacked(Event, schema=f"{NS}.Unpacked", derive=True):
    sku: str


class Verified(Event, schema=f"{NS}.Verified", topic=EVENTS, key="id", derive=True):
    """An event a wait waits for (from a service's topic, keyed by the instance id)."""

    id: str


class Approved(Event, schema=f"{NS}.Approved", topic=EVENTS, key="id", derive=True):
    """Another awaited event, for a second wait."""

    id: str


class Job(Event, schema=f"{NS}.Job", topic=EVENTS, key="id", derive=True):
    """A child saga's start event (the parent's child step builds it from its state)."""

    id: str


def begin_job(event: Job) -> Flow:
    return Flow(id=event.id)


# --- helpers the tests share ----------------------------------------------------------------------

ID = "i-1"


def kinds(entries: Any) -> list[Kind]:
    """The kinds of journal entries (a decision's, or a list of them)."""
    listed = entries.entries if hasattr(entries, "entries") else entries
    return [Kind(entry.kind) for entry in listed]


def cid(saga: str, step: str, attempt: int = 1) -> str:
    """The command id of ``step``'s attempt in instance ``ID`` of ``saga``."""
    return f"{saga}/{ID}/{step}/{attempt}"


def reply(test: SagaTest, family: Letter, *, step: str | None = None, ok: bool = True) -> Any:
    """Answer the one outstanding command of ``family`` (success, or its failure reply)."""
    sent = test.expect_command(family.do, step=step)
    answer = family.done if ok else family.failed
    test.reply(sent, answer(id=ID))
    return sent


def undo(test: SagaTest, family: Letter, *, step: str | None = None) -> Any:
    """Answer the one outstanding compensation of ``family`` with its success."""
    sent = test.expect_command(family.undo, step=step)
    test.reply(sent, family.undone(id=ID))
    return sent


def verify_every_journal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For an autouse fixture: every ``SagaTest`` a test makes has its journal re-decided at
    the end by ``verify_histories`` (each recorded input and timer given to ``decide`` again
    must make the same entries): the decisions are a function of the journal alone."""
    made: list[SagaTest] = []
    init = SagaTest.__init__

    def recording(self: SagaTest, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(SagaTest, "__init__", recording)
    yield
    for test in made:
        if test.journal:
            verify_histories(test.definition, [test.journal]).raise_for_differences()
