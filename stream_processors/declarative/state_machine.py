"""The seed-000 state-machine dict, translated into the States Language it means. Pure.

The dict (``initial_state``, ``states``) names transitions rather than types:

- a state with ``task`` calls that task and goes to ``on_success``, or to ``on_failure`` when it
  fails for good: a ``Task`` with a ``Catch`` of every error;
- a state with ``action`` runs that action and goes to ``on_complete``: a ``Task`` too;
- ``type: final`` ends the instance: a ``Pass`` that records the final state's name in the
  output (``final_state``), so that ``COMPLETED_WITH_WARNING`` and ``FAILED`` stay tell-apart;
- ``on_event`` on the initial state names the event that starts an instance and the state it
  goes to (one event); anywhere else it is refused, naming the state.

Tasks and actions go to one service, named after the definition (``<name>.tasks``), whose
worker serves each by name (``@worker.action("create_user_in_db", service=...)``). A task's
result is kept in the document under ``results.<task>``, a failure under ``error``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from stream_processors.declarative.problems import DefinitionError

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _member(name: str) -> str:
    """``name`` as a JSONPath member: dotted when it is an identifier, quoted otherwise."""
    if _IDENTIFIER.fullmatch(name):
        return f".{name}"
    return "['" + name.replace("\\", "\\\\").replace("'", "\\'") + "']"


def start_event(document: Mapping[str, Any]) -> str | None:
    """The event the initial state waits for (None if it waits for none)."""
    initial = document["states"][document["initial_state"]]
    events = initial.get("on_event") or {}
    return next(iter(events), None)


def to_states_language(document: Mapping[str, Any], service: str) -> dict[str, Any]:
    """The States Language definition the dict means (raises ``DefinitionError``)."""
    states: Mapping[str, Any] = document["states"]
    initial = document["initial_state"]
    if initial not in states:
        raise DefinitionError(f"{initial!r} is not a state", field="initial_state")
    start = initial
    translated: dict[str, Any] = {}
    for name, body in states.items():
        if "on_event" in body:
            events = body["on_event"]
            if name != initial or len(events) != 1 or set(body) != {"on_event"}:
                raise DefinitionError(
                    "on_event is supported on the initial state only, naming the one event "
                    "that starts an instance",
                    state=name,
                    field="on_event",
                )
            start = next(iter(events.values()))
            if start not in states:
                raise DefinitionError(f"{start!r} is not a state", state=name, field="on_event")
            continue
        translated[name] = _state(name, body, service)
    return {"StartAt": start, "States": translated}


def _state(name: str, body: Mapping[str, Any], service: str) -> dict[str, Any]:
    if body.get("type") == "final":
        return {"Type": "Pass", "Result": name, "ResultPath": "$.final_state", "End": True}
    if "task" in body:
        task = body["task"]
        state: dict[str, Any] = {
            "Type": "Task",
            "Service": service,
            "Action": task,
            "ResultPath": f"$.results{_member(task)}",
            "Next": body["on_success"],
        }
        if "on_failure" in body:
            state["Catch"] = [
                {"ErrorEquals": ["States.ALL"], "Next": body["on_failure"], "ResultPath": "$.error"}
            ]
        return state
    if "action" in body:
        action = body["action"]
        return {
            "Type": "Task",
            "Service": service,
            "Action": action,
            "ResultPath": f"$.results{_member(action)}",
            "Next": body["on_complete"],
        }
    raise DefinitionError("needs one of task, action, on_event or type: final", state=name)
