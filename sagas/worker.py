"""Task workers: the services' command handlers, and the runtime that runs them on Kafka.

A worker is a set of handlers, one per command type. A handler gets the command and a
``CommandContext`` whose ``idempotency_key`` is the command's deterministic id, and returns the
success reply, or raises ``BusinessError`` carrying the failure reply::

    payments = Worker("payments")

    @payments.handles(MakePayment)
    def pay(command: MakePayment, context: CommandContext) -> PaymentCompleted:
        if declined(command.card_token):
            raise BusinessError(PaymentFailed(order_id=command.order_id, reason="declined"))
        return PaymentCompleted(order_id=command.order_id, payment_id=charge(command,
                                key=context.idempotency_key))

The runtime consumes the handled commands' topics in a consumer group (more processes share the
work), sends each reply to the command's reply-to topic keyed by the instance, and commits the
consumed offsets only after the replies are acknowledged: a crash repeats commands (hence the
idempotency key) and never loses one. A handler that raises ``TransientError`` (or one of the
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

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from sagas.idempotency import HandledCommands
from stream_processors import metrics
from stream_processors.avro import DecodeError
from stream_processors.kafka_config import consumer_config, producer_config
from stream_processors.model import CommandFailed
from stream_processors.records import Command, DeclarationError, Event, Record, decode_record
from stream_processors.routing import (
    COMMAND_ID,
    INSTANCE,
    REPLY_TO,
    SAGA,
    Headers,
    dead_letter_headers,
    header,
    reply_headers,
)
from stream_processors.schema_history import SchemaHistory
from stream_processors.store import default_state_dir
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
    """What a handler knows about the command besides its fields."""

    idempotency_key: str
    instance_id: str
    saga: str | None
    topic: str
    partition: int
    offset: int
    command_id: str = ""
    attempt: int = 1


Handler = Callable[[Any, CommandContext], Event]
#: A record to send: (topic, key, value, headers).
Outgoing = tuple[str, bytes | None, bytes | None, Headers]


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

    def handle(self, message: Message) -> Outgoing:
        """Run the handler for one command record; returns (topic, key, value, headers) to send.

        Pure of Kafka apart from reading ``message``: the runtime loop does the sending.
        """
        topic = message.topic() or ""
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
        context = CommandContext(
            command_id,
            instance_id,
            header(headers, SAGA),
            topic,
            message.partition() or 0,
            message.offset() or 0,
        )
        name = type(command).__name__
        known = None if self._handled is None else self._handled.reply(command_id)
        if known is not None:  # handled before: answer the same, without a second effect
            metrics.COMMANDS_HANDLED.labels(
                worker=self.name, command=name, outcome="repeated"
            ).inc()
            return reply_to, instance_id.encode(), known, reply_headers(command_id)
        began = time.perf_counter()
        try:
            reply, outcome = self.answer(command, context)
            if outcome == "transient":
                log.warning("transient failure of %s on %s: %s", name, command_id, reply)
        except Exception as error:  # a bug in the handler: park the command, keep serving
            log.exception("handler for %s crashed on %s", name, command_id)
            return self._dead(message, "handler-error", f"{type(error).__name__}: {error}")
        finally:
            metrics.HANDLER_SECONDS.labels(worker=self.name, command=name).observe(
                time.perf_counter() - began
            )
        metrics.COMMANDS_HANDLED.labels(worker=self.name, command=name, outcome=outcome).inc()
        if self._history is not None:
            self._history.try_record(reply_to, reply.__avro__)
        value = reply.encode()
        if self._handled is not None:
            self._handled.remember(command_id, value)
        return reply_to, instance_id.encode(), value, reply_headers(command_id)

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

    def _dead(self, message: Message, reason: str, detail: str) -> Outgoing:
        log.warning(
            "dead letter from %s@%s: %s %s", message.topic(), message.offset(), reason, detail
        )
        metrics.DEAD_LETTERS.labels(owner=self.name, reason=reason).inc()
        return (
            f"{message.topic()}.dlq",
            message.key(),
            message.value(),
            dead_letter_headers(message, reason, detail),
        )

    def run(
        self,
        bootstrap: str | None = None,
        batch_size: int = 500,
        state_dir: Path | None = None,
        remember: bool = True,
    ) -> None:
        """Serve until ``stop()``. ``remember`` keeps replies by command id under ``state_dir``
        (default ``$SAGALOG_STATE_DIR/workers/<name>``) so a repeated command is not redone."""
        if not self._handlers:
            raise DeclarationError(f"worker {self.name!r} has no handlers")
        if remember:
            base = state_dir or default_state_dir("workers") / self.name
            self._handled = HandledCommands(base)
        ensure_plain_topics([*self.topics, *(f"{t}.dlq" for t in self.topics)], bootstrap)
        # Schema evolution: record reply schemas on first use; ask for unknown command schemas.
        self._history = SchemaHistory(bootstrap)
        self._history.serve_unknown()
        producer = Producer(producer_config(bootstrap, f"worker-{self.name}"))
        membership: dict[str, Any] = {"session.timeout.ms": 10_000, "heartbeat.interval.ms": 1_000}
        if self._handled is not None:
            # Static membership: a restarted worker (same store, same identity) takes its
            # partitions back at once instead of stalling the group until its session expires.
            membership["group.instance.id"] = f"{self.group}.{self._handled.identity}"
        consumer = Consumer(
            consumer_config(bootstrap, f"worker-{self.name}", self.group, **membership)
        )
        consumer.subscribe(self.topics)
        log.info("worker %s serving %s", self.name, ", ".join(self.topics))
        try:
            while not self._stopping.is_set():
                # Wait briefly: consume returns at a full batch or at the timeout only.
                messages = consumer.consume(batch_size, timeout=0.01)
                offsets: dict[tuple[str, int], int] = {}
                for message in messages:
                    error = message.error()
                    if error is not None:
                        # A fenced static member reports _FATAL with fatal() false: stop too.
                        if error.fatal() or error.code() == KafkaError._FATAL:
                            raise KafkaException(error)
                        log.warning("consumer: %s", error)
                        continue
                    topic, key, value, headers = self.handle(message)
                    producer.produce(topic, key=key, value=value, headers=headers)
                    where = (message.topic() or "", message.partition() or 0)
                    offsets[where] = (message.offset() or 0) + 1
                if offsets:
                    # Replies first, then offsets: at least once, never lost.
                    remaining = producer.flush(30)
                    if remaining:
                        raise RuntimeError(f"{remaining} replies not acknowledged; not committing")
                    consumer.commit(
                        offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                        asynchronous=False,
                    )
        finally:
            producer.flush(10)
            consumer.close()
            if self._handled is not None:
                self._handled.close()
