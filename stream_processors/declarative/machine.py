"""The States Language compiled to the engine's model: a ``SagaDefinition`` with a document flow.

``compile_machine(document, name)`` takes a loaded definition (a dict, from JSON or YAML) and
returns the ``SagaDefinition`` the engine runs, with the same guarantees as a Python saga. Each
state becomes a node of the model (``stream_processors.core.model``):

- ``Task`` → a ``Task`` that sends ``sagalog.TaskCommand`` to its service's task topic and takes
  ``TaskSucceeded``/``TaskFailed`` (matched by command id), with a ``TimeoutSeconds`` timeout;
- ``Choice`` → a ``Choice`` whose rules read the state's effective input;
- ``Parallel`` and ``Map`` → a ``Block`` (a map's items come from ``ItemsPath``);
- ``Wait`` → a ``Sleep``; ``Succeed`` and ``Fail`` → an ``End``; ``Pass`` → a ``Pass``.

The data flow (``InputPath``, ``Parameters``, ``ResultSelector``, ``ResultPath``, ``OutputPath``,
``Catch``'s ``ResultPath``) and the ``Retry``/``Catch`` rules are this module's ``Machine``, the
definition's ``DocumentFlow``: the decider asks it, per node, what a path's document becomes,
and journals the answer. The flow control (``Limits``, a Task's ``Limit``, ``Priority``) is
``flow_control``'s, compiled as a Python saga's into ``SagaDefinition.throttle``.
``STATE_FIELDS`` lists, per state type, every field that is understood; anything else is
refused at load with the state and the field named.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from stream_processors.codecs.dynamic import event_class
from stream_processors.codecs.records import DeclarationError, Event, Record
from stream_processors.core.documents import PathFailure, Scope, begin_documents
from stream_processors.core.model import (
    DEFAULT_MAX_ITEMS,
    MAP,
    PARALLEL,
    Block,
    Choice,
    CommandSpec,
    End,
    FlowNode,
    Pass,
    SagaDefinition,
    Sleep,
    Task,
    When,
    validate,
)
from stream_processors.core.policy import HEARTBEAT_TIMEOUT, NO_RETRY, TIMEOUT, TRANSIENT
from stream_processors.core.tasks import TaskCommand, json_text, task_topic
from stream_processors.declarative import choice, dataflow, flow_control, timing
from stream_processors.declarative import errors as states_errors
from stream_processors.declarative.errors import Catcher, Retrier, StatesError
from stream_processors.declarative.problems import DefinitionError
from stream_processors.declarative.values import JSON

T = TypeVar("T")

#: The fields every state may have, and those of each type (the supported set: see the table
#: in docs/definitions.md).
_COMMON = frozenset({"Type", "Comment", "Next", "End", "InputPath", "OutputPath"})
STATE_FIELDS: Mapping[str, frozenset[str]] = {
    "Task": _COMMON
    | {"Resource", "Service", "Action", "Parameters", "ResultSelector", "ResultPath"}
    | {"Retry", "Catch", "TimeoutSeconds", "HeartbeatSeconds", "Topic", "Limit"},
    "Pass": _COMMON | {"Result", "ResultPath", "Parameters"},
    "Choice": frozenset({"Type", "Comment", "InputPath", "OutputPath", "Choices", "Default"}),
    "Wait": _COMMON | {"Seconds", "Timestamp", "SecondsPath", "TimestampPath"},
    "Succeed": frozenset({"Type", "Comment", "InputPath", "OutputPath"}),
    "Fail": frozenset({"Type", "Comment", "Error", "Cause", "ErrorPath", "CausePath"}),
    "Parallel": _COMMON
    | {"Branches", "Parameters", "ResultSelector", "ResultPath", "Catch", "Retry"},
    "Map": _COMMON
    | {"ItemsPath", "ItemSelector", "Parameters", "ItemProcessor", "Iterator"}
    | {"MaxConcurrency", "ToleratedFailureCount", "ToleratedFailurePercentage"}
    | {"ResultSelector", "ResultPath", "Catch", "Retry", "Label"},
}
#: The top-level fields understood (``StartState`` and ``WorkflowName`` are the seed's).
MACHINE_FIELDS = frozenset(
    {"StartAt", "StartState", "States", "Comment", "TimeoutSeconds", "Version", "WorkflowName"}
    | {"QueryLanguage", "StartOn", "Limits", "Priority"}
)
_BRANCH_FIELDS = frozenset({"StartAt", "States", "Comment", "ProcessorConfig"})

#: Engine error names as the States Language calls them.
_ERROR_NAMES = {
    TIMEOUT: states_errors.TIMEOUT,
    HEARTBEAT_TIMEOUT: states_errors.HEARTBEAT_TIMEOUT,
    "sagalog.NoChoice": states_errors.NO_CHOICE_MATCHED,
    "sagalog.TooManyItems": states_errors.DATA_LIMIT_EXCEEDED,
}


class ExecutionStarted(Event, schema="sagalog.ExecutionStarted", key="execution"):
    """Starts an execution of a declarative definition: its id and its input as JSON."""

    execution: str
    input: str


def states_error(errors: Sequence[str]) -> str:
    """The one error name a Retrier or Catcher matches, from the engine's names for a failure
    (a worker's error name first; then the family names the engine adds)."""
    named = [e for e in errors if e not in (TRANSIENT, states_errors.TASK_FAILED)]
    first = named[0] if named else (errors[0] if errors else states_errors.TASK_FAILED)
    return _ERROR_NAMES.get(first, first)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _context(name: str, scope: Scope) -> JSON:
    """The context object (``$$``) of a state: the execution, the state, a map's item."""
    context: dict[str, JSON] = {
        "Execution": {
            "Id": scope.execution,
            "Name": scope.execution,
            "Input": scope.input,
            "StartTime": _iso(scope.started_ms),
        },
        "State": {
            "Name": scope.state,
            "EnteredTime": _iso(scope.entered_ms),
            "RetryCount": scope.retry_count,
        },
        "StateMachine": {"Id": name, "Name": name},
    }
    if scope.item_index is not None:
        context["Map"] = {"Item": {"Index": scope.item_index, "Value": scope.item}}
    return context


def _path_failure(error: StatesError) -> PathFailure:
    return PathFailure(error.error, error.cause)


@dataclass(frozen=True)
class _State:
    """One compiled state: its fields as the data flow needs them."""

    name: str
    type: str
    raw: Mapping[str, Any]
    retriers: tuple[Retrier, ...] = ()
    catchers: tuple[Catcher, ...] = ()
    choices: tuple[tuple[choice.ChoiceRule, str], ...] = ()
    #: A map's item selector (``ItemSelector`` or its older name ``Parameters``).
    item_selector: Any = None

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    @property
    def input_path(self) -> str | None:
        return _path(self.raw, "InputPath")

    @property
    def output_path(self) -> str | None:
        return _path(self.raw, "OutputPath")

    @property
    def result_path(self) -> str | None:
        return _path(self.raw, "ResultPath")


@dataclass
class Machine:
    """The compiled machine's ``DocumentFlow``: per node, what its path's document becomes."""

    name: str
    states: dict[str, _State] = field(default_factory=dict)

    def _state(self, node: str) -> _State:
        return self.states[node]

    def _run(self, work: Callable[[], T]) -> T:
        """``work()``, its States Language errors raised as the engine's ``PathFailure``."""
        try:
            return work()
        except StatesError as error:
            raise _path_failure(error) from None

    def effective_input(self, node: str, scope: Scope) -> JSON:
        """InputPath then Parameters: what a task sends, a parallel's branches start with."""
        state = self._state(node)
        context = _context(self.name, scope)
        seed = f"{scope.execution}/{node}/{scope.retry_count}"
        return self._run(
            lambda: dataflow.effective_input(
                scope.document, state.input_path, state.get("Parameters"), context, seed
            )
        )

    def task_output(self, node: str, scope: Scope, result: Any) -> Any:
        return self._output(node, scope, result)

    def _output(self, node: str, scope: Scope, result: JSON) -> JSON:
        state = self._state(node)
        context = _context(self.name, scope)
        return self._run(
            lambda: dataflow.apply_result(
                scope.document,
                result,
                state.get("ResultSelector"),
                state.result_path,
                state.output_path,
                context,
                f"{scope.execution}/{node}",
            )
        )

    def flow_output(self, node: str, scope: Scope) -> Any:
        state = self._state(node)
        if state.type == "Pass":
            effective = self.effective_input(node, scope)
            result = state.raw.get("Result", effective)
            context = _context(self.name, scope)
            return self._run(
                lambda: dataflow.apply_result(
                    scope.document, result, None, state.result_path, state.output_path, context
                )
            )
        context = _context(self.name, scope)
        return self._run(
            lambda: dataflow.select(
                dataflow.select(scope.document, state.input_path, context),
                state.output_path,
                context,
            )
        )

    def holds(self, node: str, index: int, scope: Scope) -> bool:
        """Whether rule ``index`` of Choice ``node`` holds for its effective input."""
        state = self._state(node)
        rule = state.choices[index][0]
        context = _context(self.name, scope)
        effective = self._run(lambda: dataflow.select(scope.document, state.input_path, context))
        return bool(self._run(lambda: rule(effective, context)))

    def retriers(self, node: str) -> int:
        return len(self._state(node).retriers)

    def retry(
        self, node: str, errors: Sequence[str], spent: Sequence[int], seed: str
    ) -> tuple[int, int] | None:
        retriers = self._state(node).retriers
        return states_errors.next_retry(retriers, spent, states_error(errors), seed)

    def caught(
        self, node: str, errors: Sequence[str], cause: str, scope: Scope
    ) -> tuple[str, Any] | None:
        error = states_error(errors)
        catcher = states_errors.catcher_for(self._state(node).catchers, error)
        if catcher is None:
            return None
        output: JSON = {"Error": error, "Cause": cause}
        document = self._run(lambda: dataflow.place(scope.document, output, catcher.result_path))
        return catcher.next, document

    def branch_inputs(self, node: str, scope: Scope) -> list[Any]:
        state = self._state(node)
        if state.type == "Parallel":
            effective = self.effective_input(node, scope)
            return [effective] * len(state.get("Branches"))
        context = _context(self.name, scope)
        selected = self._run(lambda: dataflow.select(scope.document, state.input_path, context))
        return self._run(
            lambda: dataflow.map_item_inputs(
                selected,
                state.get("ItemsPath", dataflow.WHOLE),
                state.item_selector,
                context,
                f"{scope.execution}/{node}",
            )
        )

    def joined(self, node: str, scope: Scope, results: Sequence[Any]) -> Any:
        return self._output(node, scope, list(results))

    def failure(self, node: str, scope: Scope) -> tuple[str, str]:
        state = self._state(node)
        context = _context(self.name, scope)
        error = state.get("Error")
        cause = state.get("Cause")
        if "ErrorPath" in state.raw:
            error = self._run(
                lambda: dataflow.select(scope.document, state.get("ErrorPath"), context)
            )
        if "CausePath" in state.raw:
            cause = self._run(
                lambda: dataflow.select(scope.document, state.get("CausePath"), context)
            )
        return str(error or states_errors.TASK_FAILED), str(cause or f"failed at {node!r}")

    def wake_at(self, node: str, scope: Scope) -> int:
        """When a Wait with a path or a timestamp ends, in epoch ms."""
        state = self._state(node)
        context = _context(self.name, scope)
        selected = self._run(lambda: dataflow.select(scope.document, state.input_path, context))
        return self._run(lambda: timing.wait_until_ms(state.raw, selected, scope.entered_ms))


# -- compiling --------------------------------------------------------------------------------


@dataclass
class _Compiler:
    """Walks the states (nested branches too) into nodes of the model."""

    machine: Machine
    tasks: dict[str, Task] = field(default_factory=dict)
    flow: dict[str, FlowNode] = field(default_factory=dict)
    #: The Tasks' ``Limit`` fields: the limit each counts against instead of its service's.
    step_limits: dict[str, str] = field(default_factory=dict)
    #: The states of the scope being compiled: what a ``Next`` may name.
    _siblings: Mapping[str, Any] = field(default_factory=dict)

    def scope(self, states: object, start: object, where: str, start_field: str) -> str:
        """Compile a scope (the machine, or a branch): its states; returns its start state."""
        if not isinstance(states, Mapping) or not states:
            raise DefinitionError("needs at least one state", state=where, field="States")
        if not isinstance(start, str) or start not in states:
            raise DefinitionError(
                f"names {start!r}, which is not one of its states ({', '.join(states)})",
                state=where,
                field=start_field,
            )
        for name, body in states.items():
            self.state(str(name), body, states)
        return start

    def state(self, name: str, body: object, siblings: Mapping[str, Any]) -> None:
        if not isinstance(body, Mapping):
            raise DefinitionError("a state is an object", state=name)
        if name in self.machine.states:
            raise DefinitionError(
                "two states have this name (names are unique in the whole machine)", state=name
            )
        kind = str(body.get("Type"))
        if "Type" not in body and "Service" in body and "Action" in body:
            kind = "Task"  # the seed's tasks say what they call, not their type
        if kind not in STATE_FIELDS:
            raise DefinitionError(
                f"{kind!r} is not a state type ({', '.join(STATE_FIELDS)})",
                state=name,
                field="Type",
            )
        unknown = sorted(set(body) - STATE_FIELDS[kind])
        if unknown:
            raise DefinitionError(
                f"{unknown[0]!r} is not supported on a {kind} state "
                f"(supported: {', '.join(sorted(STATE_FIELDS[kind]))})",
                state=name,
                field=unknown[0],
            )
        following = self.transition(name, kind, body, siblings)
        getattr(self, f"_{kind.lower()}")(name, dict(body), following)

    def transition(
        self, name: str, kind: str, body: Mapping[str, Any], siblings: Mapping[str, Any]
    ) -> tuple[str, ...]:
        """The state's ``Next`` (checked against its scope's states), or () for an end."""
        if kind in ("Choice", "Succeed", "Fail"):
            return ()
        has_next, ends = "Next" in body, body.get("End") is True
        if has_next == ends:
            raise DefinitionError(
                "needs exactly one of Next and End: true", state=name, field="Next"
            )
        if "End" in body and body["End"] is not True:
            raise DefinitionError("End must be true when given", state=name, field="End")
        if ends:
            return ()
        target = body["Next"]
        self.known(name, "Next", target, siblings)
        return (target,)

    @staticmethod
    def known(name: str, where: str, target: object, siblings: Mapping[str, Any]) -> None:
        if not isinstance(target, str) or target not in siblings:
            raise DefinitionError(
                f"{target!r} is not a state of this scope ({', '.join(siblings)})",
                state=name,
                field=where,
            )

    def paths(self, name: str, body: Mapping[str, Any], *fields: str) -> None:
        for key in fields:
            value = body.get(key, dataflow.WHOLE)
            if value is None:
                continue
            result = key == "ResultPath"  # a place in the document: no context object
            problem = (
                dataflow.path_problem(value, reference=result, context=not result)
                if isinstance(value, str)
                else f"{value!r} is not a path"
            )
            if problem is not None:
                raise DefinitionError(problem, state=name, field=key)
        for key in ("Parameters", "ResultSelector", "ItemSelector"):
            if key in body:
                for where, message in dataflow.template_problems(body[key], key):
                    raise DefinitionError(message, state=name, field=where)

    def errors_of(
        self, name: str, body: Mapping[str, Any], siblings: Mapping[str, Any]
    ) -> tuple[tuple[Retrier, ...], tuple[Catcher, ...]]:
        retriers = states_errors.parse_retriers(name, body["Retry"]) if "Retry" in body else ()
        catchers = states_errors.parse_catchers(name, body["Catch"]) if "Catch" in body else ()
        for index, catcher in enumerate(catchers):
            self.known(name, f"Catch[{index}].Next", catcher.next, siblings)
            if catcher.result_path is not None:
                problem = dataflow.path_problem(catcher.result_path, reference=True, context=False)
                if problem:
                    raise DefinitionError(problem, state=name, field=f"Catch[{index}].ResultPath")
        return retriers, catchers

    def add(self, state: _State) -> None:
        self.machine.states[state.name] = state

    @staticmethod
    def catch_map(catchers: Sequence[Catcher]) -> dict[str, str]:
        """The catch targets as the model (diagrams, the graph) sees them."""
        return {" | ".join(c.error_equals): c.next for c in catchers}

    # -- one method per state type --------------------------------------------------------------

    def _task(self, name: str, body: dict[str, Any], following: tuple[str, ...]) -> None:
        siblings = self._siblings
        retriers, catchers = self.errors_of(name, body, siblings)
        self.paths(name, body, "InputPath", "OutputPath", "ResultPath")
        service, action = _service_action(name, body)
        timeout = _seconds(name, body, "TimeoutSeconds")
        heartbeat = _seconds(name, body, "HeartbeatSeconds")
        if heartbeat is not None and timeout is not None and heartbeat >= timeout:
            raise DefinitionError(
                "must be smaller than TimeoutSeconds", state=name, field="HeartbeatSeconds"
            )
        topic = body.get("Topic") or _topic(name, service)
        if "Limit" in body:
            if not isinstance(body["Limit"], str) or not body["Limit"]:
                raise DefinitionError("must name one of the Limits", state=name, field="Limit")
            self.step_limits[name] = body["Limit"]
        self.add(_State(name, "Task", body, retriers, catchers))
        machine = self.machine

        def build(scope: Scope) -> TaskCommand:
            effective = machine.effective_input(name, scope)
            return TaskCommand(
                service=service,
                action=action,
                input=json_text(effective),
                workflow=machine.name,
                execution=scope.execution,
                state=name,
                attempt=scope.retry_count + 1,
                timeout_seconds=timeout,
                heartbeat_seconds=heartbeat,
            )

        spec = CommandSpec(
            command=TaskCommand,
            build=build,
            topic=topic,
            success=(),
            retry=NO_RETRY,
            timeout_ms=None if timeout is None else timeout * 1000,
            heartbeat_ms=None if heartbeat is None else heartbeat * 1000,
            label=f"{service}.{action}",
        )
        self.tasks[name] = Task(name, spec, next=following, catch=self.catch_map(catchers))

    def _pass(self, name: str, body: dict[str, Any], following: tuple[str, ...]) -> None:
        self.paths(name, body, "InputPath", "OutputPath", "ResultPath")
        self.add(_State(name, "Pass", body))
        self.flow[name] = Pass(name, following)

    def _choice(self, name: str, body: dict[str, Any], following: tuple[str, ...]) -> None:
        self.paths(name, body, "InputPath", "OutputPath")
        rules = body.get("Choices")
        if not isinstance(rules, list) or not rules:
            raise DefinitionError("needs a non-empty list of rules", state=name, field="Choices")
        compiled = []
        for index, rule in enumerate(rules):
            where = f"Choices[{index}]"
            rule_fn = choice.compile_rule(rule, state=name, field=where)
            self.known(name, f"{where}.Next", rule.get("Next"), self._siblings)
            compiled.append((rule_fn, rule["Next"]))
        default = body.get("Default")
        if default is not None:
            self.known(name, "Default", default, self._siblings)
        self.add(_State(name, "Choice", body, choices=tuple(compiled)))
        machine = self.machine

        def condition(index: int) -> Callable[[Scope], bool]:
            def holds(scope: Scope) -> bool:
                return machine.holds(name, index, scope)

            holds.__name__ = compiled[index][0].text
            return holds

        whens = tuple(When(condition(i), target) for i, (_, target) in enumerate(compiled))
        self.flow[name] = Choice(name, whens, default)

    def _wait(self, name: str, body: dict[str, Any], following: tuple[str, ...]) -> None:
        self.paths(name, body, "InputPath", "OutputPath")
        given = [k for k in ("Seconds", "Timestamp", "SecondsPath", "TimestampPath") if k in body]
        if len(given) != 1:
            raise DefinitionError(
                "needs exactly one of Seconds, Timestamp, SecondsPath, TimestampPath",
                state=name,
                field=given[1] if len(given) > 1 else "Seconds",
            )
        self.add(_State(name, "Wait", body))
        if given[0] == "Seconds":
            seconds = _seconds(name, body, "Seconds", least=0)
            assert seconds is not None
            self.flow[name] = Sleep(name, delay_ms=seconds * 1000, next=following)
            return
        if given[0] == "Timestamp" and choice.timestamp(body["Timestamp"]) is None:
            raise DefinitionError(
                f"{body['Timestamp']!r} is not an RFC 3339 timestamp", state=name, field="Timestamp"
            )
        machine = self.machine

        def until(scope: Scope) -> int:
            return machine.wake_at(name, scope)

        until.__name__ = str(body[given[0]])
        self.flow[name] = Sleep(name, until=until, next=following)

    def _succeed(self, name: str, body: dict[str, Any], following: tuple[str, ...]) -> None:
        self.paths(name, body, "InputPath", "OutputPath")
        self.add(_State(name, "Succeed", body))
        self.flow[name] = End(name, succeed=True)

    def _fail(self, name: str, body: dict[str, Any], following: tuple[str, ...]) -> None:
        for pair in (("Error", "ErrorPath"), ("Cause", "CausePath")):
            if all(key in body for key in pair):
                raise DefinitionError(
                    f"gives both {pair[0]} and {pair[1]}", state=name, field=pair[1]
                )
        self.add(_State(name, "Fail", body))
        error = str(body.get("Error") or "States.Fail")
        self.flow[name] = End(name, succeed=False, reason=body.get("Cause"), error=error)

    def _parallel(self, name: str, body: dict[str, Any], following: tuple[str, ...]) -> None:
        self._refuse_retry(name, body)
        _, catchers = self.errors_of(name, body, self._siblings)
        self.paths(name, body, "InputPath", "OutputPath", "ResultPath")
        branches = body.get("Branches")
        if not isinstance(branches, list) or not branches:
            raise DefinitionError(
                "needs a non-empty list of branches", state=name, field="Branches"
            )
        starts = tuple(
            self.branch(name, f"Branches[{i}]", branch) for i, branch in enumerate(branches)
        )
        self.add(_State(name, "Parallel", body, catchers=catchers))
        catch = self.catch_map(catchers)
        self.flow[name] = Block(name, PARALLEL, starts, next=following, catch=catch)

    def _map(self, name: str, body: dict[str, Any], following: tuple[str, ...]) -> None:
        self._refuse_retry(name, body)
        _, catchers = self.errors_of(name, body, self._siblings)
        self.paths(name, body, "InputPath", "OutputPath", "ResultPath", "ItemsPath")
        processor_field = "ItemProcessor" if "ItemProcessor" in body else "Iterator"
        if processor_field not in body:
            raise DefinitionError(
                "needs ItemProcessor (or Iterator)", state=name, field="ItemProcessor"
            )
        processor = body[processor_field]
        config = processor.get("ProcessorConfig", {}) if isinstance(processor, Mapping) else {}
        if config.get("Mode", "INLINE") != "INLINE":
            raise DefinitionError(
                "only the INLINE mode runs here (DISTRIBUTED needs S3 readers)",
                state=name,
                field=f"{processor_field}.ProcessorConfig.Mode",
            )
        if "ItemSelector" in body and "Parameters" in body:
            raise DefinitionError(
                "gives both ItemSelector and Parameters", state=name, field="Parameters"
            )
        start = self.branch(name, processor_field, processor)
        concurrency = _seconds(name, body, "MaxConcurrency", least=0) or 0
        tolerated = _seconds(name, body, "ToleratedFailureCount", least=0) or 0
        percentage = body.get("ToleratedFailurePercentage")
        if percentage is not None and (
            isinstance(percentage, bool)
            or not isinstance(percentage, int | float)
            or not 0 <= percentage <= 100
        ):
            raise DefinitionError(
                "must be a number from 0 to 100", state=name, field="ToleratedFailurePercentage"
            )
        selector = body.get("ItemSelector", body.get("Parameters"))
        self.add(_State(name, "Map", body, catchers=catchers, item_selector=selector))
        self.flow[name] = Block(
            name,
            MAP,
            (start,),
            next=following,
            catch=self.catch_map(catchers),
            items=_never_called,
            max_concurrency=concurrency or DEFAULT_MAX_ITEMS,
            tolerated_failures=tolerated,
            tolerated_percentage=percentage,
        )

    def _refuse_retry(self, name: str, body: Mapping[str, Any]) -> None:
        if "Retry" in body:
            raise DefinitionError(
                "Retry on a Parallel or Map is not supported: retry the Tasks inside it",
                state=name,
                field="Retry",
            )

    def branch(self, owner: str, where: str, branch: object) -> str:
        if not isinstance(branch, Mapping):
            raise DefinitionError(
                "a branch is an object with StartAt and States", state=owner, field=where
            )
        unknown = sorted(set(branch) - _BRANCH_FIELDS)
        if unknown:
            raise DefinitionError(
                f"{unknown[0]!r} is not supported in a branch",
                state=owner,
                field=f"{where}.{unknown[0]}",
            )
        outer = self._siblings
        self._siblings = branch.get("States") or {}
        try:
            return self.scope(
                branch.get("States"), branch.get("StartAt"), owner, f"{where}.StartAt"
            )
        finally:
            self._siblings = outer


def _path(raw: Mapping[str, Any], key: str) -> str | None:
    """A path field: "$" when absent, None when null (the compiler checked it is a string)."""
    value = raw.get(key, dataflow.WHOLE)
    return None if value is None else str(value)


def _never_called(*_: object) -> list[Any]:
    raise AssertionError("a declarative map's items come from its DocumentFlow")


def _seconds(name: str, body: Mapping[str, Any], key: str, least: int = 1) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise DefinitionError(f"must be an integer of at least {least}", state=name, field=key)
    return value


_ARN_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _service_action(name: str, body: Mapping[str, Any]) -> tuple[str, str]:
    """The worker a Task calls: ``Service`` and ``Action`` (the seed), or a ``Resource``."""
    if "Service" in body or "Action" in body:
        if "Resource" in body:
            raise DefinitionError(
                "gives both Resource and Service/Action", state=name, field="Resource"
            )
        for key in ("Service", "Action"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise DefinitionError("must be a non-empty string", state=name, field=key)
        return body["Service"], body["Action"]
    resource = body.get("Resource")
    if not isinstance(resource, str) or not resource:
        raise DefinitionError(
            "a Task names its worker by Service and Action, or by Resource",
            state=name,
            field="Resource",
        )
    if resource.startswith("arn:"):
        # An ARN's last part names the function or activity: the service and its one action.
        last = resource.rsplit(":", 1)[-1]
        return _ARN_NAME.sub("-", last).strip("-") or "resource", last
    service, colon, action = resource.partition(":")  # "service:action", or one name for both
    return service, (action if colon else service)


def _topic(name: str, service: str) -> str:
    try:
        return task_topic(service)
    except Exception as error:  # DeclarationError: name the state and field
        raise DefinitionError(str(error), state=name, field="Service") from None


def _version(value: object) -> int:
    """The saga version a definition's ``Version`` ("1.0", 2) stands for: its major number."""
    if value is None:
        return 1
    match = re.match(r"\s*(\d+)", str(value))
    if match is None:
        raise DefinitionError(f"{value!r} does not start with a number", field="Version")
    return max(1, int(match.group(1)))


def _json_of(record: Record) -> JSON:
    """An event's fields as the execution's input (bytes as base64)."""

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return base64.b64encode(value).decode()
        if isinstance(value, Record):
            return _json_of(value)
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {f.name: plain(getattr(record, f.name)) for f in dataclasses.fields(record)}  # type: ignore[arg-type]


def execution_input(record: Any) -> JSON:
    """An execution's input: an ``ExecutionStarted``'s JSON, or the start event's fields."""
    if isinstance(record, ExecutionStarted):
        try:
            document: JSON = json.loads(record.input)
        except ValueError as error:
            raise ValueError(f"execution {record.execution}: input is not JSON: {error}") from None
        return document
    return _json_of(record)


def _begin(record: Any) -> Any:
    return begin_documents(execution_input(record))


def _start_on(spec: object) -> tuple[type[Event], str] | None:
    """The event a ``StartOn`` names (its schema's full name), read from its ``Topic`` and keyed
    by the field its ``Id`` (``$.field``) names; None without a ``StartOn``."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise DefinitionError("an object with Topic, Event and Id", field="StartOn")
    unknown = sorted(set(spec) - {"Topic", "Event", "Id"})
    if unknown:
        raise DefinitionError(f"{unknown[0]!r} is not a field of StartOn", field="StartOn")
    for name in ("Topic", "Event", "Id"):
        if not isinstance(spec.get(name), str) or not spec[name]:
            raise DefinitionError("must be a non-empty string", field=f"StartOn.{name}")
    field_match = re.fullmatch(r"\$\.([A-Za-z_][A-Za-z0-9_]*)", spec["Id"])
    if field_match is None:
        raise DefinitionError(
            f"{spec['Id']!r} must name a top-level field of the event, as $.field",
            field="StartOn.Id",
        )
    key = field_match.group(1)
    try:
        event = event_class(spec["Event"], spec["Topic"], key)
    except DeclarationError as error:
        raise DefinitionError(str(error), field="StartOn.Event") from None
    if event.__topic__ != spec["Topic"] or event.__key__ != key:
        raise DefinitionError(
            f"{event.__qualname__} is declared with topic {event.__topic__!r} and key "
            f"{event.__key__!r}, not {spec['Topic']!r} and {key!r}",
            field="StartOn",
        )
    return event, key


def compile_machine(
    document: Mapping[str, Any], name: str, start: tuple[type[Event], str] | None = None
) -> SagaDefinition:
    """The ``SagaDefinition`` of a States Language definition (raises ``DefinitionError``).

    ``name`` is the saga's name unless the definition gives ``WorkflowName``; ``start`` is the
    event type that starts an execution and its key field (default: ``ExecutionStarted``).
    """
    unknown = sorted(set(document) - MACHINE_FIELDS)
    if unknown:
        raise DefinitionError(
            f"{unknown[0]!r} is not a top-level field of a state machine", field=unknown[0]
        )
    if document.get("QueryLanguage", "JSONPath") != "JSONPath":
        raise DefinitionError("only JSONPath is supported (not JSONata)", field="QueryLanguage")
    start_field = (
        "StartState" if "StartState" in document and "StartAt" not in document else "StartAt"
    )
    saga_name = str(document.get("WorkflowName") or name)
    machine = Machine(saga_name)
    compiler = _Compiler(machine)
    compiler._siblings = document.get("States") or {}
    first = compiler.scope(
        document.get("States"), document.get(start_field), "(machine)", start_field
    )
    timeout = _seconds("(machine)", document, "TimeoutSeconds")
    event, key = start or _start_on(document.get("StartOn")) or (ExecutionStarted, "execution")
    definition = SagaDefinition(
        name=saga_name,
        version=_version(document.get("Version")),
        start=event,
        key=key,
        state=type(begin_documents(None)),
        begin=_begin,
        tasks=compiler.tasks,
        first=(first,),
        deadline_ms=None if timeout is None else timeout * 1000,
        flow=compiler.flow,
        documents=machine,
        throttle=flow_control.throttle_of(
            document, compiler.step_limits, compiler.tasks, execution_input
        ),
    )
    validate(definition)
    return definition
