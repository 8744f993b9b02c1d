"""Faust applications as Sagalog's neighbours: a codec, services as agents, starting sagas.

Needs the optional extra ``sagalog[faust]`` (faust-streaming); nothing else in Sagalog imports
this package, and importing it registers the codec.

- ``CODEC_NAME`` (``"sagalog"``): a Faust codec for Sagalog records, registered on import, so
  ``app.topic("orders.events", value_serializer="sagalog")`` carries typed records. It encodes
  with ``Record.encode()`` (single-object encoding, or the Confluent wire format when a schema
  registry is configured) and decodes with ``decode_record`` (old writer schemas are resolved,
  upcasters applied, exactly as in the engine). An undecodable value is Faust's
  ``ValueDecodeError``: Faust logs and skips it.
- ``worker_agent(app, worker)``: one agent per command topic of a ``sagas.worker.Worker``,
  serving its handlers through ``Worker.handle`` (so through ``Worker.answer``, the code
  ``sagas worker`` runs): the same reply records (headers, signatures), allowed reply
  addresses, idempotency keys and dead letters (``<topic>.dlq``, same reasons and headers).
- ``publish(app, event)``: an event to its own topic, keyed and partitioned as ``Publisher``
  does, its schema recorded in the schema history.
- ``main(app)``: ``app.main()`` (Faust's command line), then the process exits as soon as
  Faust's shutdown has ended (see its docstring for the faust-streaming defect it avoids).

Guarantees of ``worker_agent`` (the app must run with ``processing_guarantee="exactly_once"``,
which is checked): Faust gives each (partition group, partition) a transactional producer whose
transactions also carry that partition's consumed offsets. The reply is sent through the
producer of the *command's* partition, and the handled command is remembered in a Faust table
keyed by instance id (``<topic>.handled``: {command id: base64 of the reply}), co-partitioned
with the command topic, so its changelog record goes through the same producer (the agent logs
this per partition and logs an error if the table is not in the command topic's partition
group). The remembered copy is written first and its changelog record awaited (Faust sends a
table's changelog through a buffer; a commit could otherwise take the reply and leave the copy
to the next transaction), so a committed reply implies a committed copy. A command delivered
again (a restart, a rebalance, a redrive, a copy) whose copy is committed is answered with the
remembered reply, the same bytes, without its handler running; the engine ignores the second
reply (``duplicate``). A crash before the commit runs the handler again (at least once: pass
``context.idempotency_key`` to the side effect).

Two faust-streaming defects, found with the SIGKILL restart test
(tests/integration/test_faust_neighbours.py), and what the agent does about them:

- Committed offsets lag (not worked around; replies are sent again, handlers do not run
  again). Faust commits the first run of consecutive acknowledged offsets
  (``Consumer._new_offset``). A transaction marker in the command topic (the engine writes it
  transactionally) is a hole in the offsets read; ``_drain_messages`` records it as a gap
  ``[last read + 1, offset]`` that includes the next real record's offset, so that offset is
  acknowledged twice, and the duplicate ends the run: each commit (every
  ``broker_commit_interval``, 2.8 s) gets past about one marker. Measured: after a SIGKILL,
  up to all of the 300 commands already answered were delivered again (each answered from the
  table).
- A partition stops committing after a rebalance (faust-streaming issue #596, open). When
  recovery ends, ``Recovery.on_recovery_completed`` resumes the stream partitions (the fetcher,
  already running to read the changelogs, starts delivering their records into the stream
  queues), seeks them to their committed offsets, then calls ``app.flow_control.resume()``,
  which clears every stream queue: records delivered after the seek are dropped
  unacknowledged, the fetch position and Faust's read offset already past them. The
  acknowledged offsets then start beyond a hole, ``_new_offset`` returns None for good, and
  neither the partition's offsets nor its transaction (its replies) commit again; or, when no
  record follows, the dropped commands are never answered. Seen in about half the SIGKILL
  restarts (28 of 300 sagas left waiting). The agent wraps the app's
  ``Recovery.on_recovery_completed`` (``_resume_streams_after_clearing``): while it runs, the
  partitions it resumes are held, still paused, and resumed right after its
  ``flow_control.resume()`` has cleared the queues. Nothing of theirs is then in a queue to be
  dropped, and their first fetch starts at the committed offset it sought (it logs "stream
  partitions resumed after the queues were cleared" at each rebalance). This replaced a seek
  back to the committed offsets a second after each rebalance, which a batch still being
  delivered could undo. As a safety net for any other path that loses records before their
  acknowledgement, every ``STALL_CHECK_SECONDS`` a command partition whose acknowledged
  offsets start more than one past its committed offset, at the same committed offset on two
  checks in a row, is sought back to it (logged as a warning, "cannot commit past"); it did not
  fire in the measured runs (tests/integration/test_faust_neighbours.py).

Differences from ``sagas worker``: that one remembers replies by command id on the group's
``<group>.handled`` topic and restores them when partitions are assigned, and commits each
batch's offsets with its replies; here Faust's table (changelog ``<app id>-<topic>.handled-
changelog``, local store) remembers them, keyed by instance id, for ``RETENTION_MS`` after an
instance's last handled command (the changelog's ``compact,delete`` retention, set when Faust
creates it). Replies are checked before producing as ``sagas worker`` checks them
(``sagas.worker.undeliverable``: the address, the size for the topic and the producer's
``producer_max_request_size``); one that cannot be sent goes to ``<topic>.dlq`` as a
``reply-undeliverable`` dead letter. Handlers run on Faust's event loop (a slow handler holds
up its agent).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
import sys
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import faust
from faust.exceptions import ConsumerNotStarted
from faust.serializers import codecs

from sagas.idempotency import RETENTION_MS, HandledCommand
from sagas.worker import (
    Answer,
    CommandContext,
    Outgoing,
    Worker,
    reply_dead_letter,
    undeliverable,
)
from stream_processors.codecs.records import Event, Record, decode_record
from stream_processors.core import limits
from stream_processors.engine import tracing
from stream_processors.engine.routing import COMMAND_ID, REPLY_TO, Headers, header
from stream_processors.engine.schema_history import SchemaHistory
from stream_processors.kafka.broker_limits import BrokerLimits
from stream_processors.kafka.config import bootstrap_servers
from stream_processors.kafka.errors import connect_admin
from stream_processors.kafka.topics import DLQ_POLICY, ensure_plain_topics

log = logging.getLogger(__name__)

#: The name the codec is registered under: ``value_serializer="sagalog"``.
CODEC_NAME = "sagalog"

#: Topic options for raw bytes, keys and values, as Sagalog's own records are read.
RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


class SagalogCodec(codecs.Codec):
    """Sagalog ``Record`` <-> bytes: ``record.encode()`` and ``decode_record``."""

    def _dumps(self, obj: Any) -> bytes:
        if isinstance(obj, Record):
            return obj.encode()
        raise TypeError(f"the {CODEC_NAME} codec encodes Sagalog records, not {type(obj)!r}")

    def _loads(self, s: bytes) -> Any:
        return decode_record(s)


codecs.register(CODEC_NAME, SagalogCodec())


class _Received:
    """A Faust message seen through confluent-kafka's accessors, as ``Worker.handle`` reads."""

    def __init__(self, message: Any) -> None:
        self._message = message

    def topic(self) -> str:
        return str(self._message.topic)

    def partition(self) -> int:
        return int(self._message.partition)

    def offset(self) -> int:
        return int(self._message.offset)

    def key(self) -> bytes | None:
        key: bytes | None = self._message.key
        return key

    def value(self) -> bytes | None:
        value: bytes | None = self._message.value
        return value

    def headers(self) -> Headers:
        headers = self._message.headers or []
        if isinstance(headers, dict):
            headers = list(headers.items())
        return [(str(name), value) for name, value in headers]


_histories: dict[str, SchemaHistory] = {}


def _history(bootstrap: str | None) -> SchemaHistory:
    """One schema history per broker for the process (its writes are best effort)."""
    servers = bootstrap_servers(bootstrap)
    if servers not in _histories:
        _histories[servers] = SchemaHistory(servers)
    return _histories[servers]


def _transactional_id(app: Any, topic: str, partition: int) -> str:
    """The id of Faust's transactional producer whose transaction commits ``topic[partition]``'s
    offsets (``faust.transport.consumer.TransactionManager.commit`` names them the same way)."""
    group = app.assignor.group_for_topic(topic)
    return f"{app.conf.id}-{group}-{partition}"


#: The handled table's changelog keeps what ``sagas worker``'s handled topic keeps: each entry
#: (an instance's replies, rewritten with each of its commands) for ``RETENTION_MS`` after its
#: last write; a command delivered again later than that runs again. Set when Faust creates the
#: changelog topic (an existing one keeps its configuration).
HANDLED_CONFIG = {"cleanup.policy": "compact,delete", "retention.ms": str(RETENTION_MS)}


def table_name(topic: str) -> str:
    """The Faust table remembering the commands of ``topic`` a worker agent handled."""
    return f"{topic}.handled"


def worker_agent(
    app: Any,
    worker: Worker,
    *,
    partitions: int | None = None,
    bootstrap: str | None = None,
) -> list[Any]:
    """Serve ``worker``'s handlers in ``app``: one agent per command topic; returns the agents.

    The command topics (and their ``.dlq``) are made if missing, with ``partitions`` (default
    the app's ``topic_partitions``); each handled table gets its command topic's partition
    count. The app must use ``processing_guarantee="exactly_once"``. See the module's docstring
    for the guarantees.
    """
    if str(app.conf.processing_guarantee).split(".")[-1].lower() != "exactly_once":
        raise ValueError(
            f"worker_agent({worker.name!r}): the app must run with "
            'processing_guarantee="exactly_once" (replies commit with the consumed offsets)'
        )
    if not worker.topics:
        raise ValueError(f"worker {worker.name!r} has no handlers")
    tracing.configure()  # handler spans, as ``Worker.run`` makes them, when OTEL_* asks
    count = partitions or int(app.conf.topic_partitions)
    ensure_plain_topics(worker.topics, bootstrap, partitions=count)
    ensure_plain_topics([f"{t}.dlq" for t in worker.topics], bootstrap, config=DLQ_POLICY)
    admin = connect_admin(bootstrap, "sagalog-faust")
    found = admin.list_topics(timeout=15).topics
    agents = [
        _agent(app, worker, topic, len(found[topic].partitions), bootstrap)
        for topic in worker.topics
    ]

    @app.task  # type: ignore[untyped-decorator]
    async def _prepare() -> None:
        """Reply schemas go to the schema history; unknown command schemas are asked there."""
        worker._history = _history(bootstrap)
        worker._history.serve_unknown()

    return agents


def _agent(app: Any, worker: Worker, topic: str, partitions: int, bootstrap: str | None) -> Any:
    commands = app.topic(topic, partitions=partitions, **RAW)
    handled = app.Table(
        table_name(topic), partitions=partitions, default=None, extra_topic_configs=HANDLED_CONFIG
    )

    def remembered_in(received: _Received) -> Callable[[CommandContext], HandledCommand | None]:
        def remembered(context: CommandContext) -> HandledCommand | None:
            replies = handled.get(context.instance_id) or {}
            reply = replies.get(context.command_id)
            if reply is None:
                return None
            return HandledCommand(
                context.command_id,
                # The same record delivered again carries the same address.
                header(received.headers(), REPLY_TO) or "",
                context.instance_id,
                base64.b64decode(reply),
                context.topic,
                context.partition,
            )

        return remembered

    seen: set[int] = set()
    # The Faust producer's limit (aiokafka's max_request_size) with each topic's own.
    limits_of = BrokerLimits(
        bootstrap, {"message.max.bytes": int(app.conf.producer_max_request_size)}
    )

    async def serve(stream: Any) -> None:
        async for event in stream.events():
            received = _Received(event.message)
            # Worker.handle reads only confluent-kafka's accessors, which _Received provides.
            message: Any = received
            answer = worker.handle(message, remembered=remembered_in(received))
            tid = _transactional_id(app, received.topic(), received.partition())
            if received.partition() not in seen:  # what the guarantee rests on, once each
                seen.add(received.partition())
                changelog = handled.changelog_topic.get_topic_name()
                same = app.assignor.group_for_topic(changelog) == app.assignor.group_for_topic(
                    topic
                )
                log.info(
                    "worker agent %s: %s[%s] replies in transaction %s; table changelog %s "
                    "in the same partition group: %s",
                    worker.name,
                    topic,
                    received.partition(),
                    tid,
                    changelog,
                    same,
                )
                if not same:
                    log.error(
                        "%s and %s are not co-partitioned: not exactly once", topic, changelog
                    )
            if answer.handled is not None:
                # Remembered first, and its changelog record awaited: Faust sends a table's
                # changelog through a buffer, so a transaction could commit the reply while the
                # remembered copy waits for the next one. In this order a committed reply
                # implies a committed copy; a copy without its reply is answered from the table.
                await _remember(handled, answer.handled, received.partition())
            await _send(app, await _deliverable(limits_of, received, answer), tid)
            if answer.handled is None and not answer.dead:
                log.info(
                    "worker agent %s: %s answered again from the table, its handler not run",
                    worker.name,
                    header(answer.outgoing[3], COMMAND_ID),
                )

    serve.__name__ = serve.__qualname__ = f"{worker.name}_{topic}".replace(".", "_")
    app.timer(STALL_CHECK_SECONDS, on_leader=False)(_stall_watch(app, topic))
    _resume_streams_after_clearing(app)
    return app.agent(commands, name=f"sagalog.worker.{worker.name}.{topic}")(serve)


async def _deliverable(limits_of: BrokerLimits, received: _Received, answer: Answer) -> Outgoing:
    """The reply of ``answer``, or the ``reply-undeliverable`` dead letter ``sagas worker`` would
    send instead (its address refused or missing, or too large for its topic or the producer),
    cut to fit the dead-letter topic. Asked off the event loop: the broker may be asked for a
    topic's limits (cached for minutes)."""
    if answer.dead:
        return answer.outgoing
    why = answer.undeliverable or await asyncio.to_thread(undeliverable, limits_of, answer.outgoing)
    if why is None:
        return answer.outgoing
    message: Any = received  # reply_dead_letter reads confluent-kafka's accessors
    topic, key, value, original, marks = reply_dead_letter(message, answer.outgoing, why)
    room = (await asyncio.to_thread(limits_of.limits, topic)).max_record_bytes
    letter = limits.fit_dead_letter(key, value, original, marks, room)
    return topic, letter.key, letter.value, letter.headers


async def _remember(table: Any, handled: HandledCommand, partition: int) -> None:
    """Put ``handled`` in the table and wait until its changelog record is sent (in the
    transaction of the command's partition), as ``Table.__setitem__`` does without waiting."""
    instance = handled.instance_id
    replies = dict(table.get(instance) or {})
    replies[handled.command_id] = base64.b64encode(handled.reply).decode()
    table.data[instance] = replies
    await table.send_changelog(partition, instance, replies)


_holding: weakref.WeakSet[Any] = weakref.WeakSet()


def _resume_streams_after_clearing(app: Any) -> None:
    """Make Faust resume the fetching of stream partitions after it clears the stream queues
    at the end of a rebalance, not before (faust-streaming #596); installed once per app.

    ``Recovery.on_recovery_completed`` resumes the stream partitions (the fetcher, already
    running to read the changelogs, starts delivering their records into the stream queues),
    seeks them to their committed offsets, then calls ``app.flow_control.resume()``, which
    clears every stream queue: records delivered after the seek are dropped unacknowledged,
    the fetch position and Faust's read offset already past them. Here the partitions it
    resumes are held, still paused, until the flow is resumed (the queues cleared): nothing of
    theirs is in a queue to drop, and their first fetch starts at the committed offset."""
    if app in _holding:
        return
    _holding.add(app)
    recovery = app.tables.recovery
    completed = recovery.on_recovery_completed

    async def on_recovery_completed(generation_id: int = 0) -> None:
        consumer = app.consumer
        flow = app.flow_control
        held: set[Any] = set()
        consumer.resume_partitions = held.update
        flow.resume = functools.partial(_clear_then_resume, consumer, flow, held)
        try:
            await completed(generation_id)
        finally:  # their classes' methods again; partitions still held (a recovery that ended
            # early: a new rebalance began) are paused and resumed anew by that rebalance
            vars(consumer).pop("resume_partitions", None)
            vars(flow).pop("resume", None)

    recovery.on_recovery_completed = on_recovery_completed


def _clear_then_resume(consumer: Any, flow: Any, held: set[Any]) -> None:
    """``flow.resume()`` (clears the stream queues), then the held partitions resumed."""
    vars(flow).pop("resume", None)
    flow.resume()
    vars(consumer).pop("resume_partitions", None)
    if held:
        log.info(
            "worker agent: stream partitions resumed after the queues were cleared: %s",
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(held)),
        )
        consumer.resume_partitions(held)


async def _seek_back(consumer: Any, tp: Any, offset: int, why: str) -> None:
    log.info("worker agent: %s[%s] sought back to %s (%s)", tp.topic, tp.partition, offset, why)
    await consumer.seek(tp, offset)


#: How often a worker agent looks for a command partition whose offsets Faust stopped committing.
STALL_CHECK_SECONDS = 5.0


def _stalled_at(consumer: Any, tp: Any) -> int | None:
    """The committed offset of ``tp`` if Faust can no longer commit past it, else None.

    Faust commits the first run of consecutive acknowledged offsets only if it starts at most
    one past the committed offset (``Consumer._new_offset``; its gap tracking fills the offsets
    of transaction markers and aborted records). Records lost before being acknowledged leave
    a hole no later acknowledgement fills: see ``_stall_watch``.
    """
    committed = consumer._committed_offset.get(tp)
    acked = consumer._acked.get(tp)
    if committed is None or not acked:
        return None
    head = min([*acked, *(gap.begin for gap in consumer._gap.get(tp, ()))])
    return int(committed) if head - committed > 1 else None


def _stall_watch(app: Any, topic: str) -> Callable[[], Awaitable[None]]:
    """A timer that finds a partition of ``topic`` stuck behind lost records and seeks it back:
    a safety net for ``_resume_streams_after_clearing`` (records lost before their
    acknowledgement by another path). Faust would never commit such a partition again, nor its
    transaction (its replies). A partition is sought only if it looked stuck at the same offset
    on two checks in a row."""
    suspects: dict[Any, int] = {}

    async def watch() -> None:
        consumer = app.consumer
        try:
            assigned = consumer.assignment()
        except ConsumerNotStarted:
            return
        for tp in assigned:
            if tp.topic != topic:
                continue
            stuck = _stalled_at(consumer, tp)
            if stuck is None or suspects.get(tp) != stuck:
                suspects.pop(tp, None)
                if stuck is not None:
                    suspects[tp] = stuck
                continue
            del suspects[tp]
            log.warning(
                "worker agent: %s[%s] cannot commit past %s (records lost before their "
                "acknowledgement, faust-streaming #596): seeking back to it",
                tp.topic,
                tp.partition,
                stuck,
            )
            await _seek_back(consumer, tp, stuck, "stuck")

    watch.__name__ = watch.__qualname__ = f"stall_watch_{topic}".replace(".", "_")
    return watch


async def _send(app: Any, outgoing: Outgoing, transactional_id: str | None = None) -> None:
    """Produce one record through Faust's producer (in ``transactional_id``'s transaction)."""
    topic, key, value, headers = outgoing
    producer = app.producer
    await producer.maybe_start()
    pairs = [(name, value) for name, value in headers]
    sent: Awaitable[Any] = await producer.send(
        topic, key, value, None, None, pairs, transactional_id=transactional_id
    )
    await sent


async def publish(
    app: Any,
    event: Event,
    *,
    topic: str | None = None,
    headers: Sequence[tuple[str, bytes]] | None = None,
    bootstrap: str | None = None,
) -> None:
    """Send ``event`` to its topic (or ``topic``), keyed by its key field, as ``Publisher`` does.

    Partitioned by the Kafka key with aiokafka's ``DefaultPartitioner``: murmur2 as Java's
    client computes it (``stream_processors.tools.history.partition_for``, librdkafka's
    ``murmur2_random``), unless the app sets ``producer_partitioner``. The event's schema is
    recorded in the schema history first (best effort). Not part of any transaction: use it
    to start sagas from a Faust task, timer or web view.
    """
    target = topic or event.__topic__
    if target is None:
        raise ValueError(f"{type(event).__qualname__} declares no topic; pass topic=")
    _history(bootstrap).try_record(target, event.__avro__)
    key = event.key()
    pairs: Headers = list(headers or [])
    await _send(app, (target, None if key is None else key.encode(), event.encode(), pairs))


def main(app: Any) -> NoReturn:
    """Run Faust's command line for ``app`` (``python -m yourapp worker``), then exit the
    process as soon as Faust's own shutdown has ended.

    Why: Faust's consumer thread (a ``mode.threads.ServiceThread``) is not a daemon thread. When
    an ``exactly_once`` app's last commit at shutdown fails (faust-streaming raises
    ``IllegalOperation: Not in the middle of a transaction`` from ``force_commit``; seen with
    the read model example), that thread outlives the closed event loop and holds the process
    for tens of seconds (measured: 41 s from SIGTERM to exit, against 2.6 s for an app whose
    last commit succeeded). By then Faust has stopped every service and closed its loop; what
    it had not committed is read again at the next start, as after any stop."""
    code: int = 0
    try:
        app.main()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


__all__ = [
    "CODEC_NAME",
    "RAW",
    "SagalogCodec",
    "faust",
    "main",
    "publish",
    "table_name",
    "worker_agent",
]
