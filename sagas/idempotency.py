"""What a worker group remembers of the commands it handled: their replies, on a Kafka topic.

Workers see a command twice when it is redelivered after its reply was committed: an operator
redrives it, or a repeated command record arrives (``sagas retry``). A command id names one
attempt of one step of one instance, so a worker that finds the id answers with the reply it
gave the first time instead of running the handler (and its side effect) again, whichever
process of the group or machine handled it first.

The record lives on ``<group>.handled``, written in the same Kafka transaction as the reply and
the consumed offsets (``sagas.worker``), so it exists exactly when the reply does. A record:

- key: the command id (text); value: the reply's bytes, exactly as sent;
- headers: ``sagalog.reply_to`` and ``sagalog.instance`` (to send the reply again),
  ``sagalog.handled.topic`` and ``sagalog.handled.partition`` (where the command was read);
  ``sagalog.handled.truncated`` (the reply's size) when the reply was too large to send or keep:
  the value then holds what fits, and a repeated command is dead-lettered again, not answered.

A reply that could not be delivered (its topic missing, an invalid name, too large) went to the
worker's dead-letter topic with reason ``reply-undeliverable``; it is recorded here all the same,
since the handler's effect happened: a repeated command does not run the handler again, it is
answered with the recorded reply (dead-lettered again while its topic is still missing).

Headers and raw bytes make the record self-describing without a schema of its own. The record
of a command read from partition ``p`` of any command topic goes to partition ``p % N`` of the
``N``-partition handled topic (created with as many partitions as the widest command topic, so
normally ``p`` itself). When a worker is assigned a command partition it reads that handled
partition ``read_committed`` to its end, keeping the records of that command partition only,
before it handles any command of it; it forgets them when the partition leaves.

Memory and disk are bounded by the topic's retention (``compact,delete``, ``RETENTION_MS`` by
default, a week: a command redelivered later than that runs again) times the rate of commands
of the partitions a process owns. Compaction keeps a single record per command id should one be
written twice. A side effect of a handler that ran but whose transaction did not commit (a
crash between the two) is not remembered: it runs again where the command lands next, with the
same ``context.idempotency_key``, which is what lets the service make it effectively once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka.admin import AdminClient

from stream_processors.engine.routing import (
    HANDLED_PARTITION,
    HANDLED_TOPIC,
    INSTANCE,
    REPLY_TO,
    Headers,
    ReceivedHeaders,
    header,
)
from stream_processors.kafka.config import common
from stream_processors.kafka.reading import committed_records
from stream_processors.kafka.topics import ensure_plain_topics

#: Marks a handled record whose reply was too large to keep whole (its value is cut).
HANDLED_TRUNCATED = "sagalog.handled.truncated"
#: How long handled records are kept (the topic's ``retention.ms`` when it is created).
RETENTION_MS = 7 * 24 * 3600 * 1000


def handled_topic(group: str) -> str:
    return f"{group}.handled"


@dataclass(frozen=True)
class HandledCommand:
    """A command a worker answered, with what it needs to answer it again."""

    command_id: str
    reply_to: str
    instance_id: str
    reply: bytes
    topic: str
    partition: int
    #: The reply's size when only its first bytes are recorded (it was too large).
    truncated: int | None = None

    def encode(self) -> tuple[bytes, bytes, Headers]:
        """(key, value, headers) of its record on the handled topic."""
        headers: Headers = [
            (REPLY_TO, self.reply_to.encode()),
            (INSTANCE, self.instance_id.encode()),
            (HANDLED_TOPIC, self.topic.encode()),
            (HANDLED_PARTITION, str(self.partition).encode()),
        ]
        if self.truncated is not None:
            headers.append((HANDLED_TRUNCATED, str(self.truncated).encode()))
        return self.command_id.encode(), self.reply, headers

    @classmethod
    def decode(
        cls, key: bytes | None, value: bytes | None, headers: ReceivedHeaders
    ) -> HandledCommand | None:
        """The command a record describes, or None for one that is not a complete record."""
        reply_to, instance = header(headers, REPLY_TO), header(headers, INSTANCE)
        topic, partition = header(headers, HANDLED_TOPIC), header(headers, HANDLED_PARTITION)
        if not (key and value is not None and reply_to and instance and topic):
            return None
        if partition is None or not partition.isdigit():
            return None
        command_id = key.decode(errors="replace")
        truncated = header(headers, HANDLED_TRUNCATED)
        size = int(truncated) if truncated and truncated.isdigit() else None
        return cls(command_id, reply_to, instance, value, topic, int(partition), size)


class HandledCommands:
    """The handled commands of the command partitions a worker owns, and those it is staging.

    ``stage`` a command handled in the open transaction; ``committed`` or ``aborted`` after it.
    ``reply`` finds a command among both, so a command repeated within one transaction is
    answered from the first too.
    """

    def __init__(self, group: str, bootstrap: str | None, partitions: int) -> None:
        self.topic = handled_topic(group)
        self.partitions = partitions
        self._bootstrap = bootstrap
        self._known: dict[tuple[str, int], dict[str, HandledCommand]] = {}
        self._staged: dict[str, HandledCommand] = {}

    def partition_for(self, command_partition: int) -> int:
        return command_partition % self.partitions

    def restore(self, topic: str, partition: int) -> int:
        """Read what was handled from ``topic``'s ``partition``; returns how many records."""
        known: dict[str, HandledCommand] = {}
        for message in committed_records(
            self.topic, self._bootstrap, partitions=[self.partition_for(partition)]
        ):
            handled = HandledCommand.decode(message.key(), message.value(), message.headers())
            if handled is not None and (handled.topic, handled.partition) == (topic, partition):
                known[handled.command_id] = handled
        self._known[(topic, partition)] = known
        return len(known)

    def forget(self, topic: str, partition: int) -> None:
        self._known.pop((topic, partition), None)

    def reply(self, topic: str, partition: int, command_id: str) -> HandledCommand | None:
        staged = self._staged.get(command_id)
        if staged is not None and (staged.topic, staged.partition) == (topic, partition):
            return staged
        return self._known.get((topic, partition), {}).get(command_id)

    def stage(self, handled: HandledCommand) -> None:
        self._staged[handled.command_id] = handled

    def committed(self) -> None:
        for handled in self._staged.values():
            partition = self._known.get((handled.topic, handled.partition))
            if partition is not None:  # else revoked meanwhile: its new owner restores it
                partition[handled.command_id] = handled
        self._staged.clear()

    def aborted(self) -> None:
        self._staged.clear()


def ensure_handled_topic(group: str, command_topics: Iterable[str], bootstrap: str | None) -> int:
    """Create ``<group>.handled`` if missing, as wide as the widest command topic; returns its
    partition count."""
    admin = AdminClient(common(bootstrap, "sagalog-admin"))
    metadata = admin.list_topics(timeout=15).topics
    widest = max((len(metadata[t].partitions) for t in command_topics if t in metadata), default=8)
    topic = handled_topic(group)
    config = {"cleanup.policy": "compact,delete", "retention.ms": str(RETENTION_MS)}
    ensure_plain_topics([topic], bootstrap, widest, config)
    return len(admin.list_topics(topic, timeout=15).topics[topic].partitions)


def recorded_replies(group: str, bootstrap: str | None = None) -> dict[str, bytes]:
    """Every reply the worker group ``group`` has on record, by command id: for audits and tests."""
    replies: dict[str, bytes] = {}
    for message in committed_records(handled_topic(group), bootstrap):
        handled = HandledCommand.decode(message.key(), message.value(), message.headers())
        if handled is not None:
            replies[handled.command_id] = handled.reply
    return replies
