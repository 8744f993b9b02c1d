"""The saga model every way of declaring a saga compiles to: tasks, transitions, compensations.

A ``SagaDefinition`` is plain data plus pure functions. Python classes (``sagas.Saga``) compile
to it today; a declarative JSON/YAML definition will compile to the same thing. The engine only
ever sees this model.

The model is a graph of *nodes*. A ``Task`` sends a command (or waits for an event, or starts a
child saga) and waits for its reply; the other nodes are control flow (``FlowNode``): a
``Choice`` branches on the state, a ``Block`` runs branches side by side (``PARALLEL``) or the
same branch once per item of a list (``MAP``) and joins them, a ``Sleep`` waits on a durable
timer, an ``End`` succeeds or fails its path with a reason. A path ends at a node with no
``next``; the root path ending completes the saga, a branch's ending is reported to its block.
A node may be entered again (a loop) only up to its ``max_visits``.

A ``Task`` whose ``next`` names several steps is a fork: ``implicit_forks`` compiles it into a
parallel block joined where its branches meet (``stream_processors.core.graph``).

``validate`` checks a definition and raises ``DeclarationError`` naming the problem; it runs when
the declaring class is created, so a bad saga fails at import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import Any

from stream_processors.codecs.records import Command, DeclarationError, Event, Record, State
from stream_processors.core.documents import DocumentFlow
from stream_processors.core.policy import RetryPolicy
from stream_processors.core.tasks import TaskCommand, TaskFailed, TaskHeartbeat, TaskSucceeded
from stream_processors.core.throttle import Throttle


class CommandFailed(Event, schema="sagalog.CommandFailed"):
    """A worker's reply when its handler raised a transient error (see ``sagas.worker``)."""

    error: str
    message: str


class ChildEnded(Event, schema="sagalog.ChildEnded"):
    """What a child saga sends its parent when it ends: its final status and reason."""

    saga: str
    instance: str
    status: str
    reason: str | None = None


#: The error name a child step fails with when its child saga did not complete.
CHILD_FAILED = "sagalog.ChildFailed"


class OperatorAction(Event, schema="sagalog.OperatorAction"):
    """An operator's retry, cancel, resolve or prioritize, sent to one instance by the ``sagas``
    CLI."""

    action: str
    by: str
    reason: str


#: The actions an ``OperatorAction`` may name; the processor ignores any other.
OPERATOR_ACTIONS = ("retry", "cancel", "resolve", "prioritize")

#: Inputs every saga takes, whatever it declares. Replies that any step may take (a transient
#: failure, a child's end) are matched to their step by command id alone.
ENGINE_INPUTS: tuple[type[Record], ...] = (CommandFailed, OperatorAction, ChildEnded)
#: The replies of a ``TaskCommand``, taken by a saga that sends one, matched by id alone too.
TASK_REPLIES: tuple[type[Record], ...] = (TaskSucceeded, TaskFailed, TaskHeartbeat)


@dataclass(frozen=True)
class Fail:
    """Returned by a handler: fail the saga now (compensating what completed).

    Declared as a step of a saga, it is a terminal node: reaching it fails the path with
    ``reason`` (and ``error``, the name a ``catch`` matches; by default ``"Fail"``).
    """

    reason: str
    error: str = "Fail"


@dataclass(frozen=True)
class Complete:
    """Returned by a handler: the saga is done, whatever steps remain."""


#: What a handler may return, in any mix: commands to send (fire and forget), or an outcome.
Directive = Command | Fail | Complete
Handler = Callable[[Any, Any, int], Iterable[Directive]]
Evolver = Callable[[Any, Any], Any]
#: Builds a command (or a child's start event) from the state; inside a map, from (state, item).
Builder = Callable[..., Command]
#: A Choice rule's condition: the state (and, inside a map, the item) to a bool. Pure.
Condition = Callable[..., bool]


class ReplyRole(Enum):
    """What a reply type means to the step that claims it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


#: Transient errors and timeouts: three attempts, 1 s then 2 s apart.
DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class CommandSpec:
    """A command to send and the replies that finish it, with its retry policy and timeout.

    ``command`` None makes it a *wait*: nothing is sent, and the step waits for one of its
    ``success`` or ``failure`` events (a human approval, a webhook) to arrive for the instance,
    for at most ``timeout_ms``.
    """

    command: type[Record] | None
    build: Builder | None
    topic: str | None
    success: tuple[type[Event], ...]
    failure: tuple[type[Event], ...] = ()
    retry: RetryPolicy = DEFAULT_RETRY
    timeout_ms: int | None = None
    #: The child saga this command starts (its start event goes to ``topic``, its inbox).
    child: str | None = None
    #: The child saga's key field: the start event's field that names the child instance.
    child_key: str | None = None
    #: How long an awaited event that arrived before its wait started is kept for it (ms).
    early_ms: int = 0
    #: What the step does, in words, where the command's type says too little (a declarative
    #: task's ``Service.Action``): diagrams and listings show it.
    label: str | None = None
    #: A task's heartbeat interval (ms): from its worker's first ``TaskHeartbeat`` (sent as the
    #: action starts), the next must come within this interval while the action runs, or the
    #: attempt fails with ``HEARTBEAT_TIMEOUT``. A command still queued for its worker is
    #: bounded by ``timeout_ms`` alone.
    heartbeat_ms: int | None = None


#: A ``catch`` target that fails the saga (compensating what completed) rather than a step.
COMPENSATE = "compensate"


@dataclass(frozen=True)
class Task:
    """One step: its command, what undoes it, where to go when it succeeds, and on failures.

    ``catch`` maps error names (see ``stream_processors.core.policy``) to the step to run instead
    when the step finally fails with that error, or to ``COMPENSATE``.
    """

    name: str
    action: CommandSpec
    compensation: CommandSpec | None = None
    next: tuple[str, ...] = ()
    catch: Mapping[str, str] = field(default_factory=dict)
    max_visits: int | None = None


@dataclass(frozen=True)
class When:
    """A Choice rule: go to ``target`` if ``condition`` holds."""

    condition: Condition
    target: str


@dataclass(frozen=True)
class Choice:
    """Go to the first rule's target whose condition holds, else ``default``.

    With no rule matching and no default the path fails, with a reason naming the Choice."""

    name: str
    rules: tuple[When, ...]
    default: str | None = None
    max_visits: int | None = None


PARALLEL = "parallel"
MAP = "map"
#: How a parallel block joins: when all branches succeeded, or at the first that does.
JOIN_ALL = "all"
JOIN_FIRST = "first"
#: The most items a map takes from the state unless it says otherwise.
DEFAULT_MAX_ITEMS = 10_000
#: The most iterations a map runs at once unless it says otherwise; the others queue.
DEFAULT_MAX_CONCURRENCY = 100


@dataclass(frozen=True)
class Block:
    """Branches run side by side, then joined.

    ``PARALLEL``: each of ``branches`` names the first node of one branch. ``MAP``: the one
    branch runs once per item of ``items(state)``, at most ``max_concurrency`` at a time (the
    rest queue), tolerating ``tolerated_failures`` failed items (or ``tolerated_percentage``
    of them). ``gather(state, results)`` folds the branches' results (the last reply of each,
    None for one that failed) into the state, in branch or item order, when the block succeeds.
    """

    name: str
    kind: str
    branches: tuple[str, ...]
    next: tuple[str, ...] = ()
    catch: Mapping[str, str] = field(default_factory=dict)
    join: str = JOIN_ALL
    gather: Callable[[Any, list[Any]], Any] | None = None
    items: Callable[..., Any] | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_items: int = DEFAULT_MAX_ITEMS
    tolerated_failures: int = 0
    tolerated_percentage: float | None = None
    max_visits: int | None = None


@dataclass(frozen=True)
class Sleep:
    """A durable wait: ``delay_ms``, or until the epoch ms that ``until(state)`` returns."""

    name: str
    delay_ms: int | None = None
    until: Callable[..., int] | None = None
    next: tuple[str, ...] = ()
    max_visits: int | None = None


@dataclass(frozen=True)
class Pass:
    """A node that only passes on: a document-flow definition's ``Pass`` state (its document
    changes as ``SagaDefinition.documents`` says)."""

    name: str
    next: tuple[str, ...] = ()
    max_visits: int | None = None


@dataclass(frozen=True)
class End:
    """A terminal node: the path succeeds (``succeed``) or fails with ``reason`` and ``error``."""

    name: str
    succeed: bool
    reason: str | None = None
    error: str = "Fail"
    max_visits: int | None = None


#: Nodes that are not tasks: they send nothing and take no reply.
FlowNode = Choice | Block | Sleep | End | Pass
Node = Task | FlowNode


@dataclass(frozen=True)
class SagaDefinition:
    """A compiled saga. ``validate`` must have passed before the engine uses it."""

    name: str
    version: int
    start: type[Event]
    key: str
    state: type[State]
    begin: Callable[[Any], State]
    tasks: Mapping[str, Task]
    first: tuple[str, ...]
    evolvers: Mapping[type[Record], Evolver] = field(default_factory=dict)
    handlers: Mapping[type[Record], Handler] = field(default_factory=dict)
    replies: Mapping[type[Record], tuple[str, ReplyRole]] = field(default_factory=dict)
    deadline_ms: int | None = None
    flow: Mapping[str, FlowNode] = field(default_factory=dict)
    #: Set for a definition whose state is JSON documents, one per path (a declarative one):
    #: its functions take a ``Scope``, and the decider journals each path's new document.
    documents: DocumentFlow | None = None
    #: How long an instance should take, start to finish (ms): metrics only, never a decision.
    sla_ms: int | None = None
    #: Flow control (``stream_processors.core.throttle``): limits, priority, aging. None: none.
    throttle: Throttle | None = None

    def node(self, name: str) -> Node:
        """The task or flow node ``name`` (KeyError if neither)."""
        task = self.tasks.get(name)
        return task if task is not None else self.flow[name]

    @cached_property
    def revisitable(self) -> frozenset[str]:
        """Nodes that may be entered more than once (loops): only their visits are counted."""
        from stream_processors.core.graph import revisitable

        return revisitable(self)

    @cached_property
    def placement(self) -> Mapping[str, tuple[str, int]]:
        """Each node inside a block: (the block's name, the branch's index). Root nodes absent."""
        from stream_processors.core.graph import placement

        return placement(self)

    @cached_property
    def inputs(self) -> frozenset[type[Record]]:
        """Every record type this saga accepts on its inbox (computed once: asked per input)."""
        tasks = any(spec.command is TaskCommand for spec in self.specs())
        replies = TASK_REPLIES if tasks else ()
        return frozenset({self.start, *self.replies, *self.handlers, *ENGINE_INPUTS, *replies})

    def specs(self) -> list[CommandSpec]:
        return [
            spec
            for task in self.tasks.values()
            for spec in (task.action, task.compensation)
            if spec is not None
        ]

    def command_topics(self) -> frozenset[str]:
        """Topics the saga's commands go to (not the inboxes of the child sagas it starts)."""
        return frozenset(
            spec.topic for spec in self.specs() if spec.topic is not None and spec.child is None
        )

    @cached_property
    def source_inputs(self) -> frozenset[type[Record]]:
        """The types that may come from a service's topic: the start event, the events the saga
        handles, and those its waits wait for. Never a worker's reply or an operator action:
        those reach the inbox only from their own senders."""
        waited = [t for spec in self.specs() if spec.command is None for t in spec.success]
        waited += [t for spec in self.specs() if spec.command is None for t in spec.failure]
        return frozenset({self.start, *self.handlers, *waited})

    def source_topics(self) -> frozenset[str]:
        """Topics of events that start or feed the saga (published by services)."""
        types = self.source_inputs
        return frozenset(t.__topic__ for t in types if issubclass(t, Event) and t.__topic__)


def reply_index(tasks: Iterable[Task]) -> dict[type[Record], tuple[str, ReplyRole]]:
    """Map each reply type to the step that claims it; a type claimed twice is an error."""
    index: dict[type[Record], tuple[str, ReplyRole]] = {}
    for task in tasks:
        claims = [(t, ReplyRole.SUCCEEDED) for t in task.action.success]
        claims += [(t, ReplyRole.FAILED) for t in task.action.failure]
        if task.compensation is not None:
            claims += [(t, ReplyRole.COMPENSATED) for t in task.compensation.success]
            claims += [(t, ReplyRole.COMPENSATION_FAILED) for t in task.compensation.failure]
        for reply, role in claims:
            if reply in index:
                other = index[reply][0]
                raise DeclarationError(
                    f"reply {reply.__qualname__} is claimed by two steps: "
                    f"{other!r} and {task.name!r}"
                )
            index[reply] = (task.name, role)
    return index


def validate(definition: SagaDefinition) -> None:
    """Raise DeclarationError, naming the problem, for anything the engine could not run."""
    where = f"saga {definition.name!r}"
    _validate_name(where, definition.name)
    if not definition.tasks and not definition.flow:
        raise DeclarationError(f"{where}: declares no steps")
    if definition.key not in definition.start.__fields__:
        raise DeclarationError(
            f"{where}: key field {definition.key!r} is not a field of the start event "
            f"{definition.start.__qualname__} (fields: {', '.join(definition.start.__fields__)})"
        )
    _validate_flow(where, definition)
    for task in definition.tasks.values():
        answered_by_id = task.action.child is not None or task.action.command is TaskCommand
        if not task.action.success and not answered_by_id:
            raise DeclarationError(f"{where}: step {task.name!r} has no success reply")
        if task.action.command is None and task.action.timeout_ms is None:
            raise DeclarationError(f"{where}: wait step {task.name!r} needs a timeout")
        if task.action.child is not None and task.action.retry.max_attempts > 1:
            # Its child is one instance, named by the start event's key: a second start is a
            # duplicate the child ignores, and the child's end answers the first attempt's id,
            # which the retried step no longer takes. The parent would wait for nothing.
            raise DeclarationError(
                f"{where}: child step {task.name!r} cannot be retried (its child saga runs once): "
                "bound it with timeout= and handle its failure with catch="
            )
    inputs = set(definition.replies)
    if definition.start in inputs:
        raise DeclarationError(f"{where}: the start event is also a step's reply")
    for handled in definition.handlers:
        if handled in inputs or handled is definition.start:
            raise DeclarationError(
                f"{where}: {handled.__qualname__} has a handler but is already a reply or the start"
            )
    for task in definition.tasks.values():
        if task.action.command is None:
            _validate_waited(f"{where}: wait step {task.name!r}", task.action)
    for evolved in definition.evolvers:
        if evolved not in definition.inputs:
            raise DeclarationError(
                f"{where}: evolver for {evolved.__qualname__}, which the saga never receives "
                "(it is not its start, a step's reply or an event it handles)"
            )


def _validate_flow(where: str, definition: SagaDefinition) -> None:
    """Every target exists, every block and choice makes sense, every loop is bounded."""
    from stream_processors.core.graph import unbounded_loop

    def known(name: str) -> bool:
        return name in definition.tasks or name in definition.flow

    clash = sorted(set(definition.tasks) & set(definition.flow))
    if clash:
        raise DeclarationError(f"{where}: two steps named {clash[0]!r}")
    for name in definition.first:
        if not known(name):
            raise DeclarationError(f"{where}: starts with unknown step {name!r}")
    for node in (*definition.tasks.values(), *definition.flow.values()):
        step = f"{where}: step {node.name!r}"
        for target in getattr(node, "next", ()):
            if not known(target):
                raise DeclarationError(f"{step} goes to unknown step {target!r}")
        for error, target in getattr(node, "catch", {}).items():
            if target != COMPENSATE and not known(target):
                raise DeclarationError(f"{step} catches {error!r} with unknown step {target!r}")
        if node.max_visits is not None and node.max_visits < 1:
            raise DeclarationError(f"{step}: max_visits must be at least 1")
        if isinstance(node, Choice):
            _validate_choice(step, node, known)
        elif isinstance(node, Block):
            _validate_block(step, node, known)
        elif isinstance(node, Sleep) and (node.delay_ms is None) == (node.until is None):
            raise DeclarationError(f"{step}: a sleep needs either seconds or until, not both")
    definition.placement  # noqa: B018  raises if a step is on two paths
    cycle = unbounded_loop(definition)
    if cycle is not None:
        raise DeclarationError(
            f"{where}: steps {' -> '.join(cycle)} form a loop with no bound: declare "
            "max_visits on one of them"
        )


def _validate_choice(step: str, node: Choice, known: Callable[[str], bool]) -> None:
    if not node.rules and node.default is None:
        raise DeclarationError(f"{step}: a choice needs at least one rule or a default")
    for target in [rule.target for rule in node.rules] + [node.default or node.rules[0].target]:
        if not known(target):
            raise DeclarationError(f"{step}: chooses unknown step {target!r}")


def _validate_block(step: str, node: Block, known: Callable[[str], bool]) -> None:
    if node.kind not in (PARALLEL, MAP):
        raise DeclarationError(f"{step}: kind must be {PARALLEL!r} or {MAP!r}, got {node.kind!r}")
    if not node.branches or (node.kind == MAP and len(node.branches) != 1):
        raise DeclarationError(f"{step}: a parallel needs branches, a map exactly one")
    for start in node.branches:
        if not known(start):
            raise DeclarationError(f"{step}: has a branch starting at unknown step {start!r}")
    if node.join not in (JOIN_ALL, JOIN_FIRST):
        raise DeclarationError(f"{step}: join must be {JOIN_ALL!r} or {JOIN_FIRST!r}")
    if node.kind == MAP and node.items is None:
        raise DeclarationError(f"{step}: a map needs items (the state's list to iterate)")
    if node.max_concurrency < 1 or node.max_items < 1 or node.tolerated_failures < 0:
        raise DeclarationError(
            f"{step}: max_concurrency and max_items must be at least 1, tolerated_failures >= 0"
        )
    if node.tolerated_percentage is not None and not 0 <= node.tolerated_percentage <= 100:
        raise DeclarationError(f"{step}: tolerated_percentage is from 0 to 100")


#: Characters Kafka allows in a topic name, and its longest name.
_TOPIC_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_TOPIC_MAX = 249
#: The longest suffix Sagalog adds to a saga's name to name its topics.
_LONGEST_SUFFIX = len(".snapshots")


def _validate_name(where: str, name: str) -> None:
    """The saga's name starts its topics' names (``<name>.journal``): it must make valid ones."""
    bad = sorted(set(name) - _TOPIC_CHARACTERS)
    if not name or bad or name in (".", ".."):
        shown = f" (not allowed: {''.join(bad)!r})" if bad else ""
        raise DeclarationError(
            f"{where}: the name must be a valid Kafka topic name: letters, digits, '.', '_' "
            f"and '-'{shown}"
        )
    if len(name) + _LONGEST_SUFFIX > _TOPIC_MAX:
        raise DeclarationError(
            f"{where}: the name is {len(name)} characters; at most "
            f"{_TOPIC_MAX - _LONGEST_SUFFIX} fit in a topic name with its suffix"
        )


def _validate_waited(where: str, spec: CommandSpec) -> None:
    """A waited-for event reaches the saga only from its topic, keyed by its key field."""
    for event in (*spec.success, *spec.failure):
        missing = [
            what
            for what, value in (("topic=", event.__topic__), ("key=", event.__key__))
            if value is None
        ]
        if missing:
            raise DeclarationError(
                f"{where}: waits for {event.__qualname__}, which declares no "
                f"{' and no '.join(missing)}: declare both on the event class so that the "
                "processor can route it to its instance"
            )
