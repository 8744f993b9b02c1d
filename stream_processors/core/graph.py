"""The shape of a saga's graph: where each node sits, loops and their bounds, implicit forks. Pure.

A definition's nodes form one graph per *path*: the root path starts at ``first``; each branch of
a block (``Block.branches``) is a path of its own that starts at its first node and ends where a
node has no ``next``. ``placement`` puts every node on exactly one path: a node reachable from
two paths (a branch step that jumps into another branch, or back to the root) would make a
join nobody declared, so it is refused at load.

Loops are allowed only with a bound: every cycle must pass through a node with ``max_visits``
(``unbounded_loop`` names the first cycle without one).

``implicit_forks`` keeps the older way of running steps side by side, a task whose ``next`` names
several steps, and fixes its join: the fork becomes a parallel block whose branches are the named
steps, and the first step the branches all reach is its ``next``, started once when every branch
has ended (before, it was sent once per branch that reached it). Whatever in a branch went to the
join (a ``next``, a choice's rule, a ``catch``) ends the branch instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from stream_processors.codecs.records import DeclarationError

if TYPE_CHECKING:
    from stream_processors.core.model import Node, SagaDefinition, Task


def successors(node: Node) -> tuple[str, ...]:
    """The nodes a node may go to next on its own path (a block's branches are other paths)."""
    from stream_processors.core.model import COMPENSATE, Choice, End

    if isinstance(node, Choice):
        targets = [rule.target for rule in node.rules]
        return tuple(dict.fromkeys([*targets, *([node.default] if node.default else [])]))
    if isinstance(node, End):
        return ()
    caught = [t for t in getattr(node, "catch", {}).values() if t != COMPENSATE]
    return tuple(dict.fromkeys([*node.next, *caught]))


def _reach(definition: SagaDefinition, start: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen or not _exists(definition, name):
            continue
        seen[name] = None
        todo.extend(successors(definition.node(name)))
    return list(seen)


def _exists(definition: SagaDefinition, name: str) -> bool:
    return name in definition.tasks or name in definition.flow


def placement(definition: SagaDefinition) -> dict[str, tuple[str, int]]:
    """Each node on a block's branch: (block, branch index). Raises if a node is on two paths."""
    from stream_processors.core.model import Block

    owner: dict[str, tuple[str, int] | None] = dict.fromkeys(_reach(definition, definition.first))
    blocks = [b for b in definition.flow.values() if isinstance(b, Block)]
    for block in blocks:
        for index, start in enumerate(block.branches):
            for name in _reach(definition, [start]):
                if name in owner and owner[name] != (block.name, index):
                    raise DeclarationError(
                        f"saga {definition.name!r}: step {name!r} is reached from "
                        f"{_path(owner[name])} and from {_path((block.name, index))}; a step "
                        "belongs to one path (join branches with the block's next)"
                    )
                owner[name] = (block.name, index)
    return {name: place for name, place in owner.items() if place is not None}


def _path(place: tuple[str, int] | None) -> str:
    return "the main path" if place is None else f"branch {place[1]} of {place[0]!r}"


def unbounded_loop(definition: SagaDefinition) -> list[str] | None:
    """A cycle (its nodes, in order) that no node with ``max_visits`` bounds, if there is one."""
    names = [*definition.tasks, *definition.flow]
    bounded = {n for n in names if definition.node(n).max_visits is not None}
    graph = {n: [s for s in successors(definition.node(n)) if s not in bounded] for n in names}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for following in graph.get(name, []):
            if state.get(following) == 1:
                return [*stack[stack.index(following) :], following]
            if following not in state and (cycle := visit(following)) is not None:
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in names:
        if name not in bounded and name not in state and (cycle := visit(name)) is not None:
            return cycle
    return None


def revisitable(definition: SagaDefinition) -> frozenset[str]:
    """The nodes an instance may enter more than once: those on a cycle, and every node on a
    branch of a block that may be entered again. Only their visits are counted (``fold``),
    which spares linear sagas the bookkeeping."""
    from stream_processors.core.model import Block

    names = [*definition.tasks, *definition.flow]
    again = {n for n in names if n in _reach(definition, successors(definition.node(n)))}
    grown = True
    while grown:
        grown = False
        for block in definition.flow.values():
            if isinstance(block, Block) and block.name in again:
                inside = {n for start in block.branches for n in _reach(definition, [start])}
                if not inside <= again:
                    again |= inside
                    grown = True
    return frozenset(again)


def implicit_forks(
    tasks: Mapping[str, Task], flow: Mapping[str, Node]
) -> tuple[dict[str, Task], dict[str, Node]]:
    """Rewrite each task with several ``next`` into a parallel block joined where they meet.

    Every way a branch goes to the join (a ``next``, a choice's rule or default, a ``catch``)
    ends the branch instead: the block starts the join once, when all branches have ended. A
    choice's or a catch's way to the join goes to an ``End`` of the branch's own
    (``<fork>.<branch>.joined``): they name a node, and a node belongs to one path."""
    from stream_processors.core.model import PARALLEL, Block

    tasks, flow = dict(tasks), dict(flow)
    for name, task in list(tasks.items()):
        if len(task.next) < 2:
            continue
        fork = f"{name}.fork"
        nodes = {**tasks, **flow}
        reach = [_reach_names(nodes, start) for start in task.next]
        shared = [n for n in reach[0] if all(n in r for r in reach[1:])]
        join = shared[0] if shared else None
        if join is not None:
            for index, start in enumerate(task.next):
                # Only the nodes before the join: a node after it may go back to it (a loop).
                for member in _reach_names(nodes, start, stop=join):
                    _end_before(tasks, flow, member, join, f"{fork}.{index}.joined")
        tasks[name] = replace(task, next=(fork,))
        flow[fork] = Block(fork, PARALLEL, task.next, next=(join,) if join else ())
    return tasks, flow


def _end_before(
    tasks: dict[str, Task], flow: dict[str, Node], name: str, join: str, end: str
) -> None:
    """Make node ``name`` end its branch where it went to ``join``."""
    from stream_processors.core.model import Block, Choice, End, Sleep, Task, When

    node: Node = tasks[name] if name in tasks else flow[name]
    changed: Node
    if isinstance(node, Choice):
        rules = tuple(When(r.condition, end if r.target == join else r.target) for r in node.rules)
        default = end if node.default == join else node.default
        changed = replace(node, rules=rules, default=default)
    elif isinstance(node, Sleep):
        changed = replace(node, next=tuple(n for n in node.next if n != join))
    elif isinstance(node, Task | Block):
        following = tuple(n for n in node.next if n != join)
        caught = {e: end if t == join else t for e, t in node.catch.items()}
        changed = replace(node, next=following, catch=caught)
    else:  # an end goes nowhere
        return
    if changed == node:
        return
    if end in successors(changed) and end not in flow:
        flow[end] = End(end, succeed=True)
    if name in tasks:
        tasks[name] = changed  # type: ignore[assignment]  # a task stays a task
    else:
        flow[name] = changed


def _reach_names(nodes: Mapping[str, Node], start: str, stop: str | None = None) -> list[str]:
    """Breadth-first: the first shared node found is the nearest join. With ``stop``, the nodes
    reached before it (it and what follows it left out)."""
    seen: dict[str, None] = {}
    queue = [start]
    while queue:
        name = queue.pop(0)
        if name in seen or name not in nodes or name == stop:
            continue
        seen[name] = None
        queue.extend(successors(nodes[name]))
    return list(seen)
