"""Publishing domain events: ``publisher.publish(OrderPlaced(...))``.

The event goes to its class's topic, keyed by its key field, Avro-encoded with its schema's
fingerprint, through an idempotent producer with ``acks=all``: a retried send never duplicates
and an acknowledged one survives a broker failover.

The first time a publisher sends an event type to a topic, it records the event's schema in the
schema history (``stream_processors.engine.schema_history``) before sending, so that readers whose
current schema is a later version can still read it. That is best effort: if the history cannot
be written, a warning is logged and the event is published all the same.

``publisher.start(definition, input)`` starts an execution of a declarative definition: an
``ExecutionStarted`` (its id and its input as JSON) to the saga's inbox, keyed by the id (signed
when signing keys are configured, as every inbox record must then be). Starting twice with the
same id starts one execution: the processor ignores the second as a duplicate start.

A publisher sends each event as soon as it is queued (``linger_ms`` 0): a domain event is
usually one per request, and every millisecond it lingers is a millisecond on the saga's
latency. Under a burst the producer still batches, as events queue while earlier sends are in
flight; ``linger_ms`` trades latency for fewer, fuller requests where that matters more.

An event the broker did not take (its delivery failed after librdkafka's retries) is never
dropped in silence: it is logged with its topic, key and error, counted in ``failed``, and
leaving the context manager (or ``flush(raise_on_failure=True)``) raises ``DeliveryFailed``
naming how many. A caller's ``on_delivery`` is called as well, for every event.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from stream_processors.codecs.records import Event
from stream_processors.codecs.signing import Purpose, from_environment, signed
from stream_processors.core.model import SagaDefinition
from stream_processors.core.tasks import json_text
from stream_processors.declarative.machine import ExecutionStarted
from stream_processors.engine.routing import Headers
from stream_processors.engine.schema_history import SchemaHistory
from stream_processors.kafka.config import producer_config
from stream_processors.kafka.topics import SagaTopics

log = logging.getLogger(__name__)

#: How many failed deliveries a publisher keeps for ``failures`` (the count goes on).
KEPT_FAILURES = 100


class DeliveryFailed(RuntimeError):
    """Events were not acknowledged by the broker; the message says how many and why."""


@dataclass(frozen=True)
class Failure:
    """An event the broker did not take."""

    topic: str
    key: bytes | None
    error: str


class Publisher:
    """Sends events to Kafka. Use as a context manager, or call ``flush`` before exiting."""

    def __init__(
        self,
        bootstrap: str | None = None,
        client_id: str = "sagalog-publisher",
        record_schemas: bool = True,
        linger_ms: float = 0,
    ) -> None:
        if linger_ms < 0:
            raise ValueError(f"linger_ms must be 0 or more, not {linger_ms}")
        linger: dict[str, Any] = {"linger.ms": linger_ms}
        self._producer = Producer(producer_config(bootstrap, client_id, **linger))
        self._history = SchemaHistory(bootstrap) if record_schemas else None
        #: How many events the broker did not take, since this publisher was made.
        self.failed = 0
        #: The first ``KEPT_FAILURES`` of them.
        self.failures: list[Failure] = []

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            return
        self.failed += 1
        failure = Failure(message.topic() or "?", message.key(), error.str())
        if len(self.failures) < KEPT_FAILURES:
            self.failures.append(failure)
        log.error("event to %s (key %r) not delivered: %s", failure.topic, failure.key, error)

    def _on_delivery(
        self, callback: Callable[[Any, Any], None] | None
    ) -> Callable[[KafkaError | None, Message], None]:
        if callback is None:
            return self._delivered

        def both(error: KafkaError | None, message: Message) -> None:
            self._delivered(error, message)
            callback(error, message)

        return both

    def publish(
        self,
        event: Event,
        *,
        topic: str | None = None,
        headers: Headers | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        """Queue ``event`` for sending (to ``topic`` if given, else the event's own topic)."""
        target = topic or event.__topic__
        if target is None:
            raise ValueError(f"{type(event).__qualname__} declares no topic; pass topic=")
        if self._history is not None:  # once per (topic, schema): a set lookup after that
            self._history.try_record(target, event.__avro__)
        key = event.key()
        while True:
            try:
                self._producer.produce(
                    target,
                    key=None if key is None else key.encode(),
                    value=event.encode(),
                    headers=headers,
                    on_delivery=self._on_delivery(on_delivery),
                )
                break
            except BufferError:  # the local queue is full: let deliveries drain, then retry
                self._producer.poll(0.1)
        self._producer.poll(0)

    def start(self, definition: SagaDefinition, input: Any, execution: str | None = None) -> str:
        """Queue the start of an execution of a declarative ``definition`` with ``input`` (any
        JSON value); returns its id (``execution``, or a new UUID). The same id twice is one
        execution. A definition that starts from an event on a service's topic (``StartOn``) is
        started by publishing that event, built from ``input`` (an object of its fields; the id,
        if given, goes in its key field)."""
        if definition.start is not ExecutionStarted:
            return self._start_event(definition, input, execution)
        execution = execution or str(uuid.uuid4())
        event = ExecutionStarted(execution=execution, input=json_text(input))
        inbox = SagaTopics.for_saga(definition).inbox
        keyring = from_environment()
        headers: Headers | None = None
        if keyring is not None:  # a signed inbox takes only signed records
            key, value = execution.encode(), event.encode()
            headers = signed(keyring, Purpose.INBOX, inbox, key, value, [])
        self.publish(event, topic=inbox, headers=headers)
        return execution

    def _start_event(self, definition: SagaDefinition, input: Any, execution: str | None) -> str:
        if not isinstance(input, dict):
            raise ValueError(
                f"{definition.name} starts from {definition.start.__qualname__}: give its "
                "fields as a JSON object"
            )
        fields = dict(input)
        if execution is not None:
            fields[definition.key] = execution
        try:
            event = definition.start(**fields)
        except TypeError as error:
            raise ValueError(f"{definition.start.__qualname__}: {error}") from None
        assert isinstance(event, Event)
        self.publish(event)
        return str(getattr(event, definition.key))

    def flush(self, timeout: float = 30, *, raise_on_failure: bool = False) -> int:
        """Wait for every queued event to be acknowledged; returns how many are still queued.
        With ``raise_on_failure``, raises ``DeliveryFailed`` if any is still queued or any
        delivery failed since this publisher was made."""
        remaining = int(self._producer.flush(timeout))
        if raise_on_failure and (remaining or self.failed):
            raise DeliveryFailed(self._failure_text(remaining))
        return remaining

    def _failure_text(self, remaining: int) -> str:
        parts = []
        if remaining:
            parts.append(f"{remaining} events were not acknowledged")
        if self.failed:
            errors = sorted({f.error for f in self.failures})
            parts.append(f"{self.failed} events failed to be delivered ({'; '.join(errors)})")
        return ", ".join(parts)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        remaining = self.flush()
        if (remaining or self.failed) and exc is None:
            raise DeliveryFailed(self._failure_text(remaining))
