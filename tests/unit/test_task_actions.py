"""Unit tests of tasks for any language: the shipped schemas, and workers serving actions by name.

Covers: ``TaskCommand``, ``TaskSucceeded`` and ``TaskFailed`` bound to the schemas that ship in
the package, and their round trip; the task topic convention; declaring actions (per worker or
per action service, topic overrides, the mistakes refused at declaration); dispatch through the
test kit (output as JSON, ``TaskError`` -> ``TaskFailed``, transient errors -> ``CommandFailed``,
the context a handler gets); and ``Worker.handle`` on task records as the runtime reads them
(the reply's topic, key and headers; signing; no handler, an input that is not JSON, an output
JSON cannot hold, a remembered reply), all in memory.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Message

from sagas import CommandContext, DeclarationError, TaskError, TransientError, Worker
from sagas.idempotency import HandledCommand
from sagas.testing import command_context, handle, task_command
from stream_processors.codecs.records import BUILTIN_SCHEMAS, decode_record
from stream_processors.codecs.signing import Keyring, Purpose, signed, verify
from stream_processors.core.model import CommandFailed
from stream_processors.core.tasks import TaskCommand, TaskFailed, TaskSucceeded, task_topic
from stream_processors.engine.routing import COMMAND_ID, DLQ_DETAIL, DLQ_REASON, command_headers
from stream_processors.engine.routing import header as header_of

CID = "user_onboarding/u-1/CreateUser/1"
KEYRING = Keyring.parse(f"k1:{base64.b64encode(bytes(range(32))).decode()}")


def _auth(**options: Any) -> tuple[Worker, list[tuple[Any, CommandContext]]]:
    """A worker for AuthService that records each call of its handlers."""
    auth = Worker("auth", service="AuthService", **options)
    calls: list[tuple[Any, CommandContext]] = []

    @auth.action("createUser")
    def create_user(input: Any, context: CommandContext) -> Any:
        calls.append((input, context))
        if input.get("taken"):
            raise TaskError("AuthServiceError", f"{input['email']} is taken")
        if input.get("down"):
            raise TransientError("directory unreachable")
        if input.get("bug"):
            raise KeyError("oops")
        if input.get("unjsonable"):
            return {1, 2}
        return {"userId": "u-1", "email": input["email"]}

    return auth, calls


def _record(task: TaskCommand, *, sign: bool = False, value: bytes | None = None) -> Message:
    """The task as the runtime reads it from its service's topic, with the engine's headers."""
    topic, key = task_topic(task.service), task.execution.encode()
    body = task.encode() if value is None else value
    headers = command_headers(CID, "user_onboarding.inbox", task.execution, task.workflow)
    if sign:
        headers = signed(KEYRING, Purpose.COMMAND, topic, key, body, headers)
    return Message(topic=topic, partition=2, offset=7, key=key, value=body, headers=headers)


def _create(**flags: bool) -> TaskCommand:
    return task_command(
        "createUser",
        {"email": "ada@example.com", **flags},
        service="AuthService",
        workflow="user_onboarding",
        execution="u-1",
        state="CreateUser",
    )


# -- the records and their schemas ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "name"),
    [(TaskCommand, "TaskCommand"), (TaskSucceeded, "TaskSucceeded"), (TaskFailed, "TaskFailed")],
)
def test_the_task_records_are_bound_to_the_schemas_that_ship_with_sagalog(
    record: type[Any], name: str
) -> None:
    shipped = BUILTIN_SCHEMAS / "sagalog" / f"{name}.avsc"
    assert record.__avro__.full_name == f"sagalog.{name}"
    assert Path(record.__avro__.source or "").resolve() == shipped.resolve()
    parsed = fastavro.parse_schema(json.loads(shipped.read_text()))
    assert isinstance(parsed, dict)
    assert [f["name"] for f in parsed["fields"]] == list(record.__fields__)


def test_task_records_round_trip_through_avro() -> None:
    task = _create()
    for record in (task, TaskSucceeded(output='{"a":1}'), TaskFailed(error="X", cause=None)):
        assert decode_record(record.encode()) == record
    assert task.input_value() == {"email": "ada@example.com"}
    assert (task.timeout_seconds, task.heartbeat_seconds) == (None, None)


def test_a_services_tasks_go_to_its_task_topic() -> None:
    assert task_topic("AuthService") == "AuthService.tasks"
    assert task_topic("billing-v2.eu") == "billing-v2.eu.tasks"
    for bad in ("", "Auth Service", "arn:aws:lambda:fn", "x" * 244, "..", "é"):
        with pytest.raises(DeclarationError, match="cannot name a task topic"):
            task_topic(bad)


# -- declaring actions -----------------------------------------------------------------------------


def test_a_worker_serves_the_task_topics_of_its_services() -> None:
    worker = Worker("onboarding", service="AuthService")
    worker.action("createUser")(lambda input, context: None)
    worker.action("deleteUser")(lambda input, context: None)
    worker.action("sendWelcomeEmail", service="NotificationService")(lambda i, c: None)
    worker.action("provision", service="ProvisioningService", topic="prov.work")(lambda i, c: None)
    assert worker.topics == ["AuthService.tasks", "NotificationService.tasks", "prov.work"]


def test_mistakes_in_declaring_actions_are_refused_at_once() -> None:
    worker = Worker("w")
    with pytest.raises(DeclarationError, match="names no service"):
        worker.action("createUser")
    worker.action("createUser", service="AuthService")(lambda i, c: None)
    with pytest.raises(DeclarationError, match=r"two handlers for AuthService\.createUser"):
        worker.action("createUser", service="AuthService")
    with pytest.raises(DeclarationError, match=r"read from AuthService\.tasks, not auth"):
        worker.action("deleteUser", service="AuthService", topic="auth")
    with pytest.raises(DeclarationError, match="cannot name a task topic"):
        worker.action("x", service="arn:aws:states:::lambda:invoke")
    with pytest.raises(DeclarationError, match="needs a name"):
        worker.action("", service="AuthService")


def test_a_task_error_needs_a_name() -> None:
    with pytest.raises(ValueError, match="empty"):
        TaskError("")


# -- dispatch, in memory -----------------------------------------------------------------------


def test_an_action_answers_its_output_as_json() -> None:
    auth, calls = _auth()
    reply = handle(auth, _create())
    assert isinstance(reply, TaskSucceeded)
    assert reply.output == '{"userId":"u-1","email":"ada@example.com"}'
    assert reply.output_value() == {"userId": "u-1", "email": "ada@example.com"}
    ((given, context),) = calls
    assert given == {"email": "ada@example.com"}
    assert context.task == _create()
    assert (context.saga, context.instance_id, context.attempt) == ("user_onboarding", "u-1", 1)
    assert context.idempotency_key == "user_onboarding/u-1/CreateUser"
    assert context.topic == "AuthService.tasks"


def test_any_json_value_is_an_input_and_an_output() -> None:
    worker = Worker("echo", service="Echo")
    worker.action("echo")(lambda input, context: input)
    values: list[Any] = [None, "ünïcode", 3.5, [1, "a", None], {"nested": {"list": []}}, True]
    for value in values:
        reply = handle(worker, task_command("echo", value, service="Echo"))
        assert isinstance(reply, TaskSucceeded)
        assert reply.output_value() == value


def test_a_task_error_answers_task_failed_with_its_name_and_cause() -> None:
    auth, _ = _auth()
    reply = handle(auth, _create(taken=True))
    assert reply == TaskFailed(error="AuthServiceError", cause="ada@example.com is taken")


def test_a_transient_error_answers_command_failed_for_the_retry_policy() -> None:
    auth, _ = _auth()
    reply = handle(auth, _create(down=True))
    assert reply == CommandFailed(error="TransientError", message="directory unreachable")


def test_an_action_nobody_handles_is_a_lookup_error_in_memory() -> None:
    auth, calls = _auth()
    with pytest.raises(LookupError, match=r"AuthService\.deleteUser"):
        handle(auth, task_command("deleteUser", {}, service="AuthService"))
    # The same action name for another service is another action.
    with pytest.raises(LookupError, match=r"NotificationService\.createUser"):
        handle(auth, task_command("createUser", {}, service="NotificationService"))
    assert calls == []


def test_command_context_of_a_task_takes_its_ids_from_the_task() -> None:
    task = task_command("createUser", {}, service="AuthService", execution="u-9", attempt=3)
    context = command_context(task)
    assert context.command_id == "workflow/u-9/createUser/3"
    assert context.idempotency_key == "workflow/u-9/createUser"
    assert context.task is task


# -- Worker.handle: the records the runtime sends ----------------------------------------------


def test_the_reply_goes_to_the_reply_topic_keyed_by_the_instance_with_the_command_id() -> None:
    auth, _ = _auth()
    answer = auth.handle(_record(_create()))
    assert not answer.dead
    topic, key, value, headers = answer.outgoing
    assert (topic, key) == ("user_onboarding.inbox", b"u-1")
    assert header_of(headers, COMMAND_ID) == CID
    assert decode_record(value) == TaskSucceeded(
        output='{"userId":"u-1","email":"ada@example.com"}'
    )
    assert answer.handled is not None and answer.handled.reply == value


def test_with_keys_a_signed_task_is_served_and_its_reply_signed() -> None:
    auth, calls = _auth(signing=KEYRING)
    topic, key, value, headers = auth.handle(_record(_create(), sign=True)).outgoing
    assert verify(KEYRING, Purpose.INBOX, topic, key, value, headers) is None
    unsigned = auth.handle(_record(_create()))
    assert unsigned.dead and header_of(unsigned.outgoing[3], DLQ_REASON) == "bad-signature"
    assert len(calls) == 1


def _dead_letter(answer: Any) -> tuple[str, str | None, str | None]:
    assert answer.dead
    topic, _, _, headers = answer.outgoing
    return topic, header_of(headers, DLQ_REASON), header_of(headers, DLQ_DETAIL)


def test_an_action_nobody_handles_is_dead_lettered_as_no_handler() -> None:
    auth, _ = _auth()
    task = task_command("deleteUser", {}, service="AuthService", execution="u-1")
    topic, reason, detail = _dead_letter(auth.handle(_record(task)))
    assert (topic, reason, detail) == (
        "AuthService.tasks.dlq",
        "no-handler",
        "AuthService.deleteUser",
    )


def test_a_task_whose_input_is_not_json_is_dead_lettered_without_running_the_handler() -> None:
    auth, calls = _auth(transient=(ValueError,))  # not retried, whatever the worker counts
    task = TaskCommand(
        service="AuthService",
        action="createUser",
        input="{not json",
        workflow="user_onboarding",
        execution="u-1",
        state="CreateUser",
        attempt=1,
    )
    topic, reason, detail = _dead_letter(auth.handle(_record(task)))
    assert (topic, reason) == ("AuthService.tasks.dlq", "bad-task-input")
    assert detail is not None and detail.startswith(
        "the input of AuthService.createUser is not JSON"
    )
    assert calls == []


@pytest.mark.parametrize("flag", ["bug", "unjsonable"])
def test_a_crashing_handler_or_an_output_json_cannot_hold_is_a_handler_error(flag: str) -> None:
    auth, calls = _auth()
    _, reason, detail = _dead_letter(auth.handle(_record(_create(**{flag: True}))))
    assert reason == "handler-error"
    assert detail is not None and detail.split(":")[0] in ("KeyError", "TypeError")
    assert len(calls) == 1


def test_a_remembered_task_is_answered_again_without_running_its_action() -> None:
    auth, calls = _auth()
    reply = TaskSucceeded(output='"first"').encode()
    known = HandledCommand(CID, "user_onboarding.inbox", "u-1", reply, "AuthService.tasks", 2)
    answer = auth.handle(_record(_create()), remembered=lambda context: known)
    assert answer.outgoing[2] == reply and answer.handled is None
    assert calls == []
