"""The saga model every way of declaring a saga compiles to: tasks, transitions, compensations.

A ``SagaDefinition`` is plain data plus pure functions. Python classes (``sagas.Saga``) compile
to it today; a declarative JSON/YAML definition will compile to the same thing. The engine only
ever sees this model.

The model is a state machine whose *active* states are the steps with a command in flight. More
than one step may be active at once (``Task.next`` is a tuple), so parallel branches fit without
changing the model; an instance completes when no step is active and no step is left to start.

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
from stream_processors.core.policy import RetryPolicy


class CommandFailed(Event, schema="sagalog.CommandFailed"):
    """A worker's reply when its handler raised a transient error (see ``sagas.worker``)."""

    error: str
    message: str


class OperatorAction(Event, schema="sagalog.OperatorAction"):
    """An operator's retry, cancel or resolve, sent to one instance by the ``sagas`` CLI."""

    action: str
    by: str
    reason: str


#: The actions an ``OperatorAction`` may name; the processor ignores any other.
OPERATOR_ACTIONS = ("retry", "cancel", "resolve")

#: Inputs every saga takes, whatever it declares.
ENGINE_INPUTS: tuple[type[Record], ...] = (CommandFailed, OperatorAction)


@dataclass(frozen=True)
class Fail:
    """Returned by a handler: fail the saga now (compensating what completed)."""

    reason: str


@dataclass(frozen=True)
class Complete:
    """Returned by a handler: the saga is done, whatever steps remain."""


#: What a handler may return, in any mix: commands to send (fire and forget), or an outcome.
Directive = Command | Fail | Complete
Handler = Callable[[Any, Any, int], Iterable[Directive]]
Evolver = Callable[[Any, Any], Any]
Builder = Callable[[Any], Command]


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

    command: type[Command] | None
    build: Builder | None
    topic: str | None
    success: tuple[type[Event], ...]
    failure: tuple[type[Event], ...] = ()
    retry: RetryPolicy = DEFAULT_RETRY
    timeout_ms: int | None = None


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

    @cached_property
    def inputs(self) -> frozenset[type[Record]]:
        """Every record type this saga accepts on its inbox (computed once: asked per input)."""
        return frozenset({self.start, *self.replies, *self.handlers, *ENGINE_INPUTS})

    def specs(self) -> list[CommandSpec]:
        return [
            spec
            for task in self.tasks.values()
            for spec in (task.action, task.compensation)
            if spec is not None
        ]

    def command_topics(self) -> frozenset[str]:
        return frozenset(spec.topic for spec in self.specs() if spec.topic is not None)

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
    if not definition.tasks:
        raise DeclarationError(f"{where}: declares no steps")
    if definition.key not in definition.start.__fields__:
        raise DeclarationError(
            f"{where}: key field {definition.key!r} is not a field of the start event "
            f"{definition.start.__qualname__} (fields: {', '.join(definition.start.__fields__)})"
        )
    for task in definition.tasks.values():
        for target in task.next:
            if target not in definition.tasks:
                raise DeclarationError(
                    f"{where}: step {task.name!r} goes to unknown step {target!r}"
                )
        if not task.action.success:
            raise DeclarationError(f"{where}: step {task.name!r} has no success reply")
        for error, target in task.catch.items():
            if target != COMPENSATE and target not in definition.tasks:
                raise DeclarationError(
                    f"{where}: step {task.name!r} catches {error!r} with unknown step {target!r}"
                )
        if task.action.command is None and task.action.timeout_ms is None:
            raise DeclarationError(f"{where}: wait step {task.name!r} needs a timeout")
    for name in definition.first:
        if name not in definition.tasks:
            raise DeclarationError(f"{where}: starts with unknown step {name!r}")
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
