"""Task workers: the services' command handlers, and the runtime that runs them on Kafka.

A worker is a set of handlers, one per command type. A handler gets the command and a
``CommandContext`` whose ``idempotency_key`` names the step (the same for every attempt of it),
and returns the success reply, or raises ``BusinessError`` carrying the failure reply::

    payments = Worker("payments")

    @payments.handles(MakePayment)
    def pay(command: MakePayment, context: CommandContext) -> PaymentCompleted:
        if declined(command.card_token):
            raise BusinessError(PaymentFailed(order_id=command.order_id, reason="declined"))
        return PaymentCompleted(order_id=command.order_id, payment_id=charge(command,
                                key=context.idempotency_key))

A worker also serves the tasks of declarative definitions, by action name
(``stream_processors.core.tasks``): the handler gets the task's input decoded from JSON and
returns its output (anything JSON can hold), or raises ``TaskError`` to fail the task with an
error name its ``Retry`` and ``Catch`` rules match::

    auth = Worker("auth", service="AuthService")      # serves the topic AuthService.tasks

    @auth.action("createUser")
    def create_user(input: Any, context: CommandContext) -> Any:
        if taken(input["email"]):
            raise TaskError("AuthServiceError", f"{input['email']} is taken")
        return {"userId": create(input, key=context.idempotency_key)}

The runtime consumes the handled commands' topics in a consumer group (more processes share the
work) and answers each batch of commands in one Kafka transaction: the replies (to each
command's reply-to topic, keyed by the instance), the records of the commands handled (on the
group's ``<group>.handled`` topic, see ``sagas.idempotency``) and the consumed offsets. A
command delivered again after that commit, to this process or any other of the group, gets the
remembered reply without its handler running. A crash before the commit repeats the command
where it lands next: the handler's side effect is at least once, and the idempotency key is what
makes it effectively once. A handler that raises ``TransientError`` (or one of the worker's
``transient`` exception types) answers ``CommandFailed``, which the saga may retry. A command
that cannot be decoded, has no handler (a task: none for its service's action) or no reply
address, or whose handler crashes otherwise, a task whose input is not JSON
(``bad-task-input``), and a command larger than the producer may send (``too-large``) go to
``<topic>.dlq`` with the reason: ``sagas dlq redrive`` sends it back once the worker is fixed. A
reply that cannot be delivered (its topic missing, an invalid name, too large: checked before
producing, see ``stream_processors.core.limits``) goes to the same ``<topic>.dlq`` as
``reply-undeliverable``, with ``sagalog.dlq.topic`` naming the reply topic (so redrive sends it
there once it exists), in the transaction of the command's offset; its handled record is written
all the same. The runtime records each reply schema it sends in the schema history (best
effort), and reads commands written with a schema it does not know through that history. A
command whose reply address the worker does not allow (``bad-reply-address``, see
``sagas.reply_addresses``) and, with signing keys configured, one whose signature is missing or
wrong (``bad-signature``, see ``stream_processors.codecs.signing``) go to ``<topic>.dlq`` too,
before the handler runs or the handled commands are consulted. With keys, replies are signed. A
broker outage does not end a worker: started while the broker is down, it waits for it; serving,
it aborts what it cannot commit, replaces a producer or consumer that failed for good, and
serves again once the broker is back.

``Worker(concurrency=K)`` runs up to K handlers at once (threads; ``async def`` handlers too),
the commands of one saga instance one after the other, and commits a batch once all of its
commands are answered; ``Worker(rate=N)`` starts at most N handlers per second in the process
(see ``sagas.worker_pool``). The next batch is consumed only when the last is done: that bounds
memory, however slow the handlers.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from sagas.heartbeats import Heartbeats
from sagas.idempotency import HandledCommand, HandledCommands, ensure_handled_topic
from sagas.reply_addresses import BAD_REPLY_ADDRESS, ReplyAddresses
from sagas.worker_pool import Pace, run_by_key
from stream_processors.codecs.avro import DecodeError
from stream_processors.codecs.records import Command, DeclarationError, Event, Record, decode_record
from stream_processors.codecs.signing import (
    BAD_SIGNATURE,
    Keyring,
    Purpose,
    from_environment,
    signed,
    verify,
)
from stream_processors.core import limits
from stream_processors.core.decide import idempotency_key
from stream_processors.core.model import CommandFailed
from stream_processors.core.tasks import (
    TaskCommand,
    TaskFailed,
    TaskSucceeded,
    json_text,
    task_topic,
)
from stream_processors.engine import metrics, tracing
from stream_processors.engine.routing import (
    ATTEMPT,
    COMMAND_ID,
    DLQ_DETAIL,
    DLQ_REASON,
    DLQ_TOPIC,
    IDEMPOTENCY_KEY,
    INSTANCE,
    REPLY_TO,
    SAGA,
    Headers,
    ReceivedHeaders,
    carried_headers,
    dead_letter_headers,
    header,
    received_headers,
    reply_headers,
)
from stream_processors.engine.schema_history import SchemaHistory
from stream_processors.engine.store import claim_slot, default_state_dir
from stream_processors.kafka import transactions
from stream_processors.kafka.broker_limits import BrokerLimits
from stream_processors.kafka.clients import Stopping
from stream_processors.kafka.config import consumer_config, producer_config
from stream_processors.kafka.errors import wait_until_reachable
from stream_processors.kafka.reading import ReadTimeout, take
from stream_processors.kafka.topics import DLQ_POLICY, ensure_plain_topics

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Command)


class TransientError(Exception):
    """Raised by a handler for a failure worth trying again (a dependency down, a timeout).

    The runtime answers with a ``CommandFailed`` reply naming the error; the saga's retry policy
    decides whether, and when, to send the command again (as a new attempt, with a new id).
    Exceptions of the types a worker lists in ``transient=`` are treated the same way.
    """


class BusinessError(Exception):
    """Raised by a handler to answer with a failure reply (a declined card, say)."""

    def __init__(self, reply: Event) -> None:
        super().__init__(f"{type(reply).__name__}: {reply}")
        self.reply = reply


class TaskError(BusinessError):
    """Raised by an action handler to fail its task for good: the worker answers ``TaskFailed``
    with ``error``, the name the Task's ``Retry`` and ``Catch`` rules match (``ErrorEquals``:
    ``"AuthServiceError"``, or a predefined one such as ``"States.TaskFailed"``), and ``cause``,
    an explanation kept in the execution's history. A transient failure is a ``TransientError``
    instead: it answers ``CommandFailed``, which the Task's retry policy may retry."""

    def __init__(self, error: str, cause: str | None = None) -> None:
        if not error:
            raise ValueError("TaskError: the error name is empty")
        super().__init__(TaskFailed(error=error, cause=cause))
        self.error = error
        self.cause = cause


@dataclass(frozen=True)
class CommandContext:
    """What a handler knows about the command besides its fields.

    ``idempotency_key`` names the step (``saga/instance/step``; a compensation's is
    ``saga/instance/step.compensation``) and is the same for every attempt: give it to the
    service that makes the side effect, so a retry or a redelivery does not make it twice.
    ``command_id`` names this attempt (``<idempotency_key>/<attempt>``). ``task`` is the
    ``TaskCommand`` itself when the handler serves an action (its state, service, timeouts).
    """

    idempotency_key: str
    command_id: str
    attempt: int
    instance_id: str
    saga: str | None
    topic: str
    partition: int
    offset: int
    task: TaskCommand | None = None
    #: Sends this task's heartbeat (``sagas.heartbeats``); None where none is expected.
    beat: Callable[[], None] | None = None

    def heartbeat(self) -> None:
        """Tell the saga a task's action is still running: a Task with ``HeartbeatSeconds``
        fails with ``States.HeartbeatTimeout`` when none comes within that interval. Does
        nothing for a command that asks for no heartbeats, or outside ``sagas worker``."""
        if self.beat is not None:
            self.beat()


def command_context(message: Message, command_id: str, instance_id: str) -> CommandContext:
    """The context of a command record whose id and instance are known.

    Commands written before the ``sagalog.idempotency_key`` and ``sagalog.attempt`` headers
    existed get both from the command id, which carries them.
    """
    headers = message.headers()
    derived_key, derived_attempt = idempotency_key(command_id)
    attempt = header(headers, ATTEMPT)
    return CommandContext(
        idempotency_key=header(headers, IDEMPOTENCY_KEY) or derived_key,
        command_id=command_id,
        attempt=int(attempt) if attempt and attempt.isdigit() else derived_attempt,
        instance_id=instance_id,
        saga=header(headers, SAGA),
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
    )


Handler = Callable[[Any, CommandContext], Event]
#: An action's handler: the task's input decoded from JSON -> its output, as JSON can hold it.
ActionHandler = Callable[[Any, CommandContext], Any]
A = TypeVar("A", bound=ActionHandler)
#: A record to send: (topic, key, value, headers).
Outgoing = tuple[str, bytes | None, bytes | None, Headers]


@dataclass(frozen=True)
class Answer:
    """What serving one command record sends: its reply or dead letter, and, for a reply given
    for the first time, the record of it to remember."""

    outgoing: Outgoing
    handled: HandledCommand | None = None
    #: A dead letter rather than a reply.
    dead: bool = False
    #: Why a remembered reply cannot be sent again (it was recorded cut: too large).
    undeliverable: str | None = None


class Worker:
    """A named set of command handlers; ``run()`` serves them until ``stop()``.

    ``service``: the service whose tasks ``action`` registers handlers for, unless it names
    another (one worker may serve the actions of several services, each on its task topic).

    ``reply_to``: the topics (names or ``fnmatch`` patterns) replies may go to, by default every
    saga's inbox (``*.inbox``; see ``sagas.reply_addresses``). ``signing``: the keys commands
    are checked and replies signed with; by default those of the environment
    (``SAGALOG_SIGNING_KEYS`` or ``SAGALOG_SIGNING_KEYS_FILE``), and none there means off.
    """

    def __init__(
        self,
        name: str,
        group: str | None = None,
        transient: tuple[type[Exception], ...] = (ConnectionError, TimeoutError),
        reply_to: Iterable[str] | None = None,
        signing: Keyring | None = None,
        service: str | None = None,
        concurrency: int = 1,
        rate: float | None = None,
    ) -> None:
        if concurrency < 1:
            raise DeclarationError(f"worker {name!r}: concurrency must be at least 1")
        self.name = name
        #: Handlers run at once (threads; an ``async def`` handler runs in its own event loop),
        #: one instance's commands in order (``sagas.worker_pool``).
        self.concurrency = concurrency
        #: At most this many handlers start per second, in this process (None: no limit).
        self.pace = Pace(rate)
        self.service = service
        self.group = group or f"sagalog.worker.{name}"
        self.transient: tuple[type[Exception], ...] = (TransientError, *transient)
        self.reply_addresses = ReplyAddresses.of(reply_to)
        self.signing = signing if signing is not None else from_environment()
        self._handlers: dict[type[Record], Handler] = {}
        self._actions: dict[tuple[str, str], ActionHandler] = {}  # by (service, action)
        self._task_topics: dict[str, str] = {}  # by service
        self._stopping = threading.Event()
        self._history: SchemaHistory | None = None  # set by run(): replies' schemas go there
        self._handled: HandledCommands | None = None  # set by run(): replies by command id
        self._heartbeats: Heartbeats | None = None  # set by run(): task heartbeats go there

    def handles(self, command: type[C]) -> Callable[[Callable[[C, CommandContext], Event]], Any]:
        if not (isinstance(command, type) and issubclass(command, Command)):
            raise DeclarationError(f"worker {self.name!r}: {command!r} is not a Command class")
        if command.__topic__ is None:
            raise DeclarationError(f"worker {self.name!r}: {command.__qualname__} has no topic")
        if command in self._handlers:
            raise DeclarationError(f"worker {self.name!r}: two handlers for {command.__qualname__}")

        def register(function: Callable[[C, CommandContext], Event]) -> Any:
            self._handlers[command] = function
            return function

        return register

    def action(
        self, name: str, *, service: str | None = None, topic: str | None = None
    ) -> Callable[[A], A]:
        """Register the handler of the tasks of ``service`` (by default the worker's) whose
        action is ``name``: ``handler(input, context) -> output``, the input decoded from the
        task's JSON and the output any value JSON can hold. The service's tasks are read from
        ``topic``, by default ``<service>.tasks`` (``stream_processors.core.tasks.task_topic``);
        a service has one topic per worker."""
        service = service or self.service
        where = f"worker {self.name!r}: action {name!r}"
        if not service:
            raise DeclarationError(f"{where} names no service (Worker(..., service=...))")
        if not name:
            raise DeclarationError(f"worker {self.name!r}: an action needs a name")
        if (service, name) in self._actions:
            raise DeclarationError(f"{where}: two handlers for {service}.{name}")
        topic = topic or task_topic(service)
        known = self._task_topics.setdefault(service, topic)
        if known != topic:
            raise DeclarationError(f"{where}: {service}'s tasks are read from {known}, not {topic}")

        def register(function: A) -> A:
            self._actions[(service, name)] = function
            return function

        return register

    @property
    def topics(self) -> list[str]:
        commands = {t.__topic__ for t in self._handlers if t.__topic__}  # type: ignore[attr-defined]
        return sorted(commands | set(self._task_topics.values()))

    def stop(self) -> None:
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop())

    def handle(
        self,
        message: Message,
        remembered: Callable[[CommandContext], HandledCommand | None] | None = None,
    ) -> Answer:
        """Answer one command record: its remembered reply, its handler's, or a dead letter.

        Pure of Kafka apart from reading ``message``: the runtime loop does the sending.
        ``remembered`` looks a command up among those handled before (by default the group's
        ``<group>.handled`` records, when ``run`` keeps them; ``sagas.faust`` passes its table).
        ``message`` needs only confluent-kafka's accessors: ``topic()``, ``partition()``,
        ``offset()``, ``key()``, ``value()``, ``headers()``.
        """
        if self.signing is not None:  # before anything in the record is believed
            topic, key, value = message.topic() or "", message.key(), message.value()
            problem = verify(self.signing, Purpose.COMMAND, topic, key, value, message.headers())
            if problem is not None:
                return self._dead(message, BAD_SIGNATURE, problem)
        try:
            command = decode_record(message.value())
        except DecodeError as error:
            return self._dead(message, error.reason, error.detail)
        if self._handler(command) is None:
            task = isinstance(command, TaskCommand)
            unserved = _command_name(command) if task else type(command).__qualname__
            return self._dead(message, "no-handler", unserved)
        headers = message.headers()
        reply_to = header(headers, REPLY_TO)
        command_id = header(headers, COMMAND_ID)
        instance_id = header(headers, INSTANCE)
        if not (reply_to and command_id and instance_id):
            return self._dead(message, "no-reply-address", "missing sagalog.* headers")
        refusal = self.reply_addresses.refusal(reply_to)
        if refusal is not None:
            return self._dead(message, BAD_REPLY_ADDRESS, refusal)
        context = command_context(message, command_id, instance_id)
        if isinstance(command, TaskCommand):
            beat = None
            if command.heartbeat_seconds and self._heartbeats is not None:
                beat = self._heartbeats.sender(reply_to, instance_id, command_id)
            context = replace(context, task=command, beat=beat)
            if beat is not None:  # the action starts now: its heartbeat interval runs from here
                beat()
        known = (remembered or self._remembered)(context)
        if known is not None:  # handled before: answer the same, without a second effect
            refusal = self.reply_addresses.refusal(known.reply_to)  # remembered before a change
            if refusal is not None:
                return self._dead(message, BAD_REPLY_ADDRESS, refusal)
            self._count(command, "repeated")
            again = (known.reply_to, known.instance_id.encode(), known.reply, command_id)
            cut = None if known.truncated is None else f"reply of {known.truncated} bytes"
            return Answer(self.reply_record(*again), undeliverable=cut)
        try:
            reply, trace = self._traced_reply(command, context, headers)
        except _HandlerCrashed as crash:  # a bug in the handler: park the command, keep serving
            return self._dead(message, crash.reason, str(crash))
        if self._history is not None:
            self._history.try_record(reply_to, reply.__avro__)
        value = reply.encode()
        handled = HandledCommand(
            command_id, reply_to, instance_id, value, context.topic, context.partition
        )
        outgoing = self.reply_record(reply_to, instance_id.encode(), value, command_id, trace)
        if context.beat is not None and self._heartbeats is not None and context.task is not None:
            # Answered, but the reply commits with its batch: until then, still alive.
            self._heartbeats.answered(context.command_id, context.beat, context.task)
        return Answer(outgoing, handled)

    def reply_record(
        self, topic: str, key: bytes, value: bytes, command_id: str, trace: Headers | None = None
    ) -> Outgoing:
        """A reply to send: (topic, key, value, headers), signed when the worker has keys;
        ``trace``: the handler span's context (``tracing.handling``), with tracing on."""
        headers = reply_headers(command_id, trace)
        if self.signing is not None:
            headers = signed(self.signing, Purpose.INBOX, topic, key, value, headers)
        return (topic, key, value, headers)

    def _remembered(self, context: CommandContext) -> HandledCommand | None:
        if self._handled is None:
            return None
        return self._handled.reply(context.topic, context.partition, context.command_id)

    def _traced_reply(
        self, command: Record, context: CommandContext, headers: ReceivedHeaders
    ) -> tuple[Event, Headers | None]:
        """``_reply``, inside the handler's span while tracing is on: (reply, its trace headers)."""
        if not tracing.ENABLED:
            return self._reply(command, context), None
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.destination.name": context.topic,
            "sagalog.worker": self.name,
            "sagalog.command_id": context.command_id,
            "sagalog.attempt": context.attempt,
            "sagalog.instance": context.instance_id,
        }
        with tracing.handling(headers, type(command).__name__, attributes) as span:
            reply = self._reply(command, context)
            if isinstance(reply, CommandFailed):
                span.failed(f"{reply.error}: {reply.message}")
        return reply, span.headers

    def _reply(self, command: Record, context: CommandContext) -> Event:
        """The handler's reply: its success or failure reply, or ``CommandFailed`` for a
        transient error. Raises ``_HandlerCrashed`` for any other exception."""
        name = _command_name(command)
        self.pace.wait(self._stopping)
        began = time.perf_counter()
        try:
            reply, outcome = self.answer(command, context)
            if outcome == "transient":
                log.warning("transient failure of %s on %s: %s", name, context.command_id, reply)
        except BadTaskInput as error:  # the sender's fault, not the handler's: it did not run
            log.warning("task %s on %s: %s", name, context.command_id, error)
            raise _HandlerCrashed(str(error), BAD_TASK_INPUT) from error
        except Exception as error:
            log.exception("handler for %s crashed on %s", name, context.command_id)
            raise _HandlerCrashed(f"{type(error).__name__}: {error}") from error
        finally:
            metrics.HANDLER_SECONDS.labels(worker=self.name, command=name).observe(
                time.perf_counter() - began
            )
        self._count(command, outcome)
        return reply

    def _count(self, command: Record, outcome: str) -> None:
        metrics.COMMANDS_HANDLED.labels(
            worker=self.name, command=_command_name(command), outcome=outcome
        ).inc()

    def _handler(self, command: Record) -> Handler | None:
        """The handler of ``command``: its class's, or for a task its service's action's."""
        if isinstance(command, TaskCommand):
            action = self._actions.get((command.service, command.action))
            return None if action is None else functools.partial(_run_action, action)
        return self._handlers.get(type(command))

    def answer(self, command: Record, context: CommandContext) -> tuple[Event, str]:
        """Run the handler for ``command``, in memory: (reply, outcome). No Kafka, no metrics.

        The outcome is ``"succeeded"`` (the handler's reply), ``"failed"`` (the reply carried by
        a ``BusinessError``) or ``"transient"`` (a ``CommandFailed`` naming a transient error).
        Any other exception propagates: the runtime dead-letters the command. ``handle`` and
        ``sagas.testing.handle`` both answer through here. Raises ``LookupError`` when the
        worker has no handler for the command's type (for a task: its service's action).
        A task's outcomes are ``TaskSucceeded`` with the handler's output as JSON, ``TaskFailed``
        from a ``TaskError``, and ``CommandFailed``; a task whose input is not JSON raises
        ``BadTaskInput``, an output JSON cannot hold ``TypeError`` or ``ValueError``.
        """
        handler = self._handler(command)
        if handler is None:
            raise LookupError(f"worker {self.name!r} has no handler for {_command_name(command)}")
        try:
            return _settled(handler(command, context)), "succeeded"
        except BadTaskInput:
            raise  # whatever the worker counts as transient: sending it again cannot help
        except BusinessError as error:
            return error.reply, "failed"
        except self.transient as error:
            return CommandFailed(error=type(error).__name__, message=str(error)), "transient"

    def _dead(self, message: Message, reason: str, detail: str) -> Answer:
        log.warning(
            "dead letter from %s@%s: %s %s", message.topic(), message.offset(), reason, detail
        )
        metrics.count_dead_letter(self.name, reason)
        dead_letter = (
            f"{message.topic()}.dlq",
            message.key(),
            message.value(),
            dead_letter_headers(message, reason, detail),
        )
        return Answer(dead_letter, dead=True)

    def run(
        self,
        bootstrap: str | None = None,
        batch_size: int = 500,
        state_dir: Path | None = None,
        remember: bool = True,
    ) -> None:
        """Serve until ``stop()``. ``remember`` keeps replies by command id on the group's
        handled topic, so a repeated command is not redone. ``state_dir`` (default
        ``$SAGALOG_STATE_DIR/workers/<name>``) keeps this process's identity across restarts."""
        if not self.topics:
            raise DeclarationError(f"worker {self.name!r} has no handlers")
        tracing.configure()  # from the OTEL_* environment: off (and free) unless it asks
        if not wait_until_reachable(bootstrap, f"worker {self.name}", self._stopping):
            return  # stopped before the broker came
        ensure_plain_topics(self.topics, bootstrap)
        ensure_plain_topics([f"{t}.dlq" for t in self.topics], bootstrap, config=DLQ_POLICY)
        if remember:
            partitions = ensure_handled_topic(self.group, self.topics, bootstrap)
            self._handled = HandledCommands(self.group, bootstrap, partitions)
        # Schema evolution: record reply schemas on first use; ask for unknown command schemas.
        self._history = SchemaHistory(bootstrap)
        self._history.serve_unknown()
        slot = claim_slot(state_dir or default_state_dir("workers") / self.name)
        self._heartbeats = Heartbeats(
            bootstrap, f"worker-{self.name}-heartbeats", self.reply_record
        )
        try:
            _Serving(self, bootstrap, f"{self.group}.{slot.identity}").serve(batch_size)
        except Stopping:  # asked to stop while it waited on the broker
            log.warning("worker %s stopped while waiting on the broker", self.name)
        finally:
            self._heartbeats.close()
            self._heartbeats = None
            self._history.close()
            slot.release()


#: The reason of a reply that could not be sent, in its dead letter on ``<command topic>.dlq``.
REPLY_UNDELIVERABLE = "reply-undeliverable"
#: Where the command of an undeliverable reply was read: ``topic[partition]@offset``.
DLQ_COMMAND = "sagalog.dlq.command"
#: The longest the worker waits for a command (it returns at the first): how late a stop is seen.
POLL_TIMEOUT = 0.1


def _key_of(message: Message) -> tuple[str, bytes | None]:
    """Commands of one instance (their key) run in order: (topic, key)."""
    return message.topic() or "", message.key()


def undeliverable(limits_of: BrokerLimits, outgoing: Outgoing) -> str | None:
    """Why the reply ``outgoing`` cannot be sent (its topic, its size), or None: asked before
    producing a reply by ``sagas worker`` and by ``sagas.faust``'s worker agents."""
    topic, key, value, headers = outgoing
    problem = limits_of.problem(topic)
    if problem is not None:
        return f"reply topic {topic[:300]!r} {problem}"
    oversize = limits_of.limits(topic).oversize("reply", topic, key, value, headers)
    return None if oversize is None else oversize.detail()


def reply_dead_letter(
    message: Message, reply: Outgoing, why: str
) -> tuple[str, bytes | None, bytes | None, Headers, Headers]:
    """The dead letter of a reply to ``message`` that cannot be sent: its topic
    (``<command topic>.dlq``), key, value, original headers and marks, to fit to the topic.
    Its address is the origin a redrive sends it to (``sagalog.dlq.topic``), and in
    ``sagalog.reply_to``."""
    reply_to, key, value, headers = reply
    where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
    log.warning("reply to %s of command %s undeliverable: %s", reply_to[:300], where, why)
    # The command's own headers (trace context...) follow its reply, redriven or not.
    original: Headers = [*headers, (REPLY_TO, reply_to.encode()), *carried_headers(message)]
    marks: Headers = [
        (DLQ_REASON, REPLY_UNDELIVERABLE.encode()),
        (DLQ_DETAIL, f"{why} (command {where})"[:1000].encode()),
        (DLQ_TOPIC, reply_to.encode()),
        (DLQ_COMMAND, where.encode()),
    ]
    return f"{message.topic()}.dlq", key, value, original, marks


#: The dead-letter reason of a task whose input is not JSON (its handler does not run).
BAD_TASK_INPUT = "bad-task-input"


class BadTaskInput(ValueError):
    """A task's input is not JSON: the command is malformed, whoever sent it."""


class _HandlerCrashed(Exception):
    """A handler raised something other than a business or transient error (``reason``: the
    command's dead-letter reason)."""

    def __init__(self, detail: str, reason: str = "handler-error") -> None:
        super().__init__(detail)
        self.reason = reason


def _settled(result: Any) -> Any:
    """A handler's reply; an ``async def`` handler's, awaited in an event loop of its own."""
    if inspect.isawaitable(result):
        return asyncio.run(_awaited(result))
    return result


async def _awaited(result: Awaitable[Any]) -> Any:
    return await result


def _command_name(command: Record) -> str:
    """How logs and metrics name a command: its class, or a task's service and action."""
    if isinstance(command, TaskCommand):
        return f"{command.service}.{command.action}"
    return type(command).__name__


def _run_action(action: ActionHandler, task: TaskCommand, context: CommandContext) -> Event:
    """An action handler run as a command handler: JSON in, ``TaskSucceeded`` out."""
    try:
        given = task.input_value()
    except ValueError as error:
        raise BadTaskInput(f"the input of {_command_name(task)} is not JSON: {error}") from None
    return TaskSucceeded(output=json_text(action(given, context)))


class _Serving:
    """One process serving a worker: each batch of commands is answered in one transaction
    holding the replies (or dead letters), the records of the handled commands, and the
    consumed offsets. See ``sagas.idempotency`` for the records and their restore.

    A broker outage never ends the process: a transaction that cannot commit is aborted and the
    commands read again (``stream_processors.kafka.transactions``); a producer that cannot even
    abort, or reports a fatal error, is replaced by a new one with the same transactional id,
    and a consumer that reports a fatal error by a new one. Each waits for the broker, and a
    stop request ends any wait within seconds (``Stopping``)."""

    def __init__(self, worker: Worker, bootstrap: str | None, identity: str) -> None:
        self.worker = worker
        self.stopping = worker._stopping
        self.handled = worker._handled
        client = f"worker-{worker.name}"
        # The identity is kept in the process's slot folder: a restart (same identity) fences
        # its predecessor's producer and takes its static membership back at once. Fencing of
        # a process that lost its partitions is the group generation's job (KIP-447).
        self.producer_settings = producer_config(bootstrap, client, identity)
        self.limits = BrokerLimits(bootstrap, self.producer_settings)
        self.calls = transactions.Calls(self.stopping)
        self.producer = self._new_producer()
        membership = {
            "group.instance.id": identity,
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            # Only partitions that move are revoked and restored, not every partition.
            "partition.assignment.strategy": "cooperative-sticky",
        }
        self.consumer_settings = consumer_config(bootstrap, client, worker.group, **membership)
        self.consumer = self._subscribed()
        self.offsets: dict[tuple[str, int], int] = {}
        #: The batch's replies, produced just before its commit (``_send_replies``).
        self.replies: list[tuple[Message, Outgoing]] = []
        self.lock = threading.Lock()
        self.open = False
        self.committing = False  # commit_transaction called: its outcome is known once it returns

    def _new_producer(self) -> Producer:
        """A transactional producer with this process's id, once the broker initialised it."""
        return transactions.initialised(self.calls, Producer(dict(self.producer_settings)))

    def _subscribed(self) -> Consumer:
        consumer = Consumer(self.consumer_settings)
        consumer.subscribe(
            self.worker.topics, on_assign=self._assigned, on_revoke=self._gone, on_lost=self._gone
        )
        return consumer

    def serve(self, batch_size: int) -> None:
        worker = self.worker
        log.info("worker %s serving %s", worker.name, ", ".join(worker.topics))
        try:
            while not self.stopping.is_set():
                # Returns at the first input; the bound is how late a stop is seen.
                messages = take(self.consumer, batch_size, POLL_TIMEOUT)
                try:
                    self._serve_batch(messages)
                    if self.open:
                        self._commit()
                except transactions.ConsumerFailed as error:
                    self._replace_consumer(error)
                except KafkaException as error:
                    self._abort(error)
        finally:
            # Nothing to flush: the last transaction committed, or is left open (stopped
            # during a wait) for the broker to abort, and its records with it.
            self._close_consumer()

    def _serve_batch(self, messages: list[Message]) -> None:
        """Answer a batch, up to ``concurrency`` commands at once, one instance's in order; the
        batch's transaction commits once all are answered (``sagas.worker_pool``)."""
        consumed = [m for m in messages if transactions.consumed(m)]
        if consumed and not self.open:
            self.producer.begin_transaction()
            self.open = True
        run_by_key(consumed, _key_of, self._serve, self.worker.concurrency)

    def _close_consumer(self) -> None:
        try:
            self.consumer.close()
        except KafkaException as error:  # the broker is down: the group notices on its own
            log.warning("consumer not closed cleanly: %s", error.args[0])

    def _serve(self, message: Message) -> None:
        if self.stopping.is_set():  # the batch's transaction is left to abort
            raise Stopping()
        answer = self._answer(message)
        if answer.dead:
            self._dead_letter(message, answer.outgoing)
        else:
            why = answer.undeliverable or self._undeliverable(answer.outgoing)
            if why is None:
                with self.lock:
                    self.replies.append((message, answer.outgoing))
            else:
                self._reply_dead_letter(message, answer.outgoing, why)
            if answer.handled is not None and self.handled is not None:
                with self.lock:  # the handled commands' staging is shared by the threads
                    self._record(answer.handled)
        where = (message.topic() or "", message.partition() or 0)
        with self.lock:  # handled out of order across instances: the batch's highest offset
            self.offsets[where] = max(self.offsets.get(where, 0), (message.offset() or 0) + 1)

    # -- limits: nothing the worker sends may fail for its size or address (stream_processors.
    # limits); what would goes to the command topic's DLQ, in the command's transaction.

    def _answer(self, message: Message) -> Answer:
        """The worker's answer, unless the command is too large to dead-letter or redrive whole."""
        size = limits.record_size(message.key(), message.value(), received_headers(message))
        largest = self.limits.limits(f"{message.topic()}.dlq").producer_max_bytes
        if size > largest:
            return self.worker._dead(message, limits.TOO_LARGE, f"{size} bytes > limit {largest}")
        return self.worker.handle(message)

    def _undeliverable(self, outgoing: Outgoing) -> str | None:
        return undeliverable(self.limits, outgoing)

    def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        partition: int | None = None,
    ) -> str | None:
        """Produce one record; None, or why the client refused it (a fatal error raises)."""
        while True:
            try:
                if partition is None:
                    self.producer.produce(topic, key=key, value=value, headers=headers)
                else:
                    self.producer.produce(
                        topic, key=key, value=value, headers=headers, partition=partition
                    )
                return None
            except BufferError:  # the local queue is full: let deliveries drain
                if self.stopping.is_set():
                    raise Stopping() from None
                self.producer.poll(0.1)
            except KafkaException as error:
                kafka_error = error.args[0]
                if kafka_error.fatal() or kafka_error.txn_requires_abort():
                    raise
                self.limits.forget(topic)
                return f"produce refused: {kafka_error}"

    def _dead_letter(self, message: Message, outgoing: Outgoing) -> None:
        """Produce a dead letter of ``message``, cut to fit its topic if it must be."""
        topic, key, value, headers = outgoing
        original = received_headers(message)
        marks = headers[len(original) :]
        self._send_fitted(topic, key, value, original, marks)

    def _reply_dead_letter(self, message: Message, reply: Outgoing, why: str) -> None:
        """Send the reply that cannot be delivered to ``<command topic>.dlq``, with its address
        as the origin a redrive sends it to (``sagalog.dlq.topic``) and in ``sagalog.reply_to``."""
        metrics.count_dead_letter(self.worker.name, REPLY_UNDELIVERABLE)
        self._send_fitted(*reply_dead_letter(message, reply, why))

    def _send_fitted(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        original: Headers,
        marks: Headers,
    ) -> None:
        """A dead letter cut to fit ``topic``; its marks alone if the client still refuses it."""
        letter = limits.fit_dead_letter(
            key, value, original, marks, self.limits.limits(topic).max_record_bytes
        )
        refused = self._send(topic, letter.key, letter.value, letter.headers)
        if refused is not None:
            log.error("dead letter to %s %s: sending its reason and origin only", topic, refused)
            cut = letter.key[: limits.MAX_DEAD_LETTER_KEY] if letter.key else None
            if self._send(topic, cut, None, marks) is not None:
                raise RuntimeError(f"{topic} refuses even a dead letter's headers: {refused}")

    def _record(self, handled: HandledCommand) -> None:
        assert self.handled is not None
        handled = self._fit_handled(handled)
        key, value, headers = handled.encode()
        partition = self.handled.partition_for(handled.partition)
        refused = self._send(self.handled.topic, key, value, headers, partition)
        if refused is not None:
            log.error("handled record of %s not kept: %s", handled.command_id, refused)
            return
        self.handled.stage(handled)

    def _fit_handled(self, handled: HandledCommand) -> HandledCommand:
        """The handled record as it fits its topic: the reply cut (and marked) if it must be."""
        assert self.handled is not None
        key, value, headers = handled.encode()
        fits = self.limits.limits(self.handled.topic)
        if fits.fits(key, value, headers):
            return handled
        marked = replace(handled, reply=b"", truncated=len(handled.reply)).encode()
        room = fits.max_record_bytes - limits.record_size(*marked)
        return replace(handled, reply=handled.reply[: max(0, room)], truncated=len(value))

    def _send_replies(self) -> None:
        """Produce the batch's replies, at its end. A record the transaction writes to a
        partition holds back every read_committed reader of that partition until the commit:
        a reply produced as soon as its command was answered would hide, for the rest of the
        batch (a long action after it), everything written to that inbox partition since,
        task heartbeats (which then came too late: ``States.HeartbeatTimeout`` for an answered
        task) and other workers' replies alike."""
        staged, self.replies = self.replies, []
        for message, reply in staged:
            why = self._send(*reply)
            if why is not None:
                self._reply_dead_letter(message, reply, why)

    def _commit(self) -> None:
        self._send_replies()
        deadline = time.monotonic() + transactions.COMMIT_PATIENCE
        transactions.commit(
            self.calls,
            self.producer,
            self.consumer,
            self.offsets,
            deadline,
            committing=self._committing,
        )
        self._closed()
        if self.handled is not None:
            self.handled.committed()

    def _committing(self) -> None:
        """``commit_transaction`` is called: from now on its outcome is uncertain until known."""
        self.committing = True

    def _abort(self, error: KafkaException) -> None:
        """Abort, or replace a producer that cannot abort; the commands are read and handled
        again from the committed offsets."""
        uncertain = False
        try:
            try:
                transactions.abort(self.calls, self.producer, self.consumer, error)
            except transactions.ConsumerFailed:
                raise  # aborted, but the consumer cannot rewind: below
            except KafkaException as unusable:
                log.warning("replacing the transactional producer (%s)", unusable.args[0])
                self.producer = self._new_producer()
                uncertain = self.committing
                transactions.rewind(self.calls, self.consumer)
        except transactions.ConsumerFailed as stuck:
            # The transaction is over (aborted, or fenced by the new producer); a new consumer
            # starts from the committed offsets, which is what the rewind was for.
            log.error("replacing the consumer (%s)", stuck.args[0])
            self._close_consumer()
            self.consumer = self._subscribed()
        self._closed()
        if self.handled is not None:
            self.handled.aborted()
            if uncertain:
                # A commit that failed may have completed all the same (the new producer's
                # init_transactions finishes it): learn again what was handled, from the topic.
                self._assigned(self.consumer, self.consumer.assignment())

    def _replace_consumer(self, error: KafkaException) -> None:
        """A consumer that failed for good: abort what it read, and consume with a new one
        (from the committed offsets, as any new member of the group does)."""
        log.error("replacing the consumer (%s)", error.args[0])
        self._close_consumer()
        self.consumer = self._subscribed()  # nothing assigned yet: the abort rewinds nothing
        if self.open:  # the producer is sound: abort its transaction, do not replace it
            why = f"the consumer was replaced: {error.args[0]}"
            self._abort(KafkaException(KafkaError(KafkaError._STATE, why, txn_requires_abort=True)))

    def _closed(self) -> None:
        self.open = False
        self.committing = False
        self.offsets.clear()
        self.replies.clear()
        if self.worker._heartbeats is not None:  # committed or aborted: answered at last
            self.worker._heartbeats.settled()

    # -- rebalancing: the transaction is never open here (each batch commits before the next
    # consume, which is where these run), so there is nothing to commit or abort.

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before any command of a new partition is handled, learn what was handled of it."""
        if self.handled is None:
            return
        handled = self.handled
        for tp in partitions:
            began = time.monotonic()
            # The broker may go down meanwhile: wait for it, as a command must not be served
            # before what was handled of its partition is known.
            count = self.calls.until_done(
                lambda _: handled.restore(tp.topic, tp.partition),  # noqa: B023 (called at once)
                f"restoring the handled commands of {tp.topic}[{tp.partition}]",
                (KafkaException, ReadTimeout),
            )
            log.info(
                "restored %s handled commands of %s[%s] in %.2fs",
                count,
                tp.topic,
                tp.partition,
                time.monotonic() - began,
            )

    def _gone(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.handled is not None:
            for tp in partitions:
                self.handled.forget(tp.topic, tp.partition)
