"""Tasks for any language: the generic task command, its two replies, and where tasks go.

A declarative definition's ``Task`` names its worker by ``Service`` and ``Action`` (or by
``Resource``) rather than by a Python class, so every Task sends the same record,
``TaskCommand`` (``sagalog.TaskCommand``: the service, the action, the input as JSON, the ids a
worker needs), and every worker answers with ``TaskSucceeded`` (the output as JSON) or
``TaskFailed`` (an error name the Task's ``Retry`` and ``Catch`` match, and a cause). A transient
error is answered with ``CommandFailed``, as for any command. The schemas ship with Sagalog
(``stream_processors/schemas/sagalog/Task*.avsc``), so a worker in another language needs only
them, an Avro library and a Kafka client: docs/wire-contract.md, "Tasks for any language".

A service's tasks go to the topic ``<service>.tasks`` (``task_topic``) unless the deployment
names another on both sides (the worker's ``action(..., topic=...)``, and the definition).

This module is pure: no Kafka.
"""

from __future__ import annotations

import json
import re
from typing import Any

from stream_processors.codecs.records import Command, DeclarationError, Event

#: What a service's task topic is called: ``<service>`` followed by this.
TASK_TOPIC_SUFFIX = ".tasks"
#: The States Language's name for a task that failed with no name of its own.
TASK_FAILED = "States.TaskFailed"

# A Kafka topic name: at most 249 of these characters; the suffix takes 6 of them.
_SERVICE = re.compile(r"[A-Za-z0-9._-]{1,243}")


class TaskCommand(Command, schema="sagalog.TaskCommand"):
    """One attempt of a declarative Task, as its worker receives it (the schema's docs say
    what each field holds). Sent to the service's task topic, keyed by ``execution``."""

    service: str
    action: str
    input: str
    workflow: str
    execution: str
    state: str
    attempt: int
    timeout_seconds: int | None = None
    heartbeat_seconds: int | None = None

    def input_value(self) -> Any:
        """The input, decoded from JSON (raises ``ValueError`` if it is not JSON)."""
        return json.loads(self.input)


class TaskSucceeded(Event, schema="sagalog.TaskSucceeded"):
    """A worker's answer to a ``TaskCommand`` whose action succeeded."""

    output: str

    def output_value(self) -> Any:
        """The output, decoded from JSON."""
        return json.loads(self.output)


class TaskFailed(Event, schema="sagalog.TaskFailed"):
    """A worker's answer to a ``TaskCommand`` whose action failed for good: ``error`` is the
    name a Task's ``Retry`` and ``Catch`` rules match (``ErrorEquals``)."""

    error: str
    cause: str | None = None


class TaskHeartbeat(Event, schema="sagalog.TaskHeartbeat"):
    """A worker's sign of life for a task whose action still runs (``HeartbeatSeconds``)."""


def task_topic(service: str) -> str:
    """The topic a service's task commands go to by default: ``<service>.tasks``.

    Raises ``DeclarationError`` for a service name that cannot make a topic name (only ASCII
    letters, digits, ``.``, ``_`` and ``-``, at most 243 of them).
    """
    if not _SERVICE.fullmatch(service) or service in (".", ".."):
        raise DeclarationError(
            f"service {service[:100]!r} cannot name a task topic: use ASCII letters, digits, "
            "'.', '_' and '-' (at most 243), or give the topic explicitly"
        )
    return f"{service}{TASK_TOPIC_SUFFIX}"


def json_text(value: Any) -> str:
    """``value`` as the JSON text a task's input or output carries: compact, UTF-8 as is.

    Raises ``TypeError`` for what JSON cannot hold, and ``ValueError`` for NaN and infinities
    (not JSON, and not readable by most other languages' parsers).
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
