"""The topics a saga needs, their policies, and creating them.

For a saga named ``order_fulfillment``: ``.inbox`` (every input, re-keyed by instance),
``.journal`` (the history, kept forever), ``.snapshots`` (compacted changelog of the store) and
``.dlq`` (what could not be processed). Inbox, journal and snapshots share one partition count,
so an instance's inputs, history and state live in the same partition number and one processor
owns all three. Command and source topics belong to the services; they are created when missing
(useful on a developer's machine) but never changed.

Every topic created here (the saga's, a worker's handled topic and DLQs, the schema history) is
replicated for the cluster it is created on: ``replication_for`` picks replication factor 3 and
``min.insync.replicas=2`` on three or more brokers, the cluster's size below that (1 on one
broker, as on a developer's machine), unless ``SAGALOG_REPLICATION_FACTOR`` /
``SAGALOG_MIN_INSYNC_REPLICAS`` say otherwise. Existing topics are never changed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from stream_processors.core.model import SagaDefinition
from stream_processors.kafka.errors import connect_admin

WEEK_MS = 7 * 24 * 3600 * 1000
#: Every dead-letter topic's policy, a saga's or a worker's: kept four weeks for redrive.
DLQ_POLICY = {"cleanup.policy": "delete", "retention.ms": str(4 * WEEK_MS)}


@dataclass(frozen=True)
class SagaTopics:
    """Topic names of one saga. Names derive from the saga's name unless given."""

    saga: str
    inbox: str
    journal: str
    snapshots: str
    dlq: str
    commands: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    partitions: int = 8
    configs: dict[str, dict[str, str]] = field(default_factory=dict, compare=False)

    @classmethod
    def for_saga(cls, definition: SagaDefinition, partitions: int = 8) -> SagaTopics:
        name = definition.name
        return cls(
            saga=name,
            inbox=f"{name}.inbox",
            journal=f"{name}.journal",
            snapshots=f"{name}.snapshots",
            dlq=f"{name}.dlq",
            commands=tuple(sorted(definition.command_topics())),
            sources=tuple(sorted(definition.source_topics())),
            partitions=partitions,
        )

    def co_partitioned(self) -> tuple[str, str, str]:
        return (self.inbox, self.journal, self.snapshots)

    def policies(self) -> dict[str, dict[str, str]]:
        """Topic-level configuration for each topic Sagalog owns."""
        return {
            self.inbox: {"cleanup.policy": "delete", "retention.ms": str(WEEK_MS)},
            self.journal: {"cleanup.policy": "delete", "retention.ms": "-1"},
            self.snapshots: {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
            self.dlq: dict(DLQ_POLICY),
        }


REPLICATION_VARIABLE = "SAGALOG_REPLICATION_FACTOR"
MIN_INSYNC_VARIABLE = "SAGALOG_MIN_INSYNC_REPLICAS"


@dataclass(frozen=True)
class Replication:
    """How a new topic is replicated: its replication factor and ``min.insync.replicas``."""

    factor: int
    min_insync: int

    def topic_config(self) -> dict[str, str]:
        """The topic-level setting to add; none for one replica (the broker's default of 1)."""
        return {"min.insync.replicas": str(self.min_insync)} if self.factor > 1 else {}


def replication_for(brokers: int, environ: Mapping[str, str] | None = None) -> Replication:
    """Replication of new topics on a cluster of ``brokers`` brokers.

    Three replicas with two in sync survive one broker down (a rolling restart, a crash) while
    every write stays acknowledged by two (producers use acks=all). Fewer brokers cannot hold
    three replicas: the factor is the cluster's size and one replica in sync suffices."""
    environ = os.environ if environ is None else environ
    default = min(max(brokers, 1), 3)
    factor = _positive(environ, REPLICATION_VARIABLE, default)
    min_insync = _positive(environ, MIN_INSYNC_VARIABLE, 2 if factor >= 3 else 1)
    if min_insync > factor:
        raise ValueError(
            f"{MIN_INSYNC_VARIABLE}={min_insync} exceeds the replication factor {factor}: "
            "no write could ever be acknowledged"
        )
    return Replication(factor, min_insync)


def _positive(environ: Mapping[str, str], variable: str, default: int) -> int:
    text = environ.get(variable, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{variable} must be a whole number of at least 1, not {text!r}")
    return int(text)


class TopicMismatch(Exception):
    """Existing topics that cannot serve the saga (partition counts differ)."""


def _create_missing(admin: AdminClient, wanted: dict[str, tuple[int, dict[str, str]]]) -> list[str]:
    """Create each wanted (partitions, config) topic that does not exist, replicated for the
    cluster (``replication_for``); returns those created."""
    cluster = admin.list_topics(timeout=15)
    replication = replication_for(len(cluster.brokers))
    missing = [
        NewTopic(
            name,
            num_partitions=count,
            replication_factor=replication.factor,
            config=replication.topic_config() | config,
        )
        for name, (count, config) in wanted.items()
        if name not in cluster.topics
    ]
    created = []
    if missing:
        for name, future in admin.create_topics(missing).items():
            try:
                future.result(timeout=30)
                created.append(name)
            except KafkaException as error:
                if error.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a racing process made it
                    raise
    # Creation returns before the topics are usable: wait until every partition has a leader.
    deadline = time.monotonic() + 30
    while not _all_led(admin, wanted):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without partition leaders 30 s after creation: {created}")
        time.sleep(0.1)
    return created


def _all_led(admin: AdminClient, names: Iterable[str]) -> bool:
    topics = admin.list_topics(timeout=15).topics
    for name in names:
        metadata = topics.get(name)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return False
        if any(p.leader < 0 or p.error is not None for p in metadata.partitions.values()):
            return False
    return True


def ensure_topics(
    topics: SagaTopics, bootstrap: str | None = None, extra: Iterable[str] = ()
) -> list[str]:
    """Create whatever is missing; check co-partitioning. Returns the names created.

    Raises ``KafkaUnavailable`` (one line: the listener and the setting to fix) when the cluster
    cannot be reached or refuses this client."""
    admin = connect_admin(bootstrap, "sagalog-admin")
    wanted = {name: (topics.partitions, config) for name, config in topics.policies().items()}
    for name in (*topics.commands, *topics.sources, *extra):
        wanted.setdefault(name, (topics.partitions, {}))
    created = _create_missing(admin, wanted)
    metadata = admin.list_topics(timeout=15).topics
    counts = {name: len(metadata[name].partitions) for name in topics.co_partitioned()}
    if len(set(counts.values())) != 1:
        raise TopicMismatch(f"inbox, journal and snapshots must have equal partitions: {counts}")
    return created


def ensure_plain_topics(
    names: Iterable[str],
    bootstrap: str | None = None,
    partitions: int = 8,
    config: Mapping[str, str] | None = None,
) -> list[str]:
    """Create topics that do not exist yet, with ``config`` or default policies (a worker's
    topics and DLQs; the schema history)."""
    admin = connect_admin(bootstrap, "sagalog-admin")
    return _create_missing(admin, {name: (partitions, dict(config or {})) for name in names})


def topic_id(name: str, bootstrap: str | None = None) -> str:
    """The broker's id of topic ``name``: it changes when a topic is deleted and made again."""
    admin = connect_admin(bootstrap, "sagalog-admin")
    description = admin.describe_topics(TopicCollection([name]))[name].result(timeout=15)
    return str(description.topic_id)
