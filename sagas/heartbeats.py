"""Task heartbeats: a worker's sign of life for an action that runs longer than its Task's
``HeartbeatSeconds``.

An action handler calls ``context.heartbeat()`` (``sagas.worker.CommandContext``) as it works;
each call sends a ``TaskHeartbeat`` to the task's reply address, with the command's id, at once.
It cannot wait for the reply's transaction, which commits only after the handler returns: the
heartbeats go through a producer of their own, idempotent but not transactional. A heartbeat
that arrives after the reply, or twice, is ignored by the processor; one that is lost only
matters if no other comes in time, and then the attempt fails with ``States.HeartbeatTimeout``
as the Task asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import Producer

from stream_processors.core.tasks import TaskHeartbeat
from stream_processors.engine.routing import Headers
from stream_processors.kafka.config import producer_config

log = logging.getLogger(__name__)


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

    def sender(self, reply_to: str, instance_id: str, command_id: str) -> Callable[[], None]:
        """What ``context.heartbeat()`` calls for one command."""

        def send() -> None:
            topic, key, value, headers = self._record(
                reply_to, instance_id.encode(), self._value, command_id
            )
            self._producer.produce(topic, key=key, value=value, headers=headers)
            self._producer.poll(0)  # serve delivery reports; never block the action

        return send

    def close(self) -> None:
        left = self._producer.flush(5)
        if left:
            log.warning("%d task heartbeats were not delivered before the worker stopped", left)
