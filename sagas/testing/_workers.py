"""Unit-testing worker handlers: a ``CommandContext`` built by hand, a task command built from a
value, and a handler (or an action's) run in memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sagas.worker import CommandContext, Worker
from stream_processors.codecs.records import Command, Event
from stream_processors.core.decide import command_id as attempt_id
from stream_processors.core.decide import idempotency_key as step_key
from stream_processors.core.tasks import TaskCommand, json_text, task_topic

if TYPE_CHECKING:
    from sagas.testing._saga_test import SentCommand


def command_context(
    command: Command | SentCommand[Any],
    *,
    attempt: int | None = None,
    saga: str | None = None,
    instance_id: str | None = None,
    step: str | None = None,
    idempotency_key: str | None = None,
    command_id: str | None = None,
    topic: str | None = None,
    partition: int = 0,
    offset: int = 0,
) -> CommandContext:
    """The ``CommandContext`` a worker's handler gets for ``command``, as the runtime builds it.

    Given a command a ``SagaTest`` sent, its saga, instance, step, attempt and topic come from it;
    given a ``TaskCommand``, from its workflow, execution, state and attempt, the topic being its
    service's task topic (and the context's ``task`` is the command). Otherwise they default to
    ``saga="saga"``, ``instance_id="instance"``, the command's class name as the step, attempt 1 and
    the command's topic. ``idempotency_key`` defaults to ``saga/instance/step`` (the same for every
    attempt of a step) and ``command_id`` to ``saga/instance/step/attempt`` (one per attempt); pass
    either to override it.
    """
    if isinstance(command, TaskCommand):
        defaults = (
            command.workflow,
            command.execution,
            command.state,
            command.attempt,
            task_topic(command.service),
        )
    elif isinstance(command, Command):
        defaults = ("saga", "instance", type(command).__name__, 1, command.__topic__ or "")
    else:
        prefix = f"{command.saga}/{command.instance_id}/"
        sent_step = command.idempotency_key.removeprefix(prefix)  # "payment.compensation", say
        defaults = (command.saga, command.instance_id, sent_step, command.attempt, command.topic)
    saga = saga if saga is not None else defaults[0]
    instance_id = instance_id if instance_id is not None else defaults[1]
    step = step if step is not None else defaults[2]
    attempt = attempt if attempt is not None else defaults[3]
    command_id = command_id or attempt_id(saga, instance_id, step, attempt)
    return CommandContext(
        idempotency_key=idempotency_key or step_key(attempt_id(saga, instance_id, step, 1))[0],
        command_id=command_id,
        attempt=attempt,
        instance_id=instance_id,
        saga=saga,
        topic=topic if topic is not None else defaults[4],
        partition=partition,
        offset=offset,
        task=command if isinstance(command, TaskCommand) else None,
    )


def task_command(
    action: str,
    input: Any = None,
    *,
    service: str,
    workflow: str = "workflow",
    execution: str = "execution",
    state: str | None = None,
    attempt: int = 1,
    timeout_seconds: int | None = None,
    heartbeat_seconds: int | None = None,
) -> TaskCommand:
    """The ``TaskCommand`` a definition's Task sends ``service`` for ``action``, with ``input``
    (any value JSON can hold) as its JSON; ``state`` defaults to the action's name. Give it to
    ``handle`` to run the worker's handler of the action::

        reply = handle(auth, task_command("createUser", {"email": "ada@example.com"},
                                          service="AuthService"))
        assert reply.output_value() == {"userId": "u-1"}   # a TaskSucceeded
    """
    return TaskCommand(
        service=service,
        action=action,
        input=json_text(input),
        workflow=workflow,
        execution=execution,
        state=state if state is not None else action,
        attempt=attempt,
        timeout_seconds=timeout_seconds,
        heartbeat_seconds=heartbeat_seconds,
    )


def handle(worker: Worker, command: Command, context: CommandContext | None = None) -> Event:
    """What ``worker`` answers to ``command``, run in memory as its runtime runs it.

    The handler's reply (for a ``TaskCommand``, ``TaskSucceeded`` with its action handler's
    output as JSON, or ``TaskFailed`` from a ``TaskError``); or the failure reply of the
    ``BusinessError`` it raised; or a ``CommandFailed`` naming a transient error
    (``TransientError``, or a type the worker lists in ``transient=``). Any other exception
    propagates, as a bug (the runtime dead-letters the command). ``context`` defaults to
    ``command_context(command)``.
    """
    reply, _ = worker.answer(command, context or command_context(command))
    return reply
