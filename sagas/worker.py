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

The runtime consumes the handled commands' topics in a consumer group (more processes share the
work) and answers each batch of commands in one Kafka transaction: the replies (to each
command's reply-to topic, keyed by the instance), the records of the commands handled (on the
group's ``<group>.handled`` topic, see ``sagas.idempotency``) and the consumed offsets. A
command delivered again after that commit, to this process or any other of the group, gets the
remembered reply without its handler running. A crash before the commit repeats the command
where it lands next: the handler's side effect is at least once, and the idempotency key is
what makes it effectively once. A handler that raises ``TransientError`` (or one of the
worker's ``transient`` exception types) answers ``CommandFailed``, which the saga may retry. A
command that cannot be decoded, has no handler or no reply address, or whose handler crashes
otherwise, goes to ``<topic>.dlq`` with the reason: ``sagas dlq redrive`` sends it back once the
worker is fixed. The runtime records each reply schema it sends in the schema history (best
effort), and reads commands written with a schema it does not know through that history.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from sagas.idempotency import HandledCommand, HandledCommands, ensure_handled_topic
from stream_processors import metrics, transactions
from stream_processors.avro import DecodeError
from stream_processors.decide import idempotency_key
from stream_processors.kafka_config import consumer_config, producer_config
from stream_processors.model import CommandFailed
from stream_processors.records import Command, DeclarationError, Event, Record, decode_record
from stream_processors.routing import (
    ATTEMPT,
    COMMAND_ID,
    IDEMPOTENCY_KEY,
    INSTANCE,
    REPLY_TO,
    SAGA,
    Headers,
    dead_letter_headers,
    header,
    reply_headers,
)
from stream_processors.schema_history import SchemaHistory
from stream_processors.store import claim_slot, default_state_dir
from stream_processors.topics import ensure_plain_topics

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


@dataclass(frozen=True)
class CommandContext:
    """What a handler knows about the command besides its fields.

    ``idempotency_key`` names the step (``saga/instance/step``; a compensation's is
    ``saga/instance/step.compensation``) and is the same for every attempt: give it to the
    service that makes the side effect, so a retry or a redelivery does not make it twice.
    ``command_id`` names this attempt (``<idempotency_key>/<attempt>``).
    """

    idempotency_key: str
    command_id: str
    attempt: int
    instance_id: str
    saga: str | None
    topic: str
    partition: int
    offset: int


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
#: A record to send: (topic, key, value, headers).
Outgoing = tuple[str, bytes | None, bytes | None, Headers]


@dataclass(frozen=True)
class Answer:
    """What serving one command record sends: its reply or dead letter, and, for a reply given
    for the first time, the record of it to remember."""

    outgoing: Outgoing
    handled: HandledCommand | None = None


class Worker:
    """A named set of command handlers; ``run()`` serves them until ``stop()``."""

    def __init__(
        self,
        name: str,
        group: str | None = None,
        transient: tuple[type[Exception], ...] = (ConnectionError, TimeoutError),
    ) -> None:
        self.name = name
        self.group = group or f"sagalog.worker.{name}"
        self.transient: tuple[type[Exception], ...] = (TransientError, *transient)
        self._handlers: dict[type[Record], Handler] = {}
        self._stopping = threading.Event()
        self._history: SchemaHistory | None = None  # set by run(): replies' schemas go there
        self._handled: HandledCommands | None = None  # set by run(): replies by command id

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

    @property
    def topics(self) -> list[str]:
        return sorted({t.__topic__ for t in self._handlers if t.__topic__})  # type: ignore[attr-defined]

    def stop(self) -> None:
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop())

    def handle(self, message: Message) -> Answer:
        """Answer one command record: its remembered reply, its handler's, or a dead letter.

        Pure of Kafka apart from reading ``message``: the runtime loop does the sending.
        """
        try:
            command = decode_record(message.value())
        except DecodeError as error:
            return self._dead(message, error.reason, error.detail)
        if type(command) not in self._handlers:
            return self._dead(message, "no-handler", type(command).__qualname__)
        headers = message.headers()
        reply_to = header(headers, REPLY_TO)
        command_id = header(headers, COMMAND_ID)
        instance_id = header(headers, INSTANCE)
        if not (reply_to and command_id and instance_id):
            return self._dead(message, "no-reply-address", "missing sagalog.* headers")
        context = command_context(message, command_id, instance_id)
        known = self._remembered(context)
        if known is not None:  # handled before: answer the same, without a second effect
            self._count(command, "repeated")
            again = (known.reply_to, known.instance_id.encode(), known.reply)
            return Answer((*again, reply_headers(command_id)))
        try:
            reply = self._reply(command, context)
        except _HandlerCrashed as crash:  # a bug in the handler: park the command, keep serving
            return self._dead(message, "handler-error", str(crash))
        if self._history is not None:
            self._history.try_record(reply_to, reply.__avro__)
        value = reply.encode()
        handled = HandledCommand(
            command_id, reply_to, instance_id, value, context.topic, context.partition
        )
        return Answer((reply_to, instance_id.encode(), value, reply_headers(command_id)), handled)

    def _remembered(self, context: CommandContext) -> HandledCommand | None:
        if self._handled is None:
            return None
        return self._handled.reply(context.topic, context.partition, context.command_id)

    def _reply(self, command: Record, context: CommandContext) -> Event:
        """The handler's reply: its success or failure reply, or ``CommandFailed`` for a
        transient error. Raises ``_HandlerCrashed`` for any other exception."""
        name = type(command).__name__
        began = time.perf_counter()
        try:
            reply, outcome = self.answer(command, context)
            if outcome == "transient":
                log.warning("transient failure of %s on %s: %s", name, context.command_id, reply)
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
            worker=self.name, command=type(command).__name__, outcome=outcome
        ).inc()

    def answer(self, command: Record, context: CommandContext) -> tuple[Event, str]:
        """Run the handler for ``command``, in memory: (reply, outcome). No Kafka, no metrics.

        The outcome is ``"succeeded"`` (the handler's reply), ``"failed"`` (the reply carried by
        a ``BusinessError``) or ``"transient"`` (a ``CommandFailed`` naming a transient error).
        Any other exception propagates: the runtime dead-letters the command. ``handle`` and
        ``sagas.testing.handle`` both answer through here. Raises ``LookupError`` when the
        worker has no handler for the command's type.
        """
        handler = self._handlers.get(type(command))
        if handler is None:
            raise LookupError(f"worker {self.name!r} has no handler for {type(command).__name__}")
        try:
            return handler(command, context), "succeeded"
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
        return Answer(dead_letter)

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
        if not self._handlers:
            raise DeclarationError(f"worker {self.name!r} has no handlers")
        ensure_plain_topics([*self.topics, *(f"{t}.dlq" for t in self.topics)], bootstrap)
        if remember:
            partitions = ensure_handled_topic(self.group, self.topics, bootstrap)
            self._handled = HandledCommands(self.group, bootstrap, partitions)
        # Schema evolution: record reply schemas on first use; ask for unknown command schemas.
        self._history = SchemaHistory(bootstrap)
        self._history.serve_unknown()
        slot = claim_slot(state_dir or default_state_dir("workers") / self.name)
        try:
            _Serving(self, bootstrap, f"{self.group}.{slot.identity}").serve(batch_size)
        finally:
            slot.release()


class _HandlerCrashed(Exception):
    """A handler raised something other than a business or transient error."""


class _Serving:
    """One process serving a worker: each batch of commands is answered in one transaction
    holding the replies (or dead letters), the records of the handled commands, and the
    consumed offsets. See ``sagas.idempotency`` for the records and their restore."""

    def __init__(self, worker: Worker, bootstrap: str | None, identity: str) -> None:
        self.worker = worker
        self.handled = worker._handled
        client = f"worker-{worker.name}"
        # The identity is kept in the process's slot folder: a restart (same identity) fences
        # its predecessor's producer and takes its static membership back at once. Fencing of
        # a process that lost its partitions is the group generation's job (KIP-447).
        self.producer = Producer(producer_config(bootstrap, client, identity))
        self.producer.init_transactions(60)
        membership = {
            "group.instance.id": identity,
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            # Only partitions that move are revoked and restored, not every partition.
            "partition.assignment.strategy": "cooperative-sticky",
        }
        self.consumer = Consumer(consumer_config(bootstrap, client, worker.group, **membership))
        self.offsets: dict[tuple[str, int], int] = {}
        self.open = False

    def serve(self, batch_size: int) -> None:
        worker = self.worker
        self.consumer.subscribe(
            worker.topics, on_assign=self._assigned, on_revoke=self._gone, on_lost=self._gone
        )
        log.info("worker %s serving %s", worker.name, ", ".join(worker.topics))
        try:
            while not worker._stopping.is_set():
                # Wait briefly: consume returns at a full batch or at the timeout only.
                messages = self.consumer.consume(batch_size, timeout=0.01)
                try:
                    for message in messages:
                        self._serve(message)
                    if self.open:
                        self._commit()
                except KafkaException as error:
                    self._abort(error)
        finally:
            self.producer.flush(10)
            self.consumer.close()

    def _serve(self, message: Message) -> None:
        if not transactions.consumed(message):
            return
        if not self.open:
            self.producer.begin_transaction()
            self.open = True
        answer = self.worker.handle(message)
        topic, key, value, headers = answer.outgoing
        self.producer.produce(topic, key=key, value=value, headers=headers)
        if answer.handled is not None and self.handled is not None:
            self._record(answer.handled)
        where = (message.topic() or "", message.partition() or 0)
        self.offsets[where] = (message.offset() or 0) + 1

    def _record(self, handled: HandledCommand) -> None:
        assert self.handled is not None
        key, value, headers = handled.encode()
        partition = self.handled.partition_for(handled.partition)
        self.producer.produce(
            self.handled.topic, key=key, value=value, headers=headers, partition=partition
        )
        self.handled.stage(handled)

    def _commit(self) -> None:
        transactions.commit(self.producer, self.consumer, self.offsets)
        self._closed()
        if self.handled is not None:
            self.handled.committed()

    def _abort(self, error: KafkaException) -> None:
        """Abort (or raise a fatal error); the commands are read and handled again."""
        transactions.abort(self.producer, self.consumer, error)
        self._closed()
        if self.handled is not None:
            self.handled.aborted()

    def _closed(self) -> None:
        self.open = False
        self.offsets.clear()

    # -- rebalancing: the transaction is never open here (each batch commits before the next
    # consume, which is where these run), so there is nothing to commit or abort.

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before any command of a new partition is handled, learn what was handled of it."""
        if self.handled is None:
            return
        for tp in partitions:
            began = time.monotonic()
            count = self.handled.restore(tp.topic, tp.partition)
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
