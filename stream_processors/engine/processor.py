"""The saga processor: consume inputs, decide, and write everything in one transaction.

One processor process owns a set of partitions of its saga's inbox (through the consumer group)
and the source topics' partitions it was given. For each input record, in partition order:

- a *source event* (from a service's topic) is routed: re-keyed by instance id into the inbox
  (``stream_processors.engine.source_routing``), unless the inbox partition its instance hashes
  to has the source partition's number and is owned here, drained of earlier routed copies:
  then it is decided directly, as its routed copy would be (``stream_processors.engine.
  direct``);
- an *inbox record* is checked (``stream_processors.engine.inputs``), its instance loaded (open
  transaction's write cache, then the instance cache, then the local store, else new),
  ``decide``d, and its journal entries and commands produced; the new state is staged as the
  instance's snapshot (``stream_processors.engine.outputs``). A decision with a record too large
  for its topic is not staged: the instance is parked instead (``stream_processors.core.
  oversize``) and the input dead-lettered as ``outputs-too-large``;
- anything unreadable, keyless, too large, of a type the saga does not take, naming an
  unknown instance, or keyed by another instance than it names goes to the dead-letter topic,
  with the reason and origin in headers.

The loop (``step``) has three phases: restoring (``stream_processors.engine.recovery``: newly
assigned inbox partitions stay paused until the local store is current), consuming and deciding,
and due work (``stream_processors.engine.timers``). Every commit interval the open transaction
(``stream_processors.engine.transaction``) is committed with its staged snapshots (one per
instance, however many inputs it had) and the consumed offsets. Only after the commit succeeds
are the snapshots written to the local store with their changelog offsets. See
docs/architecture.md, "The processing contract".

The processor reaches Kafka only through ``stream_processors.kafka.clients`` (``KafkaClients``),
so tests build it on in-memory fakes (``stream_processors.kafka.fake``).

With signing keys configured (``ProcessorConfig.signing``, by default from the environment; see
``stream_processors.codecs.signing``), commands and routed events are signed, and an inbox record
without a valid signature is dead-lettered as ``bad-signature`` before it is decoded.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from stream_processors.codecs.signing import Keyring, from_environment
from stream_processors.core import limits, oversize
from stream_processors.core.decide import Decision, decide
from stream_processors.core.decision import OutgoingCommand
from stream_processors.core.instance import Instance, decode_snapshot
from stream_processors.core.model import SagaDefinition
from stream_processors.engine import heap, metrics, tracing
from stream_processors.engine.cache import InstanceCache
from stream_processors.engine.direct import DirectSources
from stream_processors.engine.flow import FlowGate
from stream_processors.engine.inputs import InboxInput, Rejected, inbox_input, source_input
from stream_processors.engine.outputs import Outputs, Unstaged
from stream_processors.engine.recovery import Recovery
from stream_processors.engine.routing import SCHEDULE
from stream_processors.engine.source_routing import SourceRouter
from stream_processors.engine.store import Slot, SnapshotStore, claim_slot, default_state_dir
from stream_processors.engine.timers import DUE_CHECK_INTERVAL, DueWork
from stream_processors.engine.transaction import (
    OpenTransaction,
    Poisoned,
    TransactionAborted,
    Transactions,
)
from stream_processors.kafka import transactions
from stream_processors.kafka.clients import (
    Closeable,
    ConfluentClients,
    Consumer,
    KafkaClients,
    Producer,
    Restorer,
    Stopping,
)
from stream_processors.kafka.reading import take
from stream_processors.kafka.topics import SagaTopics

log = logging.getLogger(__name__)

#: The longest ``step`` waits for an input (it returns at the first): how late timers and a
#: stop may be seen.
POLL_INTERVAL = 0.1
#: The same while partitions restore: restore goes on between these waits.
RESTORE_POLL = 0.01
#: On the way out (SIGTERM), the longest the last commit and each client's close may take.
SHUTDOWN_PATIENCE = 3.0
CLOSE_TIMEOUT = 2.0
WEEK_MS = 7 * 24 * 3600 * 1000
#: The cyclic garbage collector's youngest-generation threshold while the loop runs (Python's
#: default is 700). Each input allocates a hundred-odd containers (entries, instances, dicts),
#: almost all freed by reference counting, so at 700 a collection ran every few inputs and the
#: older generations, holding the instance cache, were scanned again and again: 12-16 % of the
#: CPU of the processor on in-memory Kafka (``tools/profile_engine.py``), 3 % at 10,000.
GC_THRESHOLD = 10_000


@dataclass
class ProcessorConfig:
    bootstrap: str | None = None
    commit_interval_ms: int = 100
    partitions: int = 8
    state_dir: Path | None = None
    create_topics: bool = True
    batch_size: int = 1000
    #: Once caught up with its inputs, commit when the transaction is this old (see ``step``).
    idle_commit_ms: int = 0
    #: Inputs larger than this (key, value and headers) are dead-lettered as ``too-large``.
    max_record_bytes: int = 1_000_000
    #: Longer instance ids are dead-lettered as ``instance-id-too-long`` (see limits.py).
    max_instance_id_bytes: int = 256
    cache_size: int = 50_000
    #: How long a finished instance's snapshot stays in the store (None: forever).
    retention_ms: int | None = WEEK_MS
    #: Keys to sign commands and check inbox records with (None: signing off).
    signing: Keyring | None = field(default_factory=from_environment)
    #: Decide a source event in the transaction that reads it when its instance's inbox
    #: partition is the source partition's number and is ours (``engine/direct.py``), instead
    #: of routing it through the inbox: one transaction hop less before its first decision.
    direct_sources: bool = True


class SagaProcessor:
    """Runs one saga's processing loop in this process. ``run()`` blocks until ``stop()``.

    ``run()`` is ``start()``, then ``step()`` until stopped, then ``close()``; tests on fake
    clients call them one by one.
    """

    def __init__(
        self,
        definition: SagaDefinition,
        config: ProcessorConfig | None = None,
        topics: SagaTopics | None = None,
        clock: Callable[[], float] = time.time,
        clients: KafkaClients | None = None,
    ) -> None:
        self.definition = definition
        self.config = config = config or ProcessorConfig()
        self.topics = topics or SagaTopics.for_saga(definition, config.partitions)
        self.clock = clock
        self.clients = clients or ConfluentClients(
            config.bootstrap, definition.name, config.create_topics
        )
        self._stopping = threading.Event()
        tracing.configure()  # from the OTEL_* environment: off (and free) unless it asks
        self._slot: Slot = claim_slot(config.state_dir or default_state_dir(definition.name))
        self.store = SnapshotStore(self._slot.path / "rocksdb")
        self._transactional_id = f"sagalog.{definition.name}.{self._slot.identity}"
        self._txn = OpenTransaction()
        self._poison = Poisoned()
        self._measures = metrics.SagaMetrics(definition)
        self._outputs = Outputs(
            definition.name,
            self.topics,
            config.signing,
            self._limit,
            self._producer,
            self._txn,
            self._stopping,
            self._measures,
        )
        self._cache = InstanceCache(config.cache_size)
        self._flow: FlowGate | None = None
        if definition.throttle is not None:
            partitions = self.topics.partitions
            self._flow = FlowGate(
                definition, definition.throttle, partitions, self.store, self._txn, clock
            )
            self._outputs.gate = self._flow
        self._owned: set[int] = set()  # inbox partitions assigned and restored
        #: Whether a revoke or a loss was served during the current ``take``: see ``_ours``.
        self._rebalanced = False
        self._busy = (False, False)  # restoring, counting what was restored (``_settle``)
        self._due = DueWork(definition, self.store, config.retention_ms)
        self._router = SourceRouter(
            definition,
            self.topics.inbox,
            config.signing,
            config.max_record_bytes,
            config.max_instance_id_bytes,
            self._limit,
        )
        self._direct = DirectSources(self.topics.inbox, config.direct_sources)
        self._labels = {"saga": definition.name}
        # Labelled children looked up once: ``labels()`` costs more than the increment itself.
        self._inputs_counter = metrics.INPUTS.labels(**self._labels)
        self._routed_counter = metrics.ROUTED.labels(**self._labels)
        # Set by ``start``.
        self._kafka: Transactions | None = None
        self._recovery: Recovery | None = None
        self._restorer: Restorer | None = None
        self._history: Closeable | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop())

    def run(self) -> None:
        try:
            if self.start():
                tune_gc()
                while not self._stopping.is_set():
                    self.step()
        finally:
            self.close()

    def start(self) -> bool:
        """Prepare topics and schemas and make the clients, waiting for the cluster while it is
        away; False if stopped first."""
        try:
            self._history = self.clients.prepare(self.definition, self.topics, self._stopping)
            inbox_partitions = self.clients.partition_count(self.topics.inbox)
            self._direct.partitions = inbox_partitions  # where routed copies would hash
            if self._flow is not None:  # shares of the limits: over the inbox's real count
                self._flow.repartition(inbox_partitions)
            changelog = self.clients.changelog_id(self.topics.snapshots)
            if self.store.adopt_changelog(changelog):
                log.warning("the snapshots changelog was recreated: the local store starts afresh")
            name = self.definition.name
            consumer = self._subscribed()
            # Its init_transactions fences any earlier producer with our id, aborting what it
            # left open.
            self._kafka = Transactions(
                lambda: self.clients.producer(self._transactional_id), consumer, self._stopping
            )
            self._restorer = self.clients.restorer()
            self._recovery = Recovery(
                self._restorer,
                self.store,
                self.topics.snapshots,
                self.topics.inbox,
                self.config.retention_ms,
                name,
            )
        except Stopping:
            return False
        log.info("processor %s (slot %s) started", self._transactional_id, self._slot.index)
        return True

    def _subscribed(self) -> Consumer:
        """The group's consumer, subscribed to the inbox and the sources."""
        consumer = self.clients.consumer(f"sagalog.{self.definition.name}", self._transactional_id)
        consumer.subscribe(
            [self.topics.inbox, *self.topics.sources],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        return consumer

    def _producer(self) -> Producer:
        assert self._kafka is not None, "start() first"
        return self._kafka.producer

    @property
    def consumer(self) -> Consumer:
        assert self._kafka is not None, "start() first"
        return self._kafka.consumer

    def step(self) -> None:
        """One turn of the loop: restore a chunk, consume a batch, run due work, maybe commit.

        ``take`` returns as soon as one input is there (with whatever else is fetched), so the
        wait for input adds no latency; it is bounded only so that timers, restores, a due
        commit and a stop are seen in time. Once the consumer is caught up (a batch came back
        short) there is nothing to gain by holding the open transaction until the interval
        ends, only latency: it commits once it is ``idle_commit_ms`` old (at once by default).
        Under load batches come back full, and it commits every ``commit_interval_ms``.
        """
        assert self._kafka is not None and self._recovery is not None
        config = self.config
        interval = config.commit_interval_ms / 1000
        idle = min(interval, config.idle_commit_ms / 1000)
        restoring = bool(self._recovery.pending)
        if restoring:
            restored = self._recovery.step(self.consumer)
            self._owned.update(restored)
            assert self._restorer is not None
            self._direct.restored(self.consumer, self._restorer, restored)
            self._measures.restored(restored, self.store)
            if self._flow is not None and restored:
                self._flow.restored(restored)
        self._direct.step(self.consumer, self._txn.offsets)
        self._measures.follow(self._owned, self.consumer)
        self._settle(restoring)
        try:
            self._rebalanced = False
            messages = take(self.consumer, config.batch_size, self._wait(idle))
            for message in self._ours(messages):
                self._handle(message)
            self._run_due()
            if self._txn.is_open:
                age = self._txn.age()
                caught_up = len(messages) < config.batch_size
                if age >= interval or (caught_up and age >= idle):
                    self._commit()
        except TransactionAborted as aborted:
            self._after_abort(aborted)
        except Stopping:
            self._txn.reset()  # its outcome is the broker's (transaction timeout) or the next's
            return
        except KafkaException as error:  # only the consumer's are left to reach here
            self._recreate_consumer(error)
        self._kafka.producer.poll(0)

    def _settle(self, restoring: bool) -> None:
        """The turn after restoring ended, and again when counting the restored instances
        ended, give what they freed back to the operating system (``heap``): resident memory
        then does not keep the size of the last restore."""
        busy = (restoring, self._measures.scanning)
        if any(was and not now for was, now in zip(self._busy, busy, strict=True)):
            heap.release_freed()
        self._busy = busy

    def _wait(self, idle: float) -> float:
        """How long ``step`` may wait for an input: until the open transaction or a limit's next
        release is due at most, and briefly while partitions restore or their instances are
        counted (both go on between the waits: counting a million took six minutes at the full
        wait)."""
        assert self._recovery is not None
        if self._recovery.pending or self._measures.scanning:
            return RESTORE_POLL
        wait = POLL_INTERVAL
        if self._txn.is_open:
            wait = max(0.0, min(wait, idle - self._txn.age()))
        wake_ms = None if self._flow is None else self._flow.next_wake_ms()
        if wake_ms is not None:
            # A rate's next send is due: a late wake-up would lower the rate a limit delivers.
            wait = max(0.0, min(wait, wake_ms / 1000 - self.clock()))
        return wait

    def _run_due(self) -> None:
        """Timers and retention (``stream_processors.engine.timers``) in the open transaction."""
        assert self._kafka is not None
        try:
            now = self.clock()
            self._due.run(self._owned, self._txn, self, now)
            if self._flow is not None:
                self._flow.run(self, int(now * 1000))
        except KafkaException as error:  # a produce refused (a fenced producer, say)
            self._kafka.end_badly(error)

    def close(self) -> None:
        """Commit what is open (``SHUTDOWN_PATIENCE`` at most), close everything.

        Bounded, so that SIGTERM is honoured within seconds even with the broker away: a
        commit that cannot complete is left to the broker (the next producer with our id, or
        the transaction timeout, aborts it), and a client that cannot close in time is left
        to the process's exit.
        """
        began = time.monotonic()
        try:
            if self._txn.is_open:
                self._commit(interruptible=False)
        except (TransactionAborted, Stopping):
            self._txn.reset()
        finally:
            consumers = [self._restorer, self._kafka.consumer if self._kafka else None]
            for consumer in consumers:
                if consumer is not None:
                    _bounded(consumer.close, CLOSE_TIMEOUT, "closing a consumer")
            self._measures.close()
            self.store.close()
            if self._history is not None:
                self._history.close()
            self._slot.release()
            log.info("processor stopped (%.1f s to shut down)", time.monotonic() - began)

    # -- per record --------------------------------------------------------------------------

    def begin(self) -> None:
        """Open a transaction if none is."""
        if not self._txn.is_open:
            assert self._kafka is not None
            self._kafka.begin()
            self._txn.started = time.monotonic()
            self._measures.begin()

    def _ours(self, messages: list[Message]) -> list[Message]:
        """``messages`` less those this process must not decide on now.

        A rebalance served inside the ``take`` (``poll`` may hand out a record before the
        ``consume`` that serves a revoke or a loss) makes the whole batch suspect: a record read
        before it may be of a partition no longer ours (deciding on it would write its
        instance's snapshot into a partition another processor may have restored already,
        which then never learns of the instance, its replies dead-lettered as
        ``unknown-instance``, or starts it again), and a record read after it is of the new
        assignment (a partition lost and assigned again in the same ``take`` reads from its
        committed offset). Nothing tells them apart, but the rebalance closed the open
        transaction (committed at a revoke, aborted at a loss), so the batch is dropped and
        every assigned partition read again from its committed offset: nothing is skipped and
        nothing is decided twice. Otherwise, an inbox partition not restored yet is left alone
        (``_rewind_unrestored``)."""
        if self._rebalanced:
            assert self._kafka is not None
            if messages:
                log.info("a rebalance during the read: %s inputs read again", len(messages))
            self._kafka.rewind()
            # Not read again: a consumer's error event (a fenced static member's, handed out
            # once, in the read that serves its revoke) must still be seen.
            return [m for m in messages if m.error() is not None]
        inbox, owned = self.topics.inbox, self._owned
        kept: list[Message] = []
        dropped: list[Message] = []
        for message in messages:
            partition = message.partition()
            # A source partition paused for the switch to deciding directly must not be routed.
            mine = (
                partition in owned
                if message.topic() == inbox
                else not self._direct.holds(partition or 0)
            )
            (kept if message.error() is not None or mine else dropped).append(message)
        if dropped:
            self._rewind_unrestored(dropped)
        return kept

    def _rewind_unrestored(self, dropped: list[Message]) -> None:
        """Seek an inbox partition assigned but not restored (or a source partition paused with
        it: ``engine/direct.py``) back to the first of its inputs read. (It is paused from its
        assignment to the end of its restore, so none should come; if one did, the consumer's
        position has passed it and, with nothing committed for it, it would be read again only
        after the next rebalance.)"""
        first: dict[tuple[str, int], int] = {}
        for message in dropped:
            where = (message.topic() or "", message.partition() or 0)
            first[where] = min(first.get(where, 2**63), message.offset() or 0)
        for (topic, partition), offset in first.items():
            log.warning(
                "%s[%s] read before its restore ended: back to %s", topic, partition, offset
            )
            self.consumer.seek(TopicPartition(topic, partition, offset))

    def _handle(self, message: Message) -> None:
        if not transactions.consumed(message):
            return
        self.begin()
        topic, partition = message.topic() or "", message.partition() or 0
        offset = message.offset() or 0
        self._outputs.produced = 0
        poisoned = self._poison.take((topic, partition, offset))
        try:
            if poisoned is not None:  # its produce failed midway before: dead-letter it now
                self._outputs.dead_letter(message, *poisoned)
            elif topic == self.topics.inbox:
                self._process(message, partition)
            else:
                self._source(message, partition)
        except KafkaException as error:
            self._refused(message, error)
        self._txn.consumed(topic, partition, offset)

    def _refused(self, message: Message, error: KafkaException) -> None:
        """A produce for ``message`` raised: dead-letter the input, or if some of its records
        were produced already, abort (it is dead-lettered when read again) and rewind."""
        assert self._kafka is not None
        kafka_error = error.args[0]
        if kafka_error.fatal() or kafka_error.txn_requires_abort():
            self._kafka.end_badly(error)
        reason = (
            limits.OUTPUTS_TOO_LARGE
            if kafka_error.code() == KafkaError.MSG_SIZE_TOO_LARGE
            else "produce-error"
        )
        detail = f"produce refused: {kafka_error}"
        if self._outputs.produced == 0:
            self._outputs.dead_letter(message, reason, detail)
            return
        where = (message.topic() or "", message.partition() or 0, message.offset() or 0)
        self._poison.add(where, reason, detail)
        log.error("input %s: %s after %s records; aborting", where, detail, self._outputs.produced)
        self._kafka.end_badly(error)

    def _limit(self, topic: str) -> limits.Limits:
        return self.clients.limits(topic)

    def _source(self, message: Message, partition: int) -> None:
        """A source event: re-keyed by instance id into the inbox (inside the transaction), or
        if its partition may (``engine/direct.py``: the instance's inbox partition is
        ``partition``, ours and drained) that copy decided at once instead of produced."""
        source = self._router.read(message)
        if isinstance(source, Rejected):
            self._outputs.dead_letter(message, source.reason, source.detail)
            return
        routed = self._router.copy(message, source)
        if isinstance(routed, Rejected):
            self._outputs.dead_letter(message, routed.reason, routed.detail)
            return
        if self._direct.decides(partition, source.key):  # the copy, decided instead of produced
            key, value, limit = routed.key, routed.value, self.config.max_record_bytes
            record = source.record
            checked = source_input(self.definition, record, key, value, routed.headers, limit)
            self._decide(message, partition, checked)
            return
        self._outputs.produce(
            self.topics.inbox, key=routed.key, value=routed.value, headers=routed.headers
        )
        self._routed_counter.inc()

    def _process(self, message: Message, partition: int) -> None:
        config = self.config
        checked = inbox_input(
            message,
            self.definition,
            self.topics.inbox,
            config.signing,
            config.max_record_bytes,
            config.max_instance_id_bytes,
        )
        self._decide(message, partition, checked)

    def _decide(self, message: Message, partition: int, checked: InboxInput | Rejected) -> None:
        """Decide an input (an inbox record, or a source event decided directly) and stage the
        decision; dead-letter ``message`` if it was refused or the decision refuses it."""
        if isinstance(checked, Rejected):
            self._outputs.dead_letter(message, checked.reason, checked.detail)
            return
        instance = self.load(partition, checked.instance_id)
        now_ms = int(self.clock() * 1000)
        try:
            decision = decide(self.definition, instance, checked.input, now_ms)
        except Exception as error:  # the saga's own code raised: a builder, a condition...
            self._code_failed(message, partition, checked.key, instance, error, now_ms)
            return
        self._inputs_counter.inc()
        record = checked.input.record
        if decision.refusal is not None:  # an operator's request not applied: journal why
            self._outputs.journal_alone(decision.refusal, partition, checked.key)
        if decision.rejected is not None:
            self._outputs.dead_letter(message, decision.rejected, type(record).__qualname__)
            if self._flow is not None and instance is None:
                self._flow.gone(partition, checked.instance_id)
            return
        if decision.ignored is not None:
            metrics.count_ignored(self.definition.name, decision.ignored)
            return
        unstaged = self.emit(decision, partition, checked.key, instance, now_ms)
        if self._flow is not None and unstaged is None:
            self._flow.decided(partition, checked.instance_id, instance, decision, record)
        if unstaged is not None:  # nothing of the decision was staged (the instance parked)
            detail = f"{unstaged.too_large.oversize.detail()}; {unstaged.why}"
            self._outputs.dead_letter(message, limits.OUTPUTS_TOO_LARGE, detail)

    def _code_failed(
        self,
        message: Message,
        partition: int,
        key: bytes,
        before: Instance | None,
        error: Exception,
        now_ms: int,
    ) -> None:
        """The saga's code raised on an input: never a crash loop. The input is dead-lettered
        (``saga-code-failed``) and the instance, as it was, parked with the error as its reason:
        fix the code, then ``sagas retry`` and redrive the dead letter."""
        reason = oversize.code_failed(error)
        log.error("instance %s: %s", key[:200].decode(errors="replace"), reason, exc_info=error)
        self.park(partition, key, before, reason, now_ms)
        self._outputs.dead_letter(message, oversize.SAGA_CODE_FAILED, reason)

    def park(
        self, partition: int, key: bytes, before: Instance | None, reason: str, now_ms: int
    ) -> bool:
        """Stage the parking of ``before`` with ``reason``, if it can be parked and it fits."""
        parking = oversize.park_for(self.definition, before, reason, now_ms)
        return (
            parking is not None
            and self._outputs.emit(parking, partition, key, before, now_ms) is None
        )

    def emit(
        self, decision: Decision, partition: int, key: bytes, before: Instance | None, now_ms: int
    ) -> Unstaged | None:
        """Stage a decision. If a record of it would not fit, nothing of it is staged and the
        instance, as it was ``before``, is parked instead (``stream_processors.core.oversize``),
        if there is one to park and the park fits; the caller dead-letters what it decided on."""
        too_large = self._outputs.emit(decision, partition, key, before, now_ms)
        if too_large is None:
            return None
        instance_id = key[:200].decode(errors="replace")
        parking = oversize.park(self.definition, before, too_large, now_ms)
        if parking is None and before is not None:  # parked or finished already: nothing stalls
            why = f"not parked: the instance is {before.status} already"
            return Unstaged(too_large, False, why)
        if parking is None:
            unstaged = Unstaged(too_large, False, "not parked: no instance yet")
        else:
            # The instance as it was plus one entry: it only fails to fit if it nearly did before.
            again = self._outputs.emit(parking, partition, key, before, now_ms)
            if again is None:
                log.warning("instance %s parked: %s", instance_id, too_large.reason)
                return Unstaged(too_large, True, "the instance is parked")
            unstaged = Unstaged(too_large, False, f"not parked either: {again.reason}")
        log.error("instance %s: %s; %s", instance_id, too_large.reason, unstaged.why)
        return unstaged

    def send_released(self, command: OutgoingCommand, instance: Instance) -> None:
        """Produce a command its limit held back (``stream_processors.engine.flow``)."""
        self._outputs.send_released(command, instance)

    def dead_letter_timer(self, key: bytes, timer: str, too_large: limits.Oversize) -> None:
        self._outputs.dead_letter_timer(key, timer, too_large)

    def load(self, partition: int, instance_id: str) -> Instance | None:
        """The instance as the open transaction sees it (None: none, or expired in it)."""
        slot = (partition, instance_id)
        if slot in self._txn.staged:
            return self._txn.staged[slot]
        recent = self._cache.get(slot)
        if recent is not None:
            return recent
        value = self.store.get(partition, instance_id)
        return None if value is None else decode_snapshot(value)

    # -- the transaction ---------------------------------------------------------------------

    def _commit(self, interruptible: bool = True) -> None:
        """Commit the open transaction, then write its snapshots to the local store."""
        assert self._kafka is not None
        began = time.monotonic()
        changelog_offsets: dict[int, int] = {}

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is None:
                partition, offset = message.partition() or 0, message.offset() or 0
                changelog_offsets[partition] = max(changelog_offsets.get(partition, -1), offset)

        written, index, schedules = self._txn.store_writes(self.config.retention_ms)
        # Only each partition's last snapshot needs its offset: an idempotent producer keeps a
        # partition's records in the order produced, so that one's offset is the highest. (A
        # callback per snapshot cost a Python call and a Message each: 800 per commit at load.)
        last = {row[0]: at for at, row in enumerate(written)}
        try:
            for at, ((partition, instance_id, value), due) in enumerate(
                zip(written, schedules, strict=True)
            ):
                # Encoded when its decision was checked against the limits (see ``emit``).
                self._outputs.produce(
                    self.topics.snapshots,
                    key=instance_id.encode(),
                    value=value,
                    headers=None if due is None else [(SCHEDULE, due)],
                    partition=partition,
                    on_delivery=delivered if last[partition] == at else None,
                )
        except KafkaException as error:
            self._kafka.end_badly(error)
        # Its flush serves the delivery callbacks that tell the snapshots' changelog offsets.
        patience = None if interruptible else SHUTDOWN_PATIENCE
        self._kafka.commit(self._txn.offsets, patience, interruptible)
        metrics.TRANSACTIONS.labels(outcome="committed", **self._labels).inc()
        metrics.COMMIT_SECONDS.labels(**self._labels).observe(time.monotonic() - began)
        # The commit marker follows our last snapshot in each partition (we are its only writer),
        # so the store is current up to the marker: a restart then finds nothing to read.
        self.store.write(
            written,
            {p: offset + 1 for p, offset in changelog_offsets.items()},
            index,
            self._txn.done,
        )
        self._cache.committed(self._txn.staged)
        self._measures.committed(self._txn.staged)
        if self._txn.spans:  # only ever filled with tracing on
            tracing.export(self._txn.spans)
        self._txn.reset()

    def _recreate_consumer(self, error: KafkaException) -> None:
        """After a fatal consumer error: abort what is open, forget every partition, and join
        the group again with a new consumer (same group instance id).

        A static member whose session timed out while the broker was away rejoins under a new
        member id, and its own older id is then fenced: librdkafka calls that fatal
        (``_FATAL``, "static consumer fenced"), though a new consumer is all it takes.
        """
        assert self._kafka is not None and self._recovery is not None
        self._kafka.recreations.note("consumer", str(error.args[0]))
        log.warning("recreating the consumer: %s", error.args[0])
        # Closed first: its rebalance callbacks, if it still calls any, find it is not current;
        # and the abort below rewinds the new one (nothing assigned yet), not the fenced one.
        _bounded(self._kafka.consumer.close, CLOSE_TIMEOUT, "closing a fenced consumer")
        self._kafka.consumer = self._subscribed()
        if self._txn.is_open:
            try:
                self._kafka.abort_lost()
            except TransactionAborted:
                pass  # the producer was recreated: nothing of ours is owned to restore
            except Stopping:
                pass
            self._txn.reset()
            metrics.TRANSACTIONS.labels(outcome="aborted", **self._labels).inc()
        self._recovery.abandon(self._recovery.pending)
        self._direct.reset()
        self._cache.forget(self._owned)
        if self._flow is not None:
            self._flow.forget(self._owned)
        self._owned.clear()

    def _after_abort(self, aborted: TransactionAborted) -> None:
        """Forget the aborted transaction. If the producer was recreated, the transaction it
        left may have committed after all: the store catches up with the changelog again."""
        assert self._recovery is not None
        self._txn.reset()
        metrics.TRANSACTIONS.labels(outcome="aborted", **self._labels).inc()
        if aborted.recreated:
            self._cache.forget(self._owned)
            self._recovery.mark(self.consumer, self._owned)
            self._direct.hold(self.consumer, self._owned)
            if self._flow is not None:
                self._flow.forget(self._owned)
            self._owned.clear()
        elif self._flow is not None:
            self._flow.reload()  # its state followed the aborted transaction: read it again

    # -- rebalancing (called inside ``consume``) ---------------------------------------------

    def _current(self, consumer: Consumer) -> bool:
        """Whether a rebalance callback comes from the consumer in use (not one closing)."""
        return self._kafka is not None and consumer is self._kafka.consumer

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._recovery is not None
        if not self._current(consumer):
            return
        # Assigned here rather than by the client after this returns, so that the pause below
        # applies to this assignment: the inbox partitions read nothing until restored.
        consumer.assign(partitions)
        inbox = [tp.partition for tp in partitions if tp.topic == self.topics.inbox]
        sources = sorted(
            f"{tp.topic}[{tp.partition}]" for tp in partitions if tp.topic != self.topics.inbox
        )
        log.info("assigned inbox partitions %s; source partitions %s", sorted(inbox), sources)
        self._recovery.mark(consumer, inbox)
        self._direct.assigned(consumer, partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not self._current(consumer):
            return
        # Commit while the group generation that owns these partitions is still current.
        try:
            if self._txn.is_open:
                self._commit()
        except TransactionAborted as aborted:
            log.warning("transaction aborted during revoke; the new owner redoes its inputs")
            self._after_abort(aborted)
        except Stopping:
            self._txn.reset()
        self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The partitions are already someone else's: our open transaction must not commit.
        assert self._kafka is not None
        if not self._current(consumer):
            return
        if self._txn.is_open:
            try:
                self._kafka.abort_lost()
                self._after_abort(TransactionAborted())
            except TransactionAborted as aborted:
                self._after_abort(aborted)
            except Stopping:
                self._txn.reset()
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        assert self._recovery is not None
        self._rebalanced = True
        revoked = {tp.partition for tp in partitions if tp.topic == self.topics.inbox}
        self._owned -= revoked
        self._direct.forget(self.consumer, partitions)
        if self._flow is not None:
            self._flow.forget(revoked)
        self._recovery.abandon(revoked)
        self._cache.forget(revoked)


def tune_gc() -> None:
    """Collect less often (``GC_THRESHOLD``), and leave what start-up made (modules, schemas,
    the definition) out of every collection from now on (``gc.freeze``): it lives as long as the
    process. Garbage without cycles is freed at once as ever; cycles wait a little longer."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, older, oldest)


def _bounded(call: Callable[[], object], seconds: float, what: str) -> None:
    """``call()``, given up on (left running in a daemon thread) after ``seconds``."""
    thread = threading.Thread(target=call, name=what, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        log.warning("%s took over %.0f s: left to the process's exit", what, seconds)


__all__ = [
    "DUE_CHECK_INTERVAL",
    "GC_THRESHOLD",
    "WEEK_MS",
    "ProcessorConfig",
    "SagaProcessor",
    "tune_gc",
]
