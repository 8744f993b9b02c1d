"""A definition's flow control: its ``Limits``, its Tasks' ``Limit`` and its ``Priority``.

The same declaration as a Python saga's ``limits=``, a step's ``limit=``, ``priority=`` and
``aging=``, compiled by the same ``compile_throttle`` into ``SagaDefinition.throttle``:

- ``Limits``: name → ``{"Rate": n, "Per": seconds, "InFlight": n, "Guard": seconds}`` (a
  ``Limit``; ``Per`` 1 and ``Guard`` the ``Limit``'s by default). A Task counts against the limit
  named after its service (its task topic's service, as ``Throttle.limit_of`` matches it), or
  against the one its ``Limit`` names instead. A limit no Task counts against is refused: its
  name is a typo, or its service is not called;
- ``Priority``: ``{"Path": "$.field", "AgingSeconds": s}``: an execution's priority is the
  integer at ``Path`` in its input (the start event's document; missing or not a number: 0),
  and a queued command gains one per ``AgingSeconds`` waited.

Problems are ``DefinitionError``s naming the field (``Limits.payments``, ``Priority.Path``) or the
Task and its ``Limit``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stream_processors.codecs.records import DeclarationError
from stream_processors.core.model import Task
from stream_processors.core.throttle import (
    FlowControlError,
    Limit,
    Throttle,
    compile_throttle,
    service_of,
)
from stream_processors.declarative import dataflow
from stream_processors.declarative.errors import StatesError
from stream_processors.declarative.problems import DefinitionError
from stream_processors.declarative.values import JSON

#: A ``Limits`` entry's fields and the ``Limit`` arguments they give.
_LIMIT_FIELDS = {"Rate": "rate", "InFlight": "in_flight", "Per": "per", "Guard": "guard"}


@dataclass(frozen=True)
class InputPriority:
    """An execution's priority: the integer at ``path`` in its input (0 when there is none)."""

    path: str
    #: The execution's input from its start event (as the machine's documents begin).
    input_of: Callable[[Any], JSON]

    def __call__(self, start: Any) -> int:
        try:
            value = dataflow.select(self.input_of(start), self.path)
        except (StatesError, ValueError):
            return 0  # no such field (or no JSON input: the execution fails as it begins)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return 0
        return int(value)


def throttle_of(
    document: Mapping[str, Any],
    step_limits: Mapping[str, str],
    tasks: Mapping[str, Task],
    input_of: Callable[[Any], JSON],
) -> Throttle | None:
    """The definition's flow control (None without ``Limits`` or ``Priority``); ``step_limits``
    are its Tasks' ``Limit`` fields, ``tasks`` every compiled Task."""
    limits = _limits(document.get("Limits"))
    priority, aging = _priority(document.get("Priority"), input_of)
    try:
        throttle = compile_throttle(limits, dict(step_limits), priority, aging)
    except FlowControlError as error:
        if error.step is not None:
            raise DefinitionError(str(error), state=error.step, field="Limit") from None
        field = "Priority.AgingSeconds" if error.option == "aging" else "Limits"
        raise DefinitionError(str(error), field=field) from None
    if throttle is not None:
        _check_used(throttle, tasks)
    return throttle


def _limits(spec: object) -> dict[str, Limit]:
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise DefinitionError(
            "an object: limit name → {Rate, Per, InFlight, Guard}", field="Limits"
        )
    return {str(name): _limit(str(name), body) for name, body in spec.items()}


def _limit(name: str, body: object) -> Limit:
    where = f"Limits.{name}"
    if not isinstance(body, Mapping):
        raise DefinitionError("an object with Rate and/or InFlight", field=where)
    unknown = sorted(set(body) - _LIMIT_FIELDS.keys())
    if unknown:
        raise DefinitionError(
            f"{unknown[0]!r} is not a field of a limit ({', '.join(_LIMIT_FIELDS)})",
            field=f"{where}.{unknown[0]}",
        )
    try:
        return Limit(**{_LIMIT_FIELDS[key]: value for key, value in body.items()})
    except (DeclarationError, TypeError) as error:  # TypeError: a non-number compared
        raise DefinitionError(str(error), field=where) from None


def _priority(
    spec: object, input_of: Callable[[Any], JSON]
) -> tuple[InputPriority | None, float | None]:
    if spec is None:
        return None, None
    if not isinstance(spec, Mapping) or not isinstance(spec.get("Path"), str):
        raise DefinitionError("an object with Path (and AgingSeconds)", field="Priority")
    unknown = sorted(set(spec) - {"Path", "AgingSeconds"})
    if unknown:
        raise DefinitionError(f"{unknown[0]!r} is not a field of Priority", field="Priority")
    path = spec["Path"]
    problem = dataflow.path_problem(path, reference=True, context=False)
    if problem is not None:
        raise DefinitionError(problem, field="Priority.Path")
    aging = spec.get("AgingSeconds")
    if aging is not None and (isinstance(aging, bool) or not isinstance(aging, int | float)):
        raise DefinitionError("must be a positive number of seconds", field="Priority.AgingSeconds")
    return InputPriority(path, input_of), aging


def _check_used(throttle: Throttle, tasks: Mapping[str, Task]) -> None:
    """Refuse a limit no Task counts against (a misspelt service would limit nothing)."""
    # A definition's Tasks always name their topic (their service's, or ``Topic``).
    topics = {name: task.action.topic or "" for name, task in tasks.items()}
    used = {throttle.limit_of(name, topic) for name, topic in topics.items()}
    for name in throttle.limits:
        if name not in used:
            services = sorted({service_of(topic) for topic in topics.values()})
            raise DefinitionError(
                f"no Task counts against limit {name!r}: name it after a Task's service "
                f"({', '.join(services) or 'none'}) or refer to it with a Task's Limit",
                field=f"Limits.{name}",
            )
