"""``LimitQueue``: one limit's queue in one inbox partition, on a virtual clock.

It keeps what the processor keeps for a limit in a partition (the queued commands, those in
flight, the send times, the instances' priorities) and releases with the same pure decision
(``stream_processors.core.throttle.release``), the saga's declared limit, priority and aging,
and the partition's share of the limit. So a test says, without a broker, in which order a
saga's queued steps go and when::

    queue = LimitQueue(OrderSaga, "payments", partitions=1)
    queue.offer("a", priority=0); queue.offer("b", priority=5)
    queue.reply(queue.in_flight[0])               # frees a place
    assert queue.sent_order == ["a", "b"]
    queue.advance(seconds=2)                      # the rate's next slots, in virtual time

A definition (a file, a States Language document) works as a class does; ``offer(instance,
input=...)`` reads its ``Priority`` from the execution's input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sagas.saga import Saga
from sagas.testing._definitions import compiled
from sagas.testing._saga_test import START_MS, definition_of
from stream_processors.core.model import SagaDefinition
from stream_processors.core.tasks import json_text
from stream_processors.core.throttle import Capacity, Queued, release
from stream_processors.declarative.machine import ExecutionStarted


@dataclass
class LimitQueue:
    """Commands offered to one limit (by instance id), released as the processor would."""

    #: A Saga class, or a definition (a file, a States Language document, compiled).
    saga: type[Saga] | SagaDefinition | str | Path | Mapping[str, Any]
    limit: str
    partition: int = 0
    partitions: int = 1
    now_ms: int = START_MS
    #: Instances in the order their commands were sent, and when (ms).
    sent: list[tuple[int, str]] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    _queue: list[Queued] = field(default_factory=list)
    _priorities: dict[str, int] = field(default_factory=dict)
    _seq: int = 0

    def __post_init__(self) -> None:
        saga = self.saga
        definition = definition_of(saga) if isinstance(saga, type) else compiled(saga)
        throttle = definition.throttle
        if throttle is None or self.limit not in throttle.limits:
            raise ValueError(f"the saga declares no limit {self.limit!r}")
        self._throttle = throttle
        self._aging_ms = throttle.aging_ms
        self._capacity = Capacity.of(throttle.limits[self.limit], self.partition, self.partitions)

    @property
    def sent_order(self) -> list[str]:
        return [instance for _, instance in self.sent]

    @property
    def queued(self) -> list[str]:
        return [q.instance for q in self._queue]

    def offer(self, instance: str, priority: int = 0, start: Any = None, input: Any = None) -> bool:
        """A step of ``instance`` decides to send its command now; True if it went at once.
        Its priority is ``priority``, or with ``start`` (its start event) the saga's rule's, or
        for a definition with ``input`` (the execution's) the definition's ``Priority``."""
        if input is not None:
            start = ExecutionStarted(execution=instance, input=json_text(input))
        if start is not None:
            priority = self._throttle.priority_of(start)
        self._priorities[instance] = priority
        self._queue.append(Queued(self.now_ms, self._seq, instance, instance))
        self._seq += 1
        before = len(self.sent)
        self._release()
        return len(self.sent) > before and self.sent[-1][1] == instance

    def prioritize(self, instance: str, priority: int) -> None:
        """``sagas prioritize``: the instance's queued command moves accordingly."""
        self._priorities[instance] = priority
        self._release()

    def reply(self, instance: str) -> None:
        """The command of ``instance`` is answered (or timed out): its place is free."""
        if instance in self.in_flight:
            self.in_flight.remove(instance)
        self._release()

    def advance(self, seconds: float) -> None:
        """Move the clock on, releasing at each moment the rate allows on the way."""
        end = self.now_ms + round(seconds * 1000)
        while True:
            wake = self._release()
            if wake is None or wake > end:
                break
            self.now_ms = wake
        self.now_ms = end
        self._release()

    def _release(self) -> int | None:
        decided = release(
            self._queue,
            self._capacity,
            len(self.in_flight),
            [at for at, _ in self.sent],
            self.now_ms,
            lambda instance: self._priorities.get(instance, 0),
            self._aging_ms,
        )
        for queued in decided.send:
            self._queue.remove(queued)
            self.sent.append((self.now_ms, queued.instance))
            if self._capacity.in_flight is not None:
                self.in_flight.append(queued.instance)
        return decided.wake_ms
