"""Tasks for any language, on the real broker: task commands answered by Sagalog's worker, and by
a worker that uses nothing of Sagalog but its shipped ``.avsc`` files.

No definition compiler sends tasks yet, so the tests produce ``sagalog.TaskCommand`` records as
the engine would (keyed by the execution, with ``routing.command_headers``) and read what lands
on the reply topic and on the task topic's dead-letter topic:

- a ``Worker`` serving two services' actions answers a success (``TaskSucceeded``), a
  ``TaskError`` (``TaskFailed``) and a transient error (``CommandFailed``), each to the reply
  topic, keyed by the execution, with the command's id; dead-letters an action nobody handles
  (``no-handler``) and a task whose input is not JSON (``bad-task-input``); and answers a task
  delivered again with the remembered reply, without running its action again;
- ``ForeignWorker``, a plain confluent-kafka consumer and producer with fastavro (what a team in
  another language writes from docs/wire-contract.md), answers the same tasks with replies whose
  values are the bytes Sagalog itself encodes, on the partitions Sagalog's partitioner gives;
- a task for an action not deployed yet is parked as ``no-handler``, and answered once a worker
  that serves the action runs and ``sagas dlq redrive`` sends it back.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Consumer, Message, Producer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from sagas import CommandContext, TaskError, TransientError, Worker
from sagas.operator import dead_letters, redrive
from stream_processors.codecs.records import Record, decode_record
from stream_processors.core.decide import command_id
from stream_processors.core.model import CommandFailed
from stream_processors.core.partitioner import partition_for
from stream_processors.core.tasks import TaskCommand, TaskFailed, TaskSucceeded, json_text
from stream_processors.engine.routing import COMMAND_ID, DLQ_REASON, command_headers
from stream_processors.kafka.config import producer_config
from tests.conftest import KafkaCluster
from tests.integration.saga_harness import CommittedReader, header_of

pytestmark = pytest.mark.kafka

INBOX_PARTITIONS = 8
WORKFLOW = "user_onboarding"

# -- a worker in "another language": a Kafka client, an Avro library, the shipped schemas -------

SCHEMAS = files("stream_processors") / "schemas" / "sagalog"


def _schema(name: str) -> tuple[Any, bytes]:
    """A shipped schema, parsed, and its single-object fingerprint (CRC-64-AVRO, little-endian)."""
    parsed = fastavro.parse_schema(json.loads((SCHEMAS / f"{name}.avsc").read_text()))
    return parsed, bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


class ForeignWorker:
    """Answers the tasks of one topic as docs/wire-contract.md says, without Sagalog's code.

    ``actions`` maps an action name to a function of the decoded input returning the output, or
    raising ``LookupError(error, cause)`` for a failure and ``TimeoutError`` for a transient one.
    It commits a command's offset once its reply is acknowledged (no transactions: allowed by
    the contract when effects are idempotent by key)."""

    def __init__(self, bootstrap: str, topic: str, actions: dict[str, Callable[[Any], Any]]):
        self.actions, self.stopping = actions, threading.Event()
        self.schemas = {n: _schema(n) for n in ("TaskCommand", "TaskSucceeded", "TaskFailed")}
        self.schemas["CommandFailed"] = _schema("CommandFailed")
        common = {"bootstrap.servers": bootstrap}
        self.consumer = Consumer(
            {
                **common,
                "group.id": f"foreign-{topic}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self.consumer.subscribe([topic])
        # The Java client's partitioner: a reply must land where its key hashes to.
        self.producer = Producer({**common, "partitioner": "murmur2_random", "acks": "all"})

    def encode(self, name: str, datum: dict[str, Any]) -> bytes:
        schema, print_ = self.schemas[name]
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema, datum)
        return b"\xc3\x01" + print_ + body.getvalue()  # Avro single-object encoding

    def answer(self, task: dict[str, Any]) -> bytes:
        try:
            output = self.actions[task["action"]](json.loads(task["input"]))
            return self.encode(
                "TaskSucceeded", {"output": json.dumps(output, separators=(",", ":"))}
            )
        except LookupError as failure:
            error, cause = failure.args
            return self.encode("TaskFailed", {"error": error, "cause": cause})
        except TimeoutError as transient:
            return self.encode(
                "CommandFailed", {"error": "TimeoutError", "message": str(transient)}
            )

    def serve(self) -> None:
        schema, print_ = self.schemas["TaskCommand"]
        while not self.stopping.is_set():
            message = self.consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            value = message.value() or b""
            assert value[:2] == b"\xc3\x01" and value[2:10] == print_, "not a TaskCommand"
            task: Any = fastavro.schemaless_reader(io.BytesIO(value[10:]), schema, schema)
            received = message.headers() or []
            pairs = received.items() if isinstance(received, dict) else received
            headers = {n: v.decode() if isinstance(v, bytes) else str(v) for n, v in pairs}
            reply = self.answer(task)
            self.producer.produce(
                headers["sagalog.reply_to"],
                key=headers["sagalog.instance"].encode(),
                value=reply,
                headers=[("sagalog.command_id", headers["sagalog.command_id"].encode())],
            )
            assert self.producer.flush(30) == 0
            self.consumer.commit(message=message, asynchronous=False)
        self.consumer.close()


# -- the engine's side: task commands, and what lands on the reply topic ---------------------------


class Tasks:
    """Sends task commands to a service's task topic as the engine would, reads the replies."""

    def __init__(self, kafka: KafkaCluster, run: str) -> None:
        self.kafka = kafka
        self.inbox = kafka.create_topic(f"{WORKFLOW}.{run}.inbox", INBOX_PARTITIONS)
        self.reader = CommittedReader(kafka.bootstrap, self.inbox)
        self.producer = Producer(producer_config(kafka.bootstrap, "task-tests"))

    def send(self, service: str, action: str, execution: str, input: Any, *, raw: str = "") -> str:
        """One attempt of the Task ``action`` of ``execution``: returns its command id."""
        cid = command_id(WORKFLOW, execution, action[:1].upper() + action[1:], 1)
        task = TaskCommand(
            service=service,
            action=action,
            input=raw or json_text(input),
            workflow=WORKFLOW,
            execution=execution,
            state=action[:1].upper() + action[1:],
            attempt=1,
            timeout_seconds=30,
        )
        self.producer.produce(
            f"{service}.tasks",
            key=execution.encode(),
            value=task.encode(),
            headers=command_headers(cid, self.inbox, execution, WORKFLOW),
        )
        assert self.producer.flush(30) == 0
        return cid

    def replies(self, count: int) -> dict[str, Message]:
        """The next ``count`` replies, by command id."""
        return _committed(self.reader, count)

    def check(self, reply: Message, execution: str, expected: Record) -> None:
        """The reply is keyed by the execution, where Sagalog's partitioner puts it, and is
        ``expected`` encoded as Sagalog encodes it."""
        assert reply.key() == execution.encode()
        assert reply.partition() == partition_for(execution.encode(), INBOX_PARTITIONS)
        assert decode_record(reply.value()) == expected
        assert reply.value() == expected.encode()


@pytest.fixture
def tasks(kafka: KafkaCluster, unique_name: Callable[[str], str]) -> Iterator[Tasks]:
    run = unique_name("t").removeprefix("t.")
    sent = Tasks(kafka, run)
    try:
        yield sent
    finally:
        sent.reader.close()


def _committed(reader: CommittedReader, count: int, timeout: float = 60) -> dict[str, Message]:
    """The next ``count`` committed records ``reader`` reads, by command id."""
    found: dict[str, Message] = {}
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        for message in reader.poll(0.5):
            found[header_of(message, COMMAND_ID) or ""] = message
    assert len(found) == count, f"{len(found)} records of {count}: {sorted(found)}"
    return found


def _dead_letters(kafka: KafkaCluster, service: str) -> CommittedReader:
    """A reader of the service's task dead letters, once the worker has made their topic."""
    topic, deadline = f"{service}.tasks.dlq", time.monotonic() + 60
    while not kafka.admin.list_topics(topic, timeout=10).topics[topic].partitions:
        assert time.monotonic() < deadline, f"{topic} was not created"
        time.sleep(0.2)
    return CommittedReader(kafka.bootstrap, topic)


def _serving(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_a_python_worker_answers_tasks_by_service_and_action(
    kafka: KafkaCluster, tasks: Tasks, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    auth, notify = unique_name("Auth").replace(".", ""), unique_name("Notify").replace(".", "")
    for service in (auth, notify):
        kafka.create_topic(f"{service}.tasks", 3)
    calls: list[str] = []
    worker = Worker("onboarding", service=auth)

    @worker.action("createUser")
    def create_user(input: Any, context: CommandContext) -> Any:
        calls.append(context.command_id)
        if input.get("taken"):
            raise TaskError("AuthServiceError", "email taken")
        if input.get("down"):
            raise TransientError("directory unreachable")
        assert context.task is not None and context.task.state == "CreateUser"
        return {"userId": f"id-{input['email']}", "key": context.idempotency_key}

    @worker.action("sendWelcomeEmail", service=notify)
    def welcome(input: Any, context: CommandContext) -> Any:
        return None

    serving = _serving(lambda: worker.run(kafka.bootstrap, state_dir=tmp_path / "worker"))
    try:
        ok = tasks.send(auth, "createUser", "u-1", {"email": "ada"})
        taken = tasks.send(auth, "createUser", "u-2", {"email": "bob", "taken": True})
        down = tasks.send(auth, "createUser", "u-3", {"email": "cy", "down": True})
        mail = tasks.send(notify, "sendWelcomeEmail", "u-1", {"to": "ada"})
        unknown = tasks.send(auth, "deleteUser", "u-4", {})  # nobody handles it
        not_json = tasks.send(auth, "createUser", "u-5", None, raw="{not json")
        replies = tasks.replies(4)
        key = f"{WORKFLOW}/u-1/CreateUser"
        tasks.check(
            replies[ok], "u-1", TaskSucceeded(output=f'{{"userId":"id-ada","key":"{key}"}}')
        )
        tasks.check(
            replies[taken], "u-2", TaskFailed(error="AuthServiceError", cause="email taken")
        )
        tasks.check(
            replies[down],
            "u-3",
            CommandFailed(error="TransientError", message="directory unreachable"),
        )
        tasks.check(replies[mail], "u-1", TaskSucceeded(output="null"))

        dlq = _dead_letters(kafka, auth)
        dead = _committed(dlq, 2)
        dlq.close()
        assert header_of(dead[unknown], DLQ_REASON) == "no-handler"
        assert header_of(dead[not_json], DLQ_REASON) == "bad-task-input"

        # The success delivered again (a redrive, say): the remembered reply, no second call.
        tasks.send(auth, "createUser", "u-1", {"email": "ada"})
        again = tasks.replies(1)
        assert again[ok].value() == replies[ok].value()
        assert calls.count(ok) == 1
    finally:
        worker.stop()
        serving.join(30)
    assert not serving.is_alive()


def test_a_worker_in_another_language_needs_only_the_schemas_and_a_kafka_client(
    kafka: KafkaCluster, tasks: Tasks, unique_name: Callable[[str], str]
) -> None:
    service = unique_name("Provisioning").replace(".", "")
    kafka.create_topic(f"{service}.tasks", 3)

    def provision(input: Any) -> Any:
        if input["plan"] == "unknown":
            raise LookupError("ProvisioningError", f"no plan {input['plan']}")
        if input["plan"] == "slow":
            raise TimeoutError("storage did not answer in 5 s")
        return {"bucket": f"b-{input['user']}", "plan": input["plan"]}

    foreign = ForeignWorker(kafka.bootstrap, f"{service}.tasks", {"provision": provision})
    serving = _serving(foreign.serve)
    try:
        executions = {f"u-{n}": plan for n, plan in enumerate(["free", "unknown", "slow", "pro"])}
        sent = {
            execution: tasks.send(
                service, "provision", execution, {"user": execution, "plan": plan}
            )
            for execution, plan in executions.items()
        }
        replies = tasks.replies(len(sent))
    finally:
        foreign.stopping.set()
        serving.join(30)
    expected: dict[str, Record] = {
        "u-0": TaskSucceeded(output='{"bucket":"b-u-0","plan":"free"}'),
        "u-1": TaskFailed(error="ProvisioningError", cause="no plan unknown"),
        "u-2": CommandFailed(error="TimeoutError", message="storage did not answer in 5 s"),
        "u-3": TaskSucceeded(output='{"bucket":"b-u-3","plan":"pro"}'),
    }
    for execution, cid in sent.items():
        tasks.check(replies[cid], execution, expected[execution])


def test_a_task_parked_as_no_handler_is_served_once_its_action_is_deployed_and_redriven(
    kafka: KafkaCluster, tasks: Tasks, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    auth = unique_name("Auth").replace(".", "")
    kafka.create_topic(f"{auth}.tasks", 3)

    def deployed(*actions: str) -> tuple[Worker, threading.Thread]:
        worker = Worker("accounts", service=auth)
        for action in actions:
            worker.action(action)(lambda input, context: {"deleted": input["user"]})
        return worker, _serving(lambda: worker.run(kafka.bootstrap, state_dir=tmp_path / "w"))

    old, serving = deployed("createUser")  # the definition is deployed before its worker
    try:
        parked = tasks.send(auth, "deleteUser", "u-7", {"user": "u-7"})
        dlq = _dead_letters(kafka, auth)
        assert header_of(_committed(dlq, 1)[parked], DLQ_REASON) == "no-handler"
        dlq.close()
    finally:
        old.stop()
        serving.join(30)

    new, serving = deployed("createUser", "deleteUser")
    try:
        letters = dead_letters(f"{auth}.tasks.dlq", kafka.bootstrap, reason="no-handler")
        assert redrive(f"{auth}.tasks.dlq", letters, kafka.bootstrap) == 1
        tasks.check(tasks.replies(1)[parked], "u-7", TaskSucceeded(output='{"deleted":"u-7"}'))
    finally:
        new.stop()
        serving.join(30)
