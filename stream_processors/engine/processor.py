"""The saga processor: consume inputs, decide, and write everything in one transaction.

One processor process owns a set of partitions of its saga's inbox (through the consumer group)
and the source topics' partitions it was given. For each input record, in partition order:

- a *source event* (from a service's topic) is routed: re-keyed by instance id into the inbox;
- an *inbox record* is decoded, its instance loaded (open transaction's write cache, then the
  local store, else new), ``decide``d, and its journal entries and commands produced; the new
  state is staged as the instance's snapshot;
- anything unreadable, keyless, too large, of a type the saga does not take, naming an
  unknown instance, or keyed by another instance than it names (``key-mismatch``: see
  ``stream_processors.core.keys``) goes to the dead-letter topic, with the reason and origin in
  headers. A source event is routed by the instance its fields name, not by its Kafka key.

Every commit interval the open Kafka transaction is committed with the staged snapshots (one per
instance, however many inputs it had) and the consumed offsets. Only after the commit succeeds
are the snapshots written to the local store with their changelog offsets. See
docs/architecture.md, "The processing contract".

With signing keys configured (``ProcessorConfig.signing``, by default from the environment; see
``stream_processors.codecs.signing``), commands and routed events are signed, and an inbox record
without a valid signature is dead-lettered as ``bad-signature`` before it is decoded.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from stream_processors.codecs.avro import DecodeError
from stream_processors.codecs.records import Record, decode_record
from stream_processors.codecs.signing import (
    BAD_SIGNATURE,
    Keyring,
    Purpose,
    from_environment,
    signed,
    verify,
)
from stream_processors.core import limits
from stream_processors.core.decide import Decision, Input, decide, decide_timer
from stream_processors.core.instance import Instance, decode_snapshot, encode_snapshot, schedule
from stream_processors.core.journal import Kind
from stream_processors.core.keys import KEY_MISMATCH, key_mismatch, route_key
from stream_processors.core.model import SagaDefinition
from stream_processors.engine import metrics
from stream_processors.engine.restore import restore_partition
from stream_processors.engine.routing import (
    COMMAND_ID,
    DLQ_DETAIL,
    DLQ_REASON,
    INSTANCE,
    NOTE,
    command_headers,
    dead_letter_marks,
    header,
    origin_headers,
    received_headers,
)
from stream_processors.engine.schema_history import SchemaHistory, prepare_saga_schemas
from stream_processors.engine.store import (
    Due,
    DueRef,
    Slot,
    SnapshotStore,
    claim_slot,
    default_state_dir,
    index_entries,
)
from stream_processors.kafka import transactions
from stream_processors.kafka.broker_limits import BrokerLimits
from stream_processors.kafka.config import consumer_config, producer_config
from stream_processors.kafka.topics import SagaTopics, ensure_topics, topic_id

log = logging.getLogger(__name__)

_LIFECYCLE = {
    Kind.SAGA_STARTED: "started",
    Kind.SAGA_COMPLETED: "completed",
    Kind.SAGA_COMPENSATED: "compensated",
    Kind.SAGA_FAILED: "failed",
    Kind.SAGA_PARKED: "parked",
}


#: How often (seconds) the processor looks for due timers: the resolution of every timer.
DUE_CHECK_INTERVAL = 0.05
#: The longest ``consume`` waits for a batch to fill: an input's least added latency.
POLL_INTERVAL = 0.01
WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass
class ProcessorConfig:
    bootstrap: str | None = None
    commit_interval_ms: int = 100
    partitions: int = 8
    state_dir: Path | None = None
    create_topics: bool = True
    batch_size: int = 1000
    #: Once caught up with its inputs, commit when the transaction is this old (see ``_loop``).
    idle_commit_ms: int = 10
    #: Inputs larger than this (key, value and headers) are dead-lettered as ``too-large``.
    max_record_bytes: int = 1_000_000
    #: Longer instance ids are dead-lettered as ``instance-id-too-long`` (see limits.py).
    max_instance_id_bytes: int = 256
    cache_size: int = 50_000
    #: How long a finished instance's snapshot stays in the store (None: forever).
    retention_ms: int | None = WEEK_MS
    #: Keys to sign commands and check inbox records with (None: signing off).
    signing: Keyring | None = field(default_factory=from_environment)


class _TransactionAborted(Exception):
    """The open transaction was aborted; staged work is gone and the consumer was rewound."""


class SagaProcessor:
    """Runs one saga's processing loop in this process. ``run()`` blocks until ``stop()``."""

    def __init__(
        self,
        definition: SagaDefinition,
        config: ProcessorConfig | None = None,
        topics: SagaTopics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.definition = definition
        self.config = config or ProcessorConfig()
        self.topics = topics or SagaTopics.for_saga(definition, self.config.partitions)
        self.clock = clock
        self._stopping = threading.Event()
        self._slot: Slot = claim_slot(self.config.state_dir or default_state_dir(definition.name))
        self.store = SnapshotStore(self._slot.path / "rocksdb")
        self._transactional_id = f"sagalog.{definition.name}.{self._slot.identity}"
        # The open transaction: staged snapshots (the write cache) and next offsets to commit.
        self._staged: dict[tuple[int, str], Instance | None] = {}
        self._offsets: dict[tuple[str, int], int] = {}
        self._txn_open = False
        self._txn_started = 0.0
        # Committed instances recently used, decoded: saves a store read and a decode per input.
        self._recent: OrderedDict[tuple[int, str], Instance] = OrderedDict()
        self._owned: set[int] = set()
        # Index entries dealt with in the open transaction: deleted from the store at commit.
        self._done: set[DueRef] = set()
        self._due_checked = 0.0
        self._labels = {"saga": definition.name}
        # Labelled children looked up once: ``labels()`` costs more than the increment itself.
        self._inputs_counter = metrics.INPUTS.labels(**self._labels)
        self._routed_counter = metrics.ROUTED.labels(**self._labels)
        self._lifecycle_counters = {
            kind: metrics.SAGAS.labels(event=event, **self._labels)
            for kind, event in _LIFECYCLE.items()
        }
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self._history: SchemaHistory | None = None  # set by run(); follows unknown fingerprints
        # The limits of the topics we write to (set by run()); see stream_processors.core.limits.
        self._limits: BrokerLimits | None = None
        # Snapshots encoded when checked, by slot: the commit writes them as they are.
        self._encoded: dict[tuple[int, str], bytes] = {}
        # Records produced for the input at hand; inputs whose produce failed midway, by
        # (topic, partition, offset), with the reason to dead-letter them when read again.
        self._produced = 0
        self._poison: dict[tuple[str, int, int], tuple[str, str]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop())

    def run(self) -> None:
        config = self.config
        if config.create_topics:
            ensure_topics(self.topics, config.bootstrap)
        # -- schema evolution (stream_processors.engine.schema_history) ---------------------------
        # Old writer schemas become readable; an incompatible schema change refuses to start
        # (IncompatibleSchemaError naming topic, schema and field); our schemas get recorded.
        self._history = prepare_saga_schemas(self.definition, self.topics, config.bootstrap)
        # -----------------------------------------------------------------------------------
        if self.store.adopt_changelog(topic_id(self.topics.snapshots, config.bootstrap)):
            log.warning("the snapshots changelog was recreated: the local store starts afresh")
        name = self.definition.name
        settings = producer_config(config.bootstrap, f"{name}-processor", self._transactional_id)
        self._limits = BrokerLimits(config.bootstrap, settings)
        self.producer = Producer(settings)
        # Fences any earlier producer with our id, aborting a transaction it left open.
        self.producer.init_transactions(60)
        self.consumer = Consumer(
            consumer_config(
                config.bootstrap,
                f"{name}-processor",
                f"sagalog.{name}",
                **{
                    "partition.assignment.strategy": "range",
                    "max.poll.interval.ms": 300_000,
                    # Static membership: a restarted process (same slot, same id) takes its
                    # partitions back at once instead of waiting for a rebalance; a dead one's
                    # partitions move to the others after the session timeout.
                    "group.instance.id": self._transactional_id,
                    "session.timeout.ms": 10_000,
                    "heartbeat.interval.ms": 1_000,
                },
            )
        )
        self._restorer = Consumer(
            consumer_config(
                config.bootstrap,
                f"{name}-restore",
                None,
                # Never commits: the group id only satisfies the client. A partition whose tail
                # is aborted records or markers returns nothing; do not wait 500 ms to learn it.
                **{"group.id": f"sagalog.{name}.restore", "fetch.wait.max.ms": 20},
            )
        )
        self.consumer.subscribe(
            [self.topics.inbox, *self.topics.sources],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info("processor %s (slot %s) started", self._transactional_id, self._slot.index)
        try:
            self._loop()
        finally:
            self._shutdown()

    def _loop(self) -> None:
        """Consume, handle, and commit: every commit interval under load, sooner when idle.

        ``consume`` waits for a full batch or its timeout, so a long timeout would hold every
        input of a quiet stream back by that much: poll often instead. Once the consumer is
        caught up (a batch came back short) there is nothing to gain by holding the open
        transaction until the interval ends, only latency: it commits as soon as it is
        ``idle_commit_ms`` old. Under load batches come back full, and it commits every
        ``commit_interval_ms`` as before.
        """
        assert self.consumer is not None and self.producer is not None
        config = self.config
        interval = config.commit_interval_ms / 1000
        idle = min(interval, config.idle_commit_ms / 1000)
        timeout = min(interval, POLL_INTERVAL)
        while not self._stopping.is_set():
            messages = self.consumer.consume(config.batch_size, timeout=timeout)
            try:
                for message in messages:
                    self._handle(message)
                self._run_due()
                if self._txn_open:
                    age = time.monotonic() - self._txn_started
                    caught_up = len(messages) < config.batch_size
                    if age >= interval or (caught_up and age >= idle):
                        self._commit()
            except _TransactionAborted:
                continue
            self.producer.poll(0)

    def _shutdown(self) -> None:
        try:
            if self._txn_open:
                self._commit()
        except _TransactionAborted:
            pass
        finally:
            if self.consumer is not None:
                self.consumer.close()
            self._restorer.close()
            if self.producer is not None:
                self.producer.flush(10)
            self.store.close()
            if self._history is not None:
                self._history.close()
            self._slot.release()

    # -- per record --------------------------------------------------------------------------

    def _begin(self) -> None:
        if not self._txn_open:
            assert self.producer is not None
            self.producer.begin_transaction()
            self._txn_open = True
            self._txn_started = time.monotonic()

    def _handle(self, message: Message) -> None:
        if not transactions.consumed(message):
            return
        self._begin()
        topic, partition = message.topic() or "", message.partition() or 0
        offset = message.offset() or 0
        self._produced = 0
        poisoned = self._poison.pop((topic, partition, offset), None)
        try:
            if poisoned is not None:  # its produce failed midway before: dead-letter it now
                self._dead_letter(message, *poisoned)
            elif topic == self.topics.inbox:
                self._process(message, partition)
            else:
                self._route(message)
        except KafkaException as error:
            self._refused(message, error)
        self._offsets[(topic, partition)] = offset + 1

    def _refused(self, message: Message, error: KafkaException) -> None:
        """A produce for ``message`` raised: dead-letter the input, or if some of its records
        were produced already, abort (it is dead-lettered when read again) and rewind."""
        kafka_error = error.args[0]
        reason = (
            limits.OUTPUTS_TOO_LARGE
            if kafka_error.code() == KafkaError.MSG_SIZE_TOO_LARGE
            else "produce-error"
        )
        detail = f"produce refused: {kafka_error}"
        if kafka_error.fatal() or kafka_error.txn_requires_abort():
            self._abort(error)
            raise _TransactionAborted() from error
        if self._produced == 0:
            self._dead_letter(message, reason, detail)
            return
        where = (message.topic() or "", message.partition() or 0, message.offset() or 0)
        self._poison[where] = (reason, detail)
        log.error("input %s: %s after %s records; aborting", where, detail, self._produced)
        assert self.producer is not None and self.consumer is not None
        self.producer.abort_transaction(30)
        transactions.rewind(self.consumer)
        metrics.TRANSACTIONS.labels(outcome="aborted", **self._labels).inc()
        self._reset_transaction()
        raise _TransactionAborted() from error

    def _produce(self, topic: str, **record: object) -> None:
        """Produce one record; waits while the local queue is full. Counts it for ``_refused``."""
        assert self.producer is not None
        while True:
            try:
                self.producer.produce(topic, **record)  # type: ignore[arg-type]
                break
            except BufferError:
                self.producer.poll(0.1)
        self._produced += 1

    def _limit(self, topic: str) -> limits.Limits:
        return limits.Limits() if self._limits is None else self._limits.limits(topic)

    def _decoded(self, message: Message) -> Record | None:
        """The record a message carries, or None once it went to the dead-letter topic."""
        value = message.value()
        size = limits.record_size(message.key(), value, received_headers(message))
        if size > self.config.max_record_bytes:
            detail = f"{size} bytes > limit {self.config.max_record_bytes}"
            self._dead_letter(message, limits.TOO_LARGE, detail)
            return None
        try:
            return decode_record(value)
        except DecodeError as error:
            self._dead_letter(message, error.reason, error.detail)
            return None

    def _route(self, message: Message) -> None:
        """Re-key a source event by instance id into the inbox (inside the transaction)."""
        record = self._decoded(message)
        if record is None:
            return
        if type(record) not in self.definition.source_inputs:  # a reply or operator action too
            self._dead_letter(message, "unexpected-type", type(record).__qualname__)
            return
        key = route_key(self.definition, record)  # by its fields, never its Kafka key
        if not key:
            self._dead_letter(message, "no-key", f"{type(record).__qualname__} names no instance")
            return
        encoded, inbox = key.encode(), self.topics.inbox
        if self._id_too_long(message, encoded):
            return
        value, headers = message.value(), origin_headers(message)
        if self.config.signing is not None:
            headers = signed(self.config.signing, Purpose.INBOX, inbox, encoded, value, headers)
        oversize = self._limit(inbox).oversize("routed copy", inbox, encoded, value, headers)
        if oversize is not None:
            self._dead_letter(message, limits.OUTPUTS_TOO_LARGE, oversize.detail())
            return
        self._produce(inbox, key=encoded, value=value, headers=headers)
        self._routed_counter.inc()

    def _id_too_long(self, message: Message, instance_id: bytes) -> bool:
        """Dead-letters ``message`` if ``instance_id`` is over the configured length."""
        detail = limits.instance_id_too_long(instance_id, self.config.max_instance_id_bytes)
        if detail is not None:
            self._dead_letter(message, limits.INSTANCE_ID_TOO_LONG, detail)
        return detail is not None

    def _process(self, message: Message, partition: int) -> None:
        if self.config.signing is not None and not self._verified(message, self.config.signing):
            return
        record = self._decoded(message)
        if record is None:
            return
        value = message.value()
        raw_key = message.key()
        if not raw_key:
            self._dead_letter(message, "no-key", "inbox records are keyed by instance id")
            return
        try:
            instance_id = raw_key.decode()
        except UnicodeDecodeError:
            self._dead_letter(message, "bad-key", "the key is not UTF-8 text")
            return
        assert value is not None
        if self._id_too_long(message, raw_key):
            return
        headers = message.headers()
        command_id, note = header(headers, COMMAND_ID), header(headers, NOTE)
        mismatch = key_mismatch(
            self.definition, record, instance_id, command_id, header(headers, INSTANCE)
        )
        if mismatch is not None:
            self._dead_letter(message, KEY_MISMATCH, mismatch)
            return
        instance = self._load(partition, instance_id)
        now_ms = int(self.clock() * 1000)
        decision = decide(self.definition, instance, Input(record, value, command_id, note), now_ms)
        self._inputs_counter.inc()
        if decision.rejected is not None:
            self._dead_letter(message, decision.rejected, type(record).__qualname__)
            return
        if decision.ignored is not None:
            metrics.count_ignored(self.definition.name, decision.ignored)
            return
        oversize = self._emit(decision, partition, raw_key, instance, now_ms)
        if oversize is not None:  # nothing of the decision was staged
            self._dead_letter(message, limits.OUTPUTS_TOO_LARGE, oversize.detail())

    def _emit(
        self,
        decision: Decision,
        partition: int,
        key: bytes,
        before: Instance | None,
        now_ms: int,
    ) -> limits.Oversize | None:
        """Stage a decision: its journal entries, commands and snapshot. Each is checked
        against its topic's limits first; if one would not fit, nothing is staged and that
        record is returned (the caller dead-letters the input)."""
        assert decision.instance is not None
        journal = self.topics.journal
        # The record's timestamp is the entry's own time: Kafka's time index then finds an
        # instance's history from its started_at_ms (see stream_processors.tools.history).
        outgoing = [
            (
                limits.Outgoing(f"journal entry {entry.kind}", journal, key, entry.encode()),
                {"partition": partition, "timestamp": entry.at_ms},
            )
            for entry in decision.entries
        ]
        signing = self.config.signing
        for command in decision.commands:
            command_key, topic = command.key.encode(), command.topic
            headers = command_headers(
                command.command_id, self.topics.inbox, command.key, self.definition.name
            )
            if signing is not None:
                headers = signed(
                    signing, Purpose.COMMAND, topic, command_key, command.value, headers
                )
            what = f"command {command.command_id[:200]}"
            record = limits.Outgoing(what, topic, command_key, command.value, headers)
            outgoing.append((record, {}))
        snapshot = encode_snapshot(decision.instance)
        snapshots = self.topics.snapshots
        checks = [(record, self._limit(record.topic)) for record, _ in outgoing]
        record = limits.Outgoing("snapshot", snapshots, key, snapshot)
        checks.append((record, self._limit(snapshots)))
        oversize = limits.first_oversize(checks)
        if oversize is not None:
            return oversize
        for record, extra in outgoing:
            self._produce(
                record.topic, key=record.key, value=record.value, headers=record.headers, **extra
            )
        for entry in decision.entries:
            kind = Kind(entry.kind)
            lifecycle = self._lifecycle_counters.get(kind)
            if lifecycle is not None:
                lifecycle.inc()
            elif kind in (Kind.STEP_SUCCEEDED, Kind.STEP_FAILED) and before and entry.step:
                sent = before.steps[entry.step].sent_at_ms
                outcome = "succeeded" if kind is Kind.STEP_SUCCEEDED else "failed"
                metrics.STEP_SECONDS.labels(
                    step=entry.step, outcome=outcome, **self._labels
                ).observe(max(0, now_ms - sent) / 1000)
        slot = (partition, decision.instance.instance_id)
        self._staged[slot] = decision.instance
        self._encoded[slot] = snapshot
        return None

    def _run_due(self) -> None:
        """Fire due timers and expire finished instances in our partitions, in the transaction.

        The store's indexes say where to look; the instance says whether a timer is still set
        (a reply may have cancelled it) or whether it is still finished and old enough. Index
        entries dealt with are deleted with the commit, so if the transaction aborts they are
        dealt with again.
        """
        now = self.clock()
        if now - self._due_checked < DUE_CHECK_INTERVAL:
            return
        self._due_checked = now
        now_ms = int(now * 1000)
        for partition in sorted(self._owned):
            for index in Due:
                for ref in self.store.due(index, partition, now_ms):
                    if ref not in self._done:
                        self._done.add(ref)
                        handle = self._fire if index is Due.TIMER else self._expire
                        handle(partition, ref[3], now_ms)

    def _fire(self, partition: int, instance_id: str, now_ms: int) -> None:
        instance = self._load(partition, instance_id)
        if instance is None:
            return
        due = sorted((t.due_ms, name) for name, t in instance.timers.items() if t.due_ms <= now_ms)
        for _, name in due:
            before = self._load(partition, instance_id)
            decision = decide_timer(self.definition, before, name, now_ms)
            if decision.entries:
                self._begin()
                key = instance_id.encode()
                oversize = self._emit(decision, partition, key, before, now_ms)
                if oversize is not None:  # no input to dead-letter: a record saying so instead
                    self._dead_letter_timer(key, name, oversize)

    def _expire(self, partition: int, instance_id: str, now_ms: int) -> None:
        """Tombstone a finished instance's snapshot: its history stays in the journal."""
        retention = self.config.retention_ms
        instance = self._load(partition, instance_id)
        if instance is None or retention is None or not instance.status.finished:
            return
        if instance.updated_at_ms + retention <= now_ms:
            self._begin()
            self._staged[(partition, instance_id)] = None
            metrics.EXPIRED.labels(**self._labels).inc()

    def _load(self, partition: int, instance_id: str) -> Instance | None:
        slot = (partition, instance_id)
        if slot in self._staged:  # None: expired in this transaction
            return self._staged[slot]
        recent = self._recent.get(slot)
        if recent is not None:
            self._recent.move_to_end(slot)
            return recent
        value = self.store.get(partition, instance_id)
        return None if value is None else decode_snapshot(value)

    def _verified(self, message: Message, signing: Keyring) -> bool:
        """Whether an inbox record's signature holds; if not, it is dead-lettered."""
        key, value = message.key(), message.value()
        problem = verify(signing, Purpose.INBOX, self.topics.inbox, key, value, message.headers())
        if problem is None:
            return True
        self._dead_letter(message, BAD_SIGNATURE, problem)
        return False

    def _dead_letter(self, message: Message, reason: str, detail: str) -> None:
        log.warning(
            "dead letter from %s[%s]@%s: %s %s",
            message.topic(),
            message.partition(),
            message.offset(),
            reason,
            detail,
        )
        original = received_headers(message)
        marks = dead_letter_marks(message, reason, detail)
        self._send_dead_letter(message.key(), message.value(), original, marks)
        metrics.count_dead_letter(self.definition.name, reason)

    def _dead_letter_timer(self, key: bytes, timer: str, oversize: limits.Oversize) -> None:
        """A timer's decision that would not fit: left undone, and said so on the DLQ (it has no
        origin to redrive to; the instance's timer is not fired again)."""
        detail = f"timer {timer}: {oversize.detail()}"
        log.error("instance %s: %s", key[:200].decode(errors="replace"), detail)
        marks: list[tuple[str, str | bytes | None]] = [
            (DLQ_REASON, limits.OUTPUTS_TOO_LARGE.encode()),
            (DLQ_DETAIL, detail[:1000].encode()),
        ]
        self._send_dead_letter(key, None, [], marks)
        metrics.count_dead_letter(self.definition.name, limits.OUTPUTS_TOO_LARGE)

    def _send_dead_letter(
        self,
        key: bytes | None,
        value: bytes | None,
        original: limits.HeaderPairs,
        marks: limits.HeaderPairs,
    ) -> None:
        """Produce a dead letter cut to fit the DLQ (``limits.fit_dead_letter``); if the broker's
        client still refuses it, its reason and origin alone."""
        dlq = self.topics.dlq
        letter = limits.fit_dead_letter(
            key, value, original, marks, self._limit(dlq).max_record_bytes
        )
        try:
            self._produce(dlq, key=letter.key, value=letter.value, headers=letter.headers)
        except KafkaException as error:
            if error.args[0].fatal() or error.args[0].txn_requires_abort():
                raise
            log.error("dead letter refused (%s): sending its reason and origin only", error)
            self._produce(dlq, key=letter.key[:1024] if letter.key else None, headers=list(marks))

    # -- the transaction ---------------------------------------------------------------------

    def _commit(self) -> None:
        """Commit the open transaction, then write its snapshots to the local store."""
        assert self.producer is not None and self.consumer is not None
        began = time.monotonic()
        changelog_offsets: dict[int, int] = {}
        written: list[tuple[int, str, bytes | None]] = []

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is None:
                partition, offset = message.partition() or 0, message.offset() or 0
                changelog_offsets[partition] = max(changelog_offsets.get(partition, -1), offset)

        snapshots = self.topics.snapshots
        index: list[DueRef] = []
        for (partition, instance_id), instance in self._staged.items():
            # Encoded when its decision was checked against the limits (see ``_emit``).
            value = None if instance is None else self._encoded[(partition, instance_id)]
            written.append((partition, instance_id, value))
            if instance is not None:
                index += index_entries(
                    partition, instance_id, *schedule(instance), self.config.retention_ms
                )
            self.producer.produce(
                snapshots,
                key=instance_id.encode(),
                value=value,
                partition=partition,
                on_delivery=delivered,
            )
        try:
            # Its flush serves the delivery callbacks that tell the snapshots' changelog offsets.
            transactions.commit(self.producer, self.consumer, self._offsets)
        except KafkaException as error:
            self._abort(error)
            raise _TransactionAborted() from error
        self._txn_open = False
        metrics.TRANSACTIONS.labels(outcome="committed", **self._labels).inc()
        metrics.COMMIT_SECONDS.labels(**self._labels).observe(time.monotonic() - began)
        # The commit marker follows our last snapshot in each partition (we are its only writer),
        # so the store is current up to the marker: a restart then finds nothing to read.
        self.store.write(
            written, {p: offset + 1 for p, offset in changelog_offsets.items()}, index, self._done
        )
        recent = self._recent
        for slot, instance in self._staged.items():
            if instance is None:
                recent.pop(slot, None)
            else:
                recent[slot] = instance
                recent.move_to_end(slot)
        while len(recent) > self.config.cache_size:
            recent.popitem(last=False)
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        """Forget the open transaction's bookkeeping: after its commit, abort, or loss.

        One place for all three, so none of them can leave a field behind (an index entry left
        in ``_done`` after an abort would never fire again in this process).
        """
        self._txn_open = False
        self._staged.clear()
        self._encoded.clear()
        self._offsets.clear()
        self._done.clear()

    def _abort(self, error: KafkaException) -> None:
        """Abort after a failed commit and rewind to the last committed offsets."""
        assert self.producer is not None and self.consumer is not None
        transactions.abort(self.producer, self.consumer, error)
        metrics.TRANSACTIONS.labels(outcome="aborted", **self._labels).inc()
        self._reset_transaction()

    # -- rebalancing -------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        inbox = [tp.partition for tp in partitions if tp.topic == self.topics.inbox]
        log.info("assigned inbox partitions %s", sorted(inbox))
        for partition in sorted(inbox):
            result = restore_partition(
                self._restorer,
                self.store,
                self.topics.snapshots,
                partition,
                self._restore_progress,
                self.config.retention_ms,
            )
            metrics.RESTORED.labels(**self._labels).inc(result.records)
            log.info(
                "restored partition %s: %s changelog records (offsets %s..%s) in %.2fs",
                partition,
                result.records,
                result.started_at_offset,
                result.high_watermark,
                result.seconds,
            )
            self._owned.add(partition)
        metrics.RESTORE_REMAINING.labels(**self._labels).set(0)

    def _restore_progress(self, done: int, expected: int) -> None:
        metrics.RESTORE_REMAINING.labels(**self._labels).set(max(0, expected - done))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit while the group generation that owns these partitions is still current.
        if self._txn_open:
            try:
                self._commit()
            except _TransactionAborted:
                log.warning("transaction aborted during revoke; the new owner redoes its inputs")
        self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The partitions are already someone else's: our open transaction must not commit.
        if self._txn_open and self.producer is not None:
            self.producer.abort_transaction(30)
            self._reset_transaction()
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions if tp.topic == self.topics.inbox}
        self._owned -= revoked
        for slot in [s for s in self._recent if s[0] in revoked]:
            del self._recent[slot]


__all__ = ["ProcessorConfig", "SagaProcessor"]
