"""Mermaid state diagrams of sagas, and of where one instance is: ``mermaid(definition, instance)``.

Pure: it reads a ``SagaDefinition`` (whatever declared it: Python classes or a declarative file)
and, optionally, an ``Instance``, and returns the text of a Mermaid ``stateDiagram-v2``.

How the model is drawn:

- a task is a state labelled with its name and its command's type; a wait step says what it
  waits for, a child step which saga it starts. ``next`` edges are plain, ``catch`` edges are
  labelled with the error name (``*``: "any error"); an edge that goes back (a loop) says so,
  and a node with ``max_visits`` says its bound;
- a ``Choice`` is a ``<<choice>>`` state whose edges carry the rule's condition name (or
  "rule N") and "default";
- a parallel block is a composite state with one region per branch (Mermaid's ``--``
  concurrency), a map a composite labelled with its concurrency and tolerated failures; each
  region starts at ``[*]`` and ends at ``[*]``, where the branch returns to its block;
- a ``Sleep`` says its duration (or the function computing until when), an ``End`` says
  succeed or fail and its reason;
- what fails the saga (a step's failure nobody catches, a block that failed, a choice with no
  match, a fail end) leads from the main path to one "compensating" composite holding every
  compensation ("undo <step>"), run for the completed steps, the latest first; a saga with no
  compensation fails to a plain "failed" state instead. Inside a block a failure fails the
  branch, which the block's own edges show.

With an instance, ``classDef``/``class`` colour each node by what its activations did (a step's
keys may be ``node~2`` for a later visit or ``map[3]/node`` for a map's item: ``StepState.node``
names the node), a note gives the counts, and the title says the instance's status. The title
also gives the saga's deadline, if it has one (reached in any state, it fails the saga).

Node names may hold characters Mermaid does not take in ids (dots, dashes, spaces): each node
gets a safe id, and its name is shown through ``state "label" as id``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from stream_processors.core.graph import successors
from stream_processors.core.instance import BranchStatus, Instance, Status, StepStatus
from stream_processors.core.model import (
    COMPENSATE,
    JOIN_FIRST,
    MAP,
    Block,
    Choice,
    CommandSpec,
    End,
    Node,
    Pass,
    SagaDefinition,
    Sleep,
    Task,
)
from stream_processors.core.policy import ALL

#: Words of Mermaid's state-diagram grammar that cannot be a state's id.
_KEYWORDS = frozenset(
    {"as", "class", "classdef", "click", "default", "direction", "end", "hide", "left", "note"}
    | {"of", "right", "scale", "state", "style", "accdescr", "acctitle", "linkstyle"}
)

#: How each kind of highlight looks (only those an instance uses are emitted).
_STYLES = {
    "succeeded": "fill:#d3f9d8,stroke:#2b8a3e",
    "active": "fill:#fff3bf,stroke:#e67700,stroke-width:3px",
    "failed": "fill:#ffe3e3,stroke:#c92a2a",
    "compensated": "fill:#e7f5ff,stroke:#1971c2",
    "cancelled": "fill:#f1f3f5,stroke:#868e96,stroke-dasharray:5 5",
}
#: When a node's activations differ (map items, visits), the first of these that one has wins.
_PRECEDENCE = ("active", "failed", "cancelled", "compensated", "succeeded")

_FORWARD_CLASS = {
    StepStatus.PENDING: "active",
    StepStatus.RETRYING: "active",
    StepStatus.SUCCEEDED: "succeeded",
    StepStatus.FAILED: "failed",
    StepStatus.COMPENSATING: "succeeded",
    StepStatus.COMPENSATION_RETRYING: "succeeded",
    StepStatus.COMPENSATED: "compensated",
    StepStatus.COMPENSATION_FAILED: "succeeded",
    StepStatus.CANCELLED: "cancelled",
}
_UNDO_CLASS = {
    StepStatus.COMPENSATING: "active",
    StepStatus.COMPENSATION_RETRYING: "active",
    StepStatus.COMPENSATED: "compensated",
    StepStatus.COMPENSATION_FAILED: "failed",
}
_BLOCK_CLASS = {
    BranchStatus.QUEUED: "active",
    BranchStatus.RUNNING: "active",
    BranchStatus.SUCCEEDED: "succeeded",
    BranchStatus.FAILED: "failed",
    BranchStatus.CANCELLED: "cancelled",
}
_SINK_CLASS = {
    Status.COMPENSATING: "active",
    Status.COMPENSATED: "compensated",
    Status.FAILED: "failed",
    Status.NEEDS_ATTENTION: "failed",
}

#: A path: None for the main path, else (block, branch index).
Scope = tuple[str, int] | None


def mermaid(definition: SagaDefinition, instance: Instance | None = None) -> str:
    """The Mermaid ``stateDiagram-v2`` of ``definition``, highlighting ``instance`` if given."""
    diagram = _Diagram(definition)
    title = f"{definition.name} v{definition.version}"
    if definition.deadline_ms is not None:  # from any state: the saga then compensates
        title += f", deadline {duration(definition.deadline_ms)}"
    if instance is None:
        lines = [*diagram.render({})]
    else:
        highlight = _Highlight(diagram, instance)
        lines = [*diagram.render(highlight.summaries()), *highlight.classes()]
        title += f" · {instance.instance_id} is {instance.status.value}"
        if instance.reason:
            title += f" ({instance.reason})"
    # JSON is YAML: the title is quoted and escaped whatever it holds.
    return (
        "\n".join(["---", f"title: {json.dumps(title, ensure_ascii=False)}", "---", *lines]) + "\n"
    )


def text(value: str) -> str:
    """``value`` made safe inside a Mermaid label or edge label (one line, no quote)."""
    return " ".join(value.split()).replace('"', "'").replace(";", ",")


def note(value: str) -> str:
    """``value`` made safe in a one-line note, where a colon ends the note's text."""
    return text(value).replace(":", "#58;")


def duration(ms: int) -> str:
    """``ms`` in the largest unit that divides it: 90 s is ``90s``, 2 h is ``2h``."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@dataclass
class _Ids:
    """Safe, unique Mermaid ids for names (a dot, dash or space is no part of an id)."""

    taken: dict[str, str] = field(default_factory=dict)

    def __call__(self, name: str, wanted: str | None = None) -> str:
        """The id of ``name`` (a node's name, or a key of the diagram's own: ``wanted`` then
        says the id to give it if free)."""
        if name not in self.taken:
            base = re.sub(r"[^A-Za-z0-9_]", "_", wanted or name) or "_"
            if not base[0].isalpha() or base.lower() in _KEYWORDS:
                base = f"n_{base}"
            unique, count = base, 1
            while unique in self.taken.values():
                count += 1
                unique = f"{base}_{count}"
            self.taken[name] = unique
        return self.taken[name]


class _Diagram:
    """The diagram of a definition: nodes by path, their ids, and the lines drawing them."""

    def __init__(self, definition: SagaDefinition) -> None:
        self.definition = definition
        self.id = _Ids()
        self.names = [*definition.tasks, *definition.flow]
        self.scopes = self._scopes()
        self.back_edges = _back_edges(definition)
        self.notes: Mapping[str, str] = {}
        compensated = [t for t in definition.tasks.values() if t.compensation is not None]
        # Nodes first, so that they keep their names as ids; the diagram's own states get what is
        # left (their keys start with a NUL, which no node name holds).
        for name in self.names:
            self.id(name)
        self.sink = self.id("\0sink", "compensating" if compensated else "failed")
        self.undo = {t.name: self.id(f"\0undo {t.name}", f"undo_{t.name}") for t in compensated}

    def _scopes(self) -> dict[Scope, list[str]]:
        """The nodes of each path, in the order a walk from its start meets them."""
        definition, place = self.definition, self.definition.placement
        starts = [*definition.first]
        starts += [b for n in definition.flow.values() if isinstance(n, Block) for b in n.branches]
        met = _walk(definition, starts)
        met += [n for n in self.names if n not in met]  # unreachable: drawn, with no way in
        scopes: dict[Scope, list[str]] = {None: []}
        for name in met:
            scopes.setdefault(place.get(name), []).append(name)
        return scopes

    def render(self, notes: Mapping[str, str]) -> Iterator[str]:
        """The diagram's lines; ``notes`` by node name are put next to their nodes."""
        self.notes = notes
        yield "stateDiagram-v2"
        yield from self._scope(None, self.definition.first, 1)

    def _scope(self, scope: Scope, starts: Iterable[str], depth: int) -> Iterator[str]:
        pad = "    " * depth
        names = self.scopes.get(scope, [])
        for name in names:
            yield from self._declare(self.definition.node(name), depth)
        if scope is None:
            yield from self._sink()
        for start in starts:
            yield f"{pad}[*] --> {self.id(start)}"
        for name in names:
            yield from self._edge_lines(name, scope is None, pad)
        # A note goes in the scope of its node: Mermaid lays notes out with their state.
        for name in names:
            if name in self.notes:
                yield f"{pad}note right of {self.id(name)} : {note(self.notes[name])}"

    def _edge_lines(self, name: str, on_main: bool, pad: str) -> Iterator[str]:
        """The edges leaving ``name``, one per target: errors caught alike share theirs."""
        edges: dict[str, list[str]] = {}
        for target, label in self._edges(self.definition.node(name), on_main):
            labels = edges.setdefault(target, [])
            if label and label not in labels:
                labels.append(label)
        for target, labels in edges.items():
            label = f" : {text(', '.join(labels))}" if labels else ""
            yield f"{pad}{self.id(name)} --> {target}{label}"

    def _declare(self, node: Node, depth: int) -> Iterator[str]:
        pad, ident = "    " * depth, self.id(node.name)
        bound = "" if node.max_visits is None else f" (at most {node.max_visits} visits)"
        if isinstance(node, Choice):
            yield f"{pad}state {ident} <<choice>>"
            if bound:
                yield f"{pad}note left of {ident} : {note(node.name + bound)}"
            return
        label = text(f"{node.name}: {_describe(node)}{bound}")
        if not isinstance(node, Block):
            yield f'{pad}state "{label}" as {ident}'
            return
        yield f'{pad}state "{label}" as {ident} {{'
        for index, start in enumerate(node.branches):
            if index:
                yield f"{pad}    --"
            yield from self._scope((node.name, index), (start,), depth + 1)
        yield f"{pad}}}"

    def _edges(self, node: Node, on_main: bool) -> Iterator[tuple[str, str]]:
        """(target id, label) of each edge leaving ``node``; the failure sink only on the main
        path (on a branch, a failure fails the branch: its block's edges show what follows)."""
        sink = self.sink if on_main else None
        if isinstance(node, Choice):
            for number, rule in enumerate(node.rules, 1):
                yield self._to(node, rule.target, _condition_name(rule.condition, number))
            if node.default is not None:
                yield self._to(node, node.default, "default")
            elif sink:
                yield sink, "no rule matched"
            return
        if isinstance(node, End):
            yield (sink, "") if sink and not node.succeed else ("[*]", "")
            return
        yield from (self._to(node, target, "") for target in node.next)
        if not node.next:
            yield "[*]", ""
        if isinstance(node, Sleep | Pass):
            return
        for error, target in node.catch.items():
            if target != COMPENSATE:  # catching to compensate is what "failed" below draws
                yield self._to(node, target, "any error" if error == ALL else error)
        if sink and node.catch.get(ALL, COMPENSATE) == COMPENSATE:
            yield sink, "failed"

    def _to(self, node: Node, target: str, label: str) -> tuple[str, str]:
        if (node.name, target) in self.back_edges:
            label = f"{label} (loop)" if label else "loop"
        return self.id(target), label

    def _sink(self) -> Iterator[str]:
        if not self.undo:
            yield f'    state "failed" as {self.sink}'
        else:
            yield f'    state "compensating (undo completed steps, latest first)" as {self.sink} {{'
            for name, ident in self.undo.items():
                spec = self.definition.tasks[name].compensation
                assert spec is not None
                yield f'        state "{text(f"undo {name}: {_spec(spec)}")}" as {ident}'
            yield "    }"
        yield f"    {self.sink} --> [*]"


def _describe(node: Node) -> str:
    if isinstance(node, Task):
        return _spec(node.action)
    if isinstance(node, Block):
        return _block(node)
    if isinstance(node, Sleep):
        if node.delay_ms is not None:
            return f"sleep {duration(node.delay_ms)}"
        return f"sleep until {getattr(node.until, '__name__', 'a time')}"
    if isinstance(node, Pass):
        return "pass"
    assert isinstance(node, End)
    outcome = "succeed" if node.succeed else "fail"
    return f"{outcome} ({node.reason})" if node.reason else outcome


def _spec(spec: CommandSpec) -> str:
    """What a step (or its compensation) does: sends a command, waits, or starts a child."""
    if spec.label is not None:
        return spec.label
    if spec.child is not None:
        return f"child saga {spec.child}"
    if spec.command is None:
        awaited = " or ".join(t.__name__ for t in (*spec.success, *spec.failure))
        timeout = "" if spec.timeout_ms is None else f", at most {duration(spec.timeout_ms)}"
        return f"wait for {awaited}{timeout}"
    return spec.command.__name__


def _block(node: Block) -> str:
    if node.kind != MAP:
        return "parallel" + (", first branch to succeed wins" if node.join == JOIN_FIRST else "")
    parts = [f"map, {node.max_concurrency} at a time"]
    if node.tolerated_percentage is not None:
        parts.append(f"tolerates {node.tolerated_percentage:g}% failed")
    elif node.tolerated_failures:
        parts.append(f"tolerates {node.tolerated_failures} failed")
    return ", ".join(parts)


def _condition_name(condition: object, number: int) -> str:
    name = getattr(condition, "__name__", "")
    return name if name and not name.startswith("<") else f"rule {number}"


def _walk(definition: SagaDefinition, starts: Iterable[str]) -> list[str]:
    """Nodes in breadth-first order from ``starts``, following each path's own edges."""
    met: dict[str, None] = {}
    queue = list(starts)
    while queue:
        name = queue.pop(0)
        if name not in met and (name in definition.tasks or name in definition.flow):
            met[name] = None
            queue.extend(successors(definition.node(name)))
    return list(met)


def _back_edges(definition: SagaDefinition) -> set[tuple[str, str]]:
    """Edges that go back to a node on the walk that reached them: the loops' closing edges."""
    back: set[tuple[str, str]] = set()
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        stack.append(name)
        for following in successors(definition.node(name)):
            if following in stack:
                back.add((name, following))
            elif following not in done and following in (*definition.tasks, *definition.flow):
                visit(following, stack)
        stack.pop()
        done.add(name)

    blocks = [n for n in definition.flow.values() if isinstance(n, Block)]
    for start in (*definition.first, *(b for n in blocks for b in n.branches)):
        if start not in done:
            visit(start, [])
    return back


class _Highlight:
    """The ``classDef``, ``class`` and note lines showing where an instance is."""

    def __init__(self, diagram: _Diagram, instance: Instance) -> None:
        self.diagram, self.instance = diagram, instance
        self.kinds: dict[str, list[str]] = {}  # state id -> the classes of its activations
        self.notes: dict[str, Counter[str]] = {}  # node name -> what its activations did
        self._steps()
        self._blocks()
        self._flow()
        sink = _SINK_CLASS.get(instance.status)
        if sink is not None:
            self.kinds.setdefault(diagram.sink, []).append(sink)

    def summaries(self) -> dict[str, str]:
        """What each node's activations did, by node name: "succeeded", "2 succeeded, pending"."""
        return {
            name: ", ".join(f"{n} {what}" if n > 1 else what for what, n in counts.items())
            for name, counts in self.notes.items()
        }

    def classes(self) -> Iterator[str]:
        """A ``classDef`` per kind of highlight used, and the states of that kind."""
        chosen = {ident: _first(kinds) for ident, kinds in self.kinds.items()}
        for kind in _PRECEDENCE:
            members = sorted(ident for ident, chosen_kind in chosen.items() if chosen_kind == kind)
            if members:
                yield f"    classDef {kind} {_STYLES[kind]}"
                yield f"    class {','.join(members)} {kind}"

    def _mark(self, name: str, kind: str, what: str) -> None:
        self.kinds.setdefault(self.diagram.id(name), []).append(kind)
        self.notes.setdefault(name, Counter())[what] += 1

    def _steps(self) -> None:
        for key, step in self.instance.steps.items():
            name = step.node or _node_of(key, self.diagram.definition)
            if name not in self.diagram.definition.tasks:
                continue  # a step of another version of the saga
            what = step.status.value + (f" (attempt {step.attempt})" if step.attempt > 1 else "")
            self._mark(name, _FORWARD_CLASS[step.status], what)
            undo = self.diagram.undo.get(name)
            if undo is not None and step.status in _UNDO_CLASS:
                self.kinds.setdefault(undo, []).append(_UNDO_CLASS[step.status])

    def _blocks(self) -> None:
        for block in self.instance.blocks.values():
            if block.node not in self.diagram.definition.flow:
                continue
            self._mark(block.node, _BLOCK_CLASS[block.status], _branches(block.branches))

    def _flow(self) -> None:
        """Choices, sleeps and ends have no step: their visits (and timers) say they ran."""
        definition = self.diagram.definition
        timed = {_node_of(t.step, definition) for t in self.instance.timers.values() if t.step}
        for key, count in self.instance.visits.items():
            node = definition.flow.get(_node_of(key, definition))
            if node is None or isinstance(node, Block):
                continue
            waiting = isinstance(node, Sleep) and node.name in timed
            failed = isinstance(node, End) and not node.succeed
            kind = "active" if waiting else "failed" if failed else "succeeded"
            what = "sleeping" if waiting else f"passed {count}x" if count > 1 else "passed"
            if not isinstance(node, Choice):  # a choice is a diamond: no note, no colour
                self._mark(node.name, kind, what)


def _first(kinds: list[str]) -> str:
    return next(kind for kind in _PRECEDENCE if kind in kinds)


def _branches(branches: Iterable[BranchStatus]) -> str:
    counts = Counter(status.value for status in branches)
    return "branches " + ", ".join(f"{count} {status}" for status, count in counts.items())


def _node_of(key: str, definition: SagaDefinition) -> str:
    """The node a step, visit or timer key names: keys on a map's item are ``map[3]/node``."""
    if key in definition.tasks or key in definition.flow:
        return key
    return key.rsplit("]/", 1)[-1].split("~", 1)[0]
