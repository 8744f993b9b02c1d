"""Compiling a saga class's body (and its ``Branch`` classes) to the model's nodes.

Nodes are the class attributes that are a ``Step`` (or ``Wait``), a flow node (``sagas.flow``)
or a ``Fail``, in declaration order: a node's ``next`` is by default the node declared after it
in the same class (none for the last, or with ``end=True``). Targets given as node objects are
resolved to their names here. A task with several ``next`` becomes a parallel block
(``graph.implicit_forks``). Every error names the saga and the step.
"""

from __future__ import annotations

import inspect
from typing import Any

from sagas import flow as declared
from sagas.saga import Step
from stream_processors.codecs.records import DeclarationError, State
from stream_processors.core import model
from stream_processors.core.graph import implicit_forks
from stream_processors.core.model import MAP, PARALLEL, Block, CommandSpec, FlowNode, Task

_NODE_TYPES = (Step, declared.Node, model.Fail)


def _check_functions(step: str, node: Any, in_map: bool) -> None:
    """Functions run with (state), or (state, item) inside a map: refuse any that cannot."""
    named: list[tuple[str, Any]] = [
        ("build", getattr(node, "build", None)),
        ("input", getattr(node, "input", None)),
        ("until", getattr(node, "until", None)),
        ("items", getattr(node, "items", None)),
    ]
    named += [
        (f"rule {i + 1}", rule.condition) for i, rule in enumerate(getattr(node, "rules", ()))
    ]
    compensate = getattr(node, "compensate", None)
    if compensate is not None:
        named.append(("compensation build", compensate.build))
    for what, function in named:
        if function is not None and not _accepts(function, 2 if in_map else 1):
            shape = "(state, item)" if in_map else "(state)"
            raise DeclarationError(
                f"{step}: {what} must take {shape}{' inside a map' if in_map else ''}; "
                f"{getattr(function, '__name__', function)!r} does not"
            )


def _accepts(function: Any, count: int) -> bool:
    """Whether ``function`` can be called with ``count`` positional arguments."""
    try:
        inspect.signature(function).bind(*range(count))
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): trust it
        return True
    return True


def compile_paths(
    where: str, saga: type, state: type[State], limits: dict[str, Any] | None = None
) -> tuple[dict[str, Task], dict[str, FlowNode], str | None]:
    """The saga's tasks and flow nodes, and the name of its first node; into ``limits``, the
    steps that declare a ``limit=`` (a name, or a ``Limit`` of their own)."""
    compiler = _Compiler(where, state)
    first = compiler.path(saga, in_map=False)
    if limits is not None:
        limits.update(compiler.limits)
    tasks, flow = implicit_forks(compiler.tasks, compiler.flow)
    return tasks, flow, first  # type: ignore[return-value]


def _members(container: type) -> list[tuple[str, Any]]:
    return [(n, v) for n, v in container.__dict__.items() if isinstance(v, _NODE_TYPES)]


class _Compiler:
    def __init__(self, where: str, state: type[State]) -> None:
        self.where = where
        self.state = state
        self.tasks: dict[str, Task] = {}
        self.flow: dict[str, FlowNode] = {}
        self.names: dict[int, str] = {}
        self.limits: dict[str, Any] = {}

    def path(self, container: type, in_map: bool) -> str | None:
        """Compile the nodes of one class body; the name of its first node."""
        members = _members(container)
        for name, node in members:
            if name in self.names.values():
                raise DeclarationError(
                    f"{self.where}: two steps named {name!r} (one in {container.__qualname__}); "
                    "step names are unique across the saga and its branches"
                )
            self.names[id(node)] = name
        for index, (name, node) in enumerate(members):
            following = members[index + 1][0] if index + 1 < len(members) else None
            self.node(name, node, following, in_map)
        return members[0][0] if members else None

    def resolve(self, step: str, target: Any) -> str:
        if isinstance(target, str):
            return target
        name = self.names.get(id(target))
        if name is None:
            raise DeclarationError(
                f"{self.where}, step {step!r}: targets {target!r}, which is not a step of the saga"
            )
        return name

    def _next(self, name: str, node: Any, following: str | None) -> tuple[str, ...]:
        if getattr(node, "end", False):
            return ()
        given = node.next
        if given is None:
            return (following,) if following else ()
        return tuple(self.resolve(name, target) for target in given)

    def _catch(self, name: str, node: Any) -> dict[str, str]:
        return {error: self.resolve(name, target) for error, target in node.catch.items()}

    def node(self, name: str, node: Any, following: str | None, in_map: bool) -> None:
        step = f"{self.where}, step {name!r}"
        _check_functions(step, node, in_map)
        if isinstance(node, Step):
            self.tasks[name] = self._task(step, name, node, following, in_map)
            if getattr(node, "limit", None) is not None:
                self.limits[name] = node.limit
        elif isinstance(node, declared.Child):
            self.tasks[name] = self._child(step, name, node, following)
        elif isinstance(node, model.Fail):
            self.flow[name] = model.End(name, False, node.reason, node.error)
        elif isinstance(node, declared.Succeed):
            self.flow[name] = model.End(name, True, node.reason)
        elif isinstance(node, declared.Choice):
            rules = tuple(
                model.When(rule.condition, self.resolve(name, rule.target)) for rule in node.rules
            )
            default = None if node.default is None else self.resolve(name, node.default)
            self.flow[name] = model.Choice(name, rules, default, node.max_visits)
        elif isinstance(node, declared.Sleep):
            following_ = self._next(name, node, following)
            self.flow[name] = model.Sleep(
                name, node.delay_ms, node.until, following_, node.max_visits
            )
        elif isinstance(node, declared.Parallel | declared.Map):
            self.flow[name] = self._block(name, node, following, in_map)
        else:
            raise DeclarationError(f"{step}: {type(node).__name__} is not a step")

    def _compensation(self, step: str, node: Any, in_map: bool) -> CommandSpec | None:
        if node.compensate is None:
            return None
        return node.compensate.compile(f"{step} compensation", self.state, in_map)  # type: ignore[no-any-return]

    def _task(
        self, step: str, name: str, node: Step[Any], following: str | None, in_map: bool
    ) -> Task:
        return Task(
            name,
            node.compile(step, self.state, in_map),
            self._compensation(step, node, in_map),
            self._next(name, node, following),
            self._catch(name, node),
            node.max_visits,
        )

    def _child(self, step: str, name: str, node: declared.Child, following: str | None) -> Task:
        child = getattr(node.saga, "definition", None)
        if not isinstance(child, model.SagaDefinition):
            raise DeclarationError(f"{step}: {node.saga!r} is not a declared Saga class")
        spec = CommandSpec(
            child.start,
            node.input,
            f"{child.name}.inbox",
            (),
            (),
            node.retry,
            node.timeout_ms,
            child=child.name,
            child_key=child.key,
        )
        return Task(
            name,
            spec,
            self._compensation(step, node, False),
            self._next(name, node, following),
            self._catch(name, node),
            node.max_visits,
        )

    def _block(self, name: str, node: Any, following: str | None, in_map: bool) -> Block:
        step = f"{self.where}, step {name!r}"
        if isinstance(node, declared.Map):
            branch = self._branch(step, node.branch, in_map=True)
            return Block(
                name,
                MAP,
                (branch,),
                self._next(name, node, following),
                self._catch(name, node),
                gather=node.gather,
                items=node.items,
                max_concurrency=node.max_concurrency,
                max_items=node.max_items,
                tolerated_failures=node.tolerated_failures,
                tolerated_percentage=node.tolerated_percentage,
                max_visits=node.max_visits,
            )
        branches = tuple(self._branch(step, b, in_map) for b in node.branches)
        return Block(
            name,
            PARALLEL,
            branches,
            self._next(name, node, following),
            self._catch(name, node),
            join=node.join,
            gather=node.gather,
            max_visits=node.max_visits,
        )

    def _branch(self, step: str, branch: Any, in_map: bool) -> str:
        if not (isinstance(branch, type) and issubclass(branch, declared.Branch)):
            raise DeclarationError(f"{step}: a branch must be a Branch class, got {branch!r}")
        first = self.path(branch, in_map)
        if first is None:
            raise DeclarationError(f"{step}: branch {branch.__qualname__} declares no steps")
        return first
