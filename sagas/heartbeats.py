"""Task heartbeats: a worker's sign of life for an action that runs longer than its Task's
``HeartbeatSeconds``.

An action handler calls ``context.heartbeat()`` (``sagas.worker.CommandContext``) as it works;
each call sends a ``TaskHeartbeat`` to the task's reply address, with the command's id, at once.
It cannot wait for the reply's transaction, which commits only after the handler returns: the
heartbeats go through a producer of their own, idempotent but not transactional. A heartbeat
that arrives after the reply, or twice, is ignored by the processor; one that is lost only
matters if no other comes in time, and then the attempt fails with ``States.HeartbeatTimeout``
as the Task asked.

Between its action's end and its batch's commit (the other commands of the batch may take a
while) a task is answered but its reply is not visible yet: a ticker thread keeps sending its
heartbeats, at a third of its interval, until the batch commits or aborts (``settled``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import Producer

from stream_processors.core.tasks import TaskCommand, TaskHeartbeat
from stream_processors.engine.routing import Headers
from stream_processors.kafka.config import producer_config

log = logging.getLogger(__name__)

#: How often the ticker looks at the answered tasks, in seconds.
TICK = 0.25


class ReplyRecord(Protocol):
    """``Worker.reply_record``: a reply's (topic, key, value, headers), signed if need be."""

    def __call__(
        self, topic: str, key: bytes, value: bytes, command_id: str, /
    ) -> tuple[str, bytes | None, bytes | None, Headers]: ...


class Heartbeats:
    """Sends task heartbeats for one worker process."""

    def __init__(self, bootstrap: str | None, client_id: str, record: ReplyRecord) -> None:
        self._producer = Producer(producer_config(bootstrap, client_id))
        self._record = record
        self._value = TaskHeartbeat().encode()
        self._lock = threading.Lock()
        # Answered tasks whose replies are not committed yet: (beat, interval, next due).
        self._answered: dict[str, tuple[Callable[[], None], float, float]] = {}
        self._stopping = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="task-heartbeats", daemon=True)
        self._ticker.start()

    def sender(self, reply_to: str, instance_id: str, command_id: str) -> Callable[[], None]:
        """What ``context.heartbeat()`` calls for one command."""

        def send() -> None:
            topic, key, value, headers = self._record(
                reply_to, instance_id.encode(), self._value, command_id
            )
            with self._lock:  # the ticker's thread produces too
                self._producer.produce(topic, key=key, value=value, headers=headers)
                self._producer.poll(0)  # serve delivery reports; never block the action

        return send

    def answered(self, command_id: str, beat: Callable[[], None], task: TaskCommand) -> None:
        """A task's action returned; its reply waits for its batch's commit."""
        interval = (task.heartbeat_seconds or 1) / 3
        with self._lock:
            self._answered[command_id] = (beat, interval, time.monotonic() + interval)

    def settled(self) -> None:
        """The batch committed (its replies are visible) or aborted (its tasks will be handled
        again, with heartbeats of their own)."""
        with self._lock:
            self._answered.clear()

    def _tick(self) -> None:
        while not self._stopping.wait(TICK):
            now = time.monotonic()
            with self._lock:
                due = [(cid, e) for cid, e in self._answered.items() if e[2] <= now]
                for cid, (beat, interval, _) in due:
                    self._answered[cid] = (beat, interval, now + interval)
            for _, (beat, _, _) in due:
                beat()

    def close(self) -> None:
        self._stopping.set()
        self._ticker.join(2)
        left = self._producer.flush(5)
        if left:
            log.warning("%d task heartbeats were not delivered before the worker stopped", left)
