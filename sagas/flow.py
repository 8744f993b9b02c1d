"""Control flow in a saga class: ``Choice``, ``Parallel``, ``Map``, ``Sleep``, ``Child``, ends.

These sit in a saga's class body next to its ``Step``s, in the order they run::

    class Fulfilment(Saga, name="fulfilment"):
        start, state = OrderPlaced, OrderState
        ...
        reserve = Step(ReserveStock, success=StockReserved)
        route = Choice(When(lambda s: s.express, "express"), default="standard")
        express = Step(BookCourier, success=CourierBooked, next="bill")
        standard = Sleep(seconds=3600)
        bill = Parallel(Invoicing, Loyalty)          # each a ``Branch`` class of its own steps
        lines = Map(lambda s: s.lines, PackLine, max_concurrency=4, tolerated_failures=1)
        done = Succeed()

A target (``next``, a rule's, a ``catch``'s) is a node's name or the node itself. A ``Branch``
is a class whose body is a path of nodes, like a saga's: a parallel runs its branches side by
side, a map runs its one branch once per item of the list ``items(state)`` returns. Inside a map
the functions of the branch's nodes take ``(state, item)``; everywhere else ``(state)``.
``Fail(reason)`` (the handler outcome) declared in a class body is a terminal node too.
The saga's class compiles all of it to the model (``stream_processors.core.model``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from stream_processors.core.model import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_ITEMS,
    JOIN_ALL,
)
from stream_processors.core.policy import NO_RETRY, RetryPolicy

if TYPE_CHECKING:
    from sagas.saga import Compensate, Saga

S = TypeVar("S")
#: What ``next``, a rule or a ``catch`` may name: a node of the same class, or its name.
Target = Any


def targets(value: Target | Iterable[Target] | None) -> tuple[Target, ...] | None:
    """``next`` as given: one target, several, or None (the node declared after it)."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        return (value,)
    return tuple(value)


def catches(catch: Mapping[Any, Target] | None) -> dict[str, Target]:
    """A ``catch`` keyed by error names (a failure reply class by its name)."""
    return {
        error if isinstance(error, str) else error.__name__: target
        for error, target in (catch or {}).items()
    }


class Node:
    """What every declared node has: where it goes, and how often it may be entered."""

    def __init__(
        self,
        *,
        next: Target | Iterable[Target] | None = None,
        end: bool = False,
        catch: Mapping[Any, Target] | None = None,
        max_visits: int | None = None,
    ) -> None:
        self.next = targets(next)
        self.end = end
        self.catch = catches(catch)
        self.max_visits = max_visits


class Branch:
    """A path of nodes for a ``Parallel`` or a ``Map``: subclass it and declare them in order."""


class When(Generic[S]):
    """A Choice rule: go to ``target`` when ``condition(state)`` holds."""

    def __init__(self, condition: Callable[[S], bool], target: Target) -> None:
        self.condition = condition
        self.target = target


class Choice(Node):
    """Go to the first rule's target that holds, else ``default``; with neither, the path fails
    with a reason naming the choice."""

    def __init__(
        self, *rules: When[Any], default: Target | None = None, max_visits: int | None = None
    ) -> None:
        super().__init__(max_visits=max_visits)
        self.rules = rules
        self.default = default


class Parallel(Node):
    """Run ``branches`` (``Branch`` classes) side by side; go on when all have succeeded
    (``join="first"``: when one has, cancelling the others). A failed branch cancels its
    running siblings and fails the parallel (its ``catch`` applies). ``gather(state, results)``
    takes each branch's last reply, in order, into the state."""

    def __init__(
        self,
        *branches: type[Branch],
        join: str = JOIN_ALL,
        gather: Callable[[Any, list[Any]], Any] | None = None,
        next: Target | Iterable[Target] | None = None,
        end: bool = False,
        catch: Mapping[Any, Target] | None = None,
        max_visits: int | None = None,
    ) -> None:
        super().__init__(next=next, end=end, catch=catch, max_visits=max_visits)
        self.branches = branches
        self.join = join
        self.gather = gather


class Map(Node):
    """Run ``branch`` once per item of ``items(state)``, at most ``max_concurrency`` at once
    (the others queue), tolerating ``tolerated_failures`` failed items (or a
    ``tolerated_percentage``); more than ``max_items`` items fail the path. ``gather(state,
    results)`` takes each item's last reply (None for a failed item), in item order."""

    def __init__(
        self,
        items: Callable[[Any], Iterable[Any]],
        branch: type[Branch],
        *,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_items: int = DEFAULT_MAX_ITEMS,
        tolerated_failures: int = 0,
        tolerated_percentage: float | None = None,
        gather: Callable[[Any, list[Any]], Any] | None = None,
        next: Target | Iterable[Target] | None = None,
        end: bool = False,
        catch: Mapping[Any, Target] | None = None,
        max_visits: int | None = None,
    ) -> None:
        super().__init__(next=next, end=end, catch=catch, max_visits=max_visits)
        self.items = items
        self.branch = branch
        self.max_concurrency = max_concurrency
        self.max_items = max_items
        self.tolerated_failures = tolerated_failures
        self.tolerated_percentage = tolerated_percentage
        self.gather = gather


class Sleep(Node):
    """A durable wait: ``seconds``, or until the epoch milliseconds ``until(state)`` returns."""

    def __init__(
        self,
        *,
        seconds: float | None = None,
        until: Callable[[Any], int] | None = None,
        next: Target | Iterable[Target] | None = None,
        end: bool = False,
        max_visits: int | None = None,
    ) -> None:
        super().__init__(next=next, end=end, max_visits=max_visits)
        self.delay_ms = None if seconds is None else round(seconds * 1000)
        self.until = until


class Succeed(Node):
    """End the path here, successfully (the saga completes on its main path)."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(end=True)
        self.reason = reason


class Child(Node):
    """Start the saga ``saga`` with the start event ``input(state)`` returns, and wait for it to
    end: completed is this step's success; failed, compensated or resolved its failure (error
    ``CHILD_FAILED``). Cancelling the parent (or a failed sibling branch) cancels the child, and
    so does the step's ``timeout``. A child step is not retried (its child runs once): ``retry``
    allows one attempt only."""

    def __init__(
        self,
        saga: type[Saga],
        input: Callable[[Any], Any],
        *,
        next: Target | Iterable[Target] | None = None,
        end: bool = False,
        catch: Mapping[Any, Target] | None = None,
        retry: RetryPolicy = NO_RETRY,
        timeout: float | None = None,
        compensate: Compensate[Any] | None = None,
        max_visits: int | None = None,
    ) -> None:
        super().__init__(next=next, end=end, catch=catch, max_visits=max_visits)
        self.saga = saga
        self.input = input
        self.retry = retry
        self.timeout_ms = None if timeout is None else round(timeout * 1000)
        self.compensate = compensate


__all__ = [
    "Branch",
    "Child",
    "Choice",
    "Map",
    "Node",
    "Parallel",
    "Sleep",
    "Succeed",
    "When",
]
