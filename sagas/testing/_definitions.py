"""``DefinitionTest``: one execution of a declarative definition, run in memory.

A ``SagaTest`` for a States Language (or seed-000) definition, with the vocabulary of one: start
an execution with its input, answer its tasks with an output or an error, read the documents.
Everything else (the virtual clock, ``advance``, the invariants checked after every input) is
``SagaTest``'s::

    test = DefinitionTest("examples/user_onboarding/onboarding.json")
    test.start_execution({"email": "ada@example.com"})
    test.succeed_task("CreateUser", {"userId": "u-1"})
    test.fail_task("ProvisionResources", "ProvisioningError", "no capacity")
    test.advance(seconds=5)                   # the Retry's IntervalSeconds
    assert test.task_input("ProvisionResources") == {"userId": "u-1"}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sagas.testing._invariants import expect
from sagas.testing._saga_test import START_MS, SagaTest, SentCommand
from stream_processors.core.decide import Decision
from stream_processors.core.documents import ROOT_SCOPE, Documents
from stream_processors.core.model import SagaDefinition
from stream_processors.core.tasks import (
    TaskCommand,
    TaskFailed,
    TaskHeartbeat,
    TaskSucceeded,
    json_text,
)
from stream_processors.declarative.definition import load_definition
from stream_processors.declarative.machine import ExecutionStarted, compile_machine

#: A task to answer: the command sent, or the name of the state whose task is outstanding.
TaskRef = SentCommand[TaskCommand] | str


def compiled(definition: str | Path | Mapping[str, Any] | SagaDefinition) -> SagaDefinition:
    """A definition from a file path, a loaded document (States Language) or compiled."""
    if isinstance(definition, SagaDefinition):
        return definition
    if isinstance(definition, Mapping):
        return compile_machine(definition, "definition")
    return load_definition(definition)


class DefinitionTest(SagaTest):
    """One execution of a declarative definition, on a virtual clock."""

    def __init__(
        self,
        definition: str | Path | Mapping[str, Any] | SagaDefinition,
        *,
        start_ms: int = START_MS,
        tick: float = 0.0,
    ) -> None:
        super().__init__(compiled(definition), start_ms=start_ms, tick=tick)

    def start_execution(self, input: Any = None, execution: str = "execution-1") -> Decision:
        """Start the execution with ``input`` (any JSON value; None: ``{}``)."""
        document = {} if input is None else input
        return self.start(ExecutionStarted(execution=execution, input=json_text(document)))

    def expect_task(self, state: str | None = None) -> SentCommand[TaskCommand]:
        """The one outstanding task (of ``state``, if given: a map's items have several)."""
        return self.expect_command(TaskCommand, step=None if state is None else self._step(state))

    def task_input(self, task: TaskRef) -> Any:
        """The effective input a task was sent with."""
        return json.loads(self._sent(task).command.input)

    def succeed_task(self, task: TaskRef, output: Any = None) -> Decision:
        """Answer a task as its worker does when the action returned ``output``."""
        return self.reply(self._sent(task), TaskSucceeded(output=json_text(output)))

    def fail_task(self, task: TaskRef, error: str, cause: str | None = None) -> Decision:
        """Answer a task as its worker does when the action failed with ``error``."""
        return self.reply(self._sent(task), TaskFailed(error=error, cause=cause))

    def heartbeat(self, task: TaskRef) -> Decision:
        """Send a task's heartbeat, as its worker's ``context.heartbeat()`` does."""
        sent = self._sent(task)
        return self._accepted(self.feed(TaskHeartbeat(), sent.command_id), "TaskHeartbeat")

    def document(self, scope: str = ROOT_SCOPE) -> Any:
        """A path's document now: the main path's by default (after the end: the output)."""
        data = self.instance.data
        expect(isinstance(data, Documents), "this definition keeps no JSON documents")
        assert isinstance(data, Documents)
        return data.document(scope)

    @property
    def output(self) -> Any:
        """The execution's output: the main path's document."""
        return self.document()

    def _sent(self, task: TaskRef) -> SentCommand[TaskCommand]:
        return self.expect_task(task) if isinstance(task, str) else task

    def _step(self, state: str) -> str | None:
        """The step key of ``state``'s one outstanding task (None: several, or none)."""
        keys = {
            sent.step
            for sent in self.outstanding
            if isinstance(sent.command, TaskCommand) and sent.command.state == state
        }
        expect(len(keys) == 1, f"expected one outstanding task of state {state!r}, found {keys}")
        return next(iter(keys))
