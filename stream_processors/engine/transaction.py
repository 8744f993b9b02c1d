"""The processor's open Kafka transaction: what it staged, and how it ends.

``OpenTransaction`` is everything the transaction holds that is not in Kafka yet: the instances'
new snapshots (the write cache) and their encodings, the next offsets of the inputs it consumed,
and the due-index entries (timers, expiries) it dealt with. It has one ``reset``, used after a
commit, an abort and a loss alike, so none of them can leave a field behind. ``Poisoned`` is
what outlives an aborted transaction on purpose: inputs whose produce failed midway, to be
dead-lettered when read again.

``Transactions`` ends a transaction against the clients, every blocking call short and the
whole bounded, so that neither a broker outage nor SIGTERM can hold the loop for long:

- a commit whose calls keep failing with retriable errors (the coordinator is away) is given
  ``COMMIT_PATIENCE`` seconds, then aborted;
- an abort (after ``txn_requires_abort``, or a commit given up) rewinds the consumer to its
  committed offsets, so the inputs are read again;
- a fatal producer error (a fenced epoch after the broker lost our transaction, say), or an abort
  that cannot complete, recreates the producer with the same transactional id:
  ``init_transactions`` fences the old one and ends what it left open. Whether that ended in a
  commit or an abort cannot be known here, so ``TransactionAborted.recreated`` tells the
  processor to bring its store up to the changelog again before it reads on.
  Clients recreated more than ``RECREATE_LIMIT`` times in ``RECREATE_WINDOW`` seconds are
  fenced by a live twin, not by a broker outage: that is raised, and the process exits.
- ``Stopping`` is raised out of any wait when the process is asked to stop; what was open is
  left to the broker's transaction timeout or to the next producer with the same id.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream_processors.core.instance import Instance, schedule, schedule_text
from stream_processors.engine.store import DueRef, index_entries
from stream_processors.engine.tracing import Ended
from stream_processors.kafka.clients import Consumer, Producer, Stopping
from stream_processors.kafka.transactions import REWIND_PATIENCE, rewind_stuck, seek_to_committed

log = logging.getLogger(__name__)

#: The longest any one call to the broker blocks: the stopping flag is checked between calls.
CALL_TIMEOUT = 2.0
#: How long a commit may keep retrying before the transaction is aborted instead.
COMMIT_PATIENCE = 10.0
#: How long an abort may take before the producer is recreated instead.
ABORT_PATIENCE = 4.0
#: More recreations than this within the window mean a live twin fences us: exit.
RECREATE_LIMIT = 5
RECREATE_WINDOW = 60.0
#: How often a wait for the broker says so.
SAY_EVERY = 5.0

#: (partition, instance id): where an instance lives.
Slot = tuple[int, str]


class TransactionAborted(Exception):
    """The open transaction ended without committing; the consumer was rewound.

    ``recreated``: the producer was recreated, and the transaction it left may have committed;
    the store must be brought up to the changelog before reading on.
    """

    def __init__(self, recreated: bool = False) -> None:
        super().__init__("recreated" if recreated else "aborted")
        self.recreated = recreated


#: A staged snapshot's timers' due times, when it finished, and the changelog header of both.
Schedule = tuple[list[int], int | None, bytes]


def planned(instance: Instance) -> Schedule:
    """An instance's ``Schedule``, computed once when its decision is staged."""
    due, finished = schedule(instance)
    return due, finished, schedule_text(due, finished)


@dataclass
class OpenTransaction:
    """What the open transaction staged; ``started`` is None while none is open."""

    started: float | None = None
    #: New snapshot per instance (None: expired, a tombstone), its encoding, and its schedule
    #: (when its timers are due, when it finished) with the changelog header that carries it.
    staged: dict[Slot, Instance | None] = field(default_factory=dict)
    encoded: dict[Slot, bytes] = field(default_factory=dict)
    schedules: dict[Slot, Schedule] = field(default_factory=dict)
    #: Next offset to commit per (topic, partition) consumed.
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Due-index entries dealt with: deleted from the store at commit, dealt with again if not.
    done: set[DueRef] = field(default_factory=set)
    #: Spans its decisions ended (tracing on): exported once it commits, forgotten otherwise.
    spans: list[Ended] = field(default_factory=list)
    #: Flow-control rows (``stream_processors.engine.flow``): changelog key to value (None:
    #: deleted), committed with the snapshots.
    flow: dict[Slot, bytes | None] = field(default_factory=dict)

    @property
    def is_open(self) -> bool:
        return self.started is not None

    def age(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    def stage(self, slot: Slot, instance: Instance, encoded: bytes, planned: Schedule) -> None:
        self.staged[slot] = instance
        self.encoded[slot] = encoded
        self.schedules[slot] = planned

    def tombstone(self, slot: Slot) -> None:
        self.staged[slot] = None
        self.encoded.pop(slot, None)
        self.schedules.pop(slot, None)

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        self.offsets[(topic, partition)] = offset + 1

    def deal_with(self, ref: DueRef) -> bool:
        """Mark an index entry dealt with; False if it already was in this transaction."""
        if ref in self.done:
            return False
        self.done.add(ref)
        return True

    def store_writes(
        self, retention_ms: int | None
    ) -> tuple[list[tuple[int, str, bytes | None]], list[DueRef], list[bytes | None]]:
        """The store's rows (partition, id, snapshot or None), the index entries to add, and
        each row's schedule as its changelog record carries it (None for a tombstone)."""
        written: list[tuple[int, str, bytes | None]] = []
        index: list[DueRef] = []
        schedules: list[bytes | None] = []
        for slot, instance in self.staged.items():
            partition, instance_id = slot
            if instance is None:
                written.append((partition, instance_id, None))
                schedules.append(None)
                continue
            written.append((partition, instance_id, self.encoded[slot]))
            due, finished, header = self.schedules[slot]
            index += index_entries(partition, instance_id, due, finished, retention_ms)
            schedules.append(header)
        for (partition, key), value in self.flow.items():  # flow-control rows: no schedule
            written.append((partition, key, value))
            schedules.append(None)
        return written, index, schedules

    def reset(self) -> None:
        """Forget everything: after a commit, an abort or a loss."""
        self.started = None
        self.staged.clear()
        self.encoded.clear()
        self.schedules.clear()
        self.offsets.clear()
        self.done.clear()
        self.spans.clear()
        self.flow.clear()


#: An input's place: (topic, partition, offset).
Where = tuple[str, int, int]


@dataclass
class Poisoned:
    """Inputs whose produce failed midway, with (reason, detail): dead-lettered when read again.

    Not part of the transaction on purpose: the transaction is aborted *because* of them.
    """

    inputs: dict[Where, tuple[str, str]] = field(default_factory=dict)

    def add(self, where: Where, reason: str, detail: str) -> None:
        self.inputs[where] = (reason, detail)

    def take(self, where: Where) -> tuple[str, str] | None:
        return self.inputs.pop(where, None)


@dataclass
class Recreations:
    """When clients were recreated: too many, too often, is a live twin, not an outage."""

    times: list[float] = field(default_factory=list)

    def note(self, client: str, why: str) -> None:
        now = time.monotonic()
        self.times = [t for t in self.times if now - t < RECREATE_WINDOW]
        if len(self.times) >= RECREATE_LIMIT:
            raise RuntimeError(
                f"{client} recreated {RECREATE_LIMIT} times in {RECREATE_WINDOW:.0f} s ({why}): "
                "another live process is using this process's transactional or group instance id"
            )
        self.times.append(now)


class _Helper:
    """One daemon thread that makes the loop's blocking calls, reused from call to call (a
    thread per call costs more than the calls it waits for, at a hundred commits a second)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], threading.Event] | None] | None
        self._jobs = None

    def run(self, job: Callable[[], None]) -> threading.Event:
        """Start ``job`` on the helper thread; the event is set when it has returned."""
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            threading.Thread(
                target=self._serve, args=(self._jobs,), name="sagalog-kafka-calls", daemon=True
            ).start()
        done = threading.Event()
        self._jobs.put((job, done))
        return done

    def abandon(self) -> None:
        """Leave the running job to finish alone (then its thread ends); the next gets a new
        thread."""
        if self._jobs is not None:
            self._jobs.put(None)
            self._jobs = None

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[tuple[Callable[[], None], threading.Event] | None]) -> None:
        while (item := jobs.get()) is not None:
            job, done = item
            job()
            done.set()


class _GaveUp(Exception):
    """Retriable errors for longer than the patience allowed."""


class Transactions:
    """Begins, commits and aborts the processor's transactions; recreates its producer."""

    def __init__(
        self,
        new_producer: Callable[[], Producer],
        consumer: Consumer,
        stopping: threading.Event,
    ) -> None:
        self._new_producer = new_producer
        self.consumer = consumer
        self.stopping = stopping
        self.recreations = Recreations()
        self._helper = _Helper()
        self.producer = self._initialised(new_producer())

    # -- the calls ----------------------------------------------------------------------------

    def begin(self) -> None:
        try:
            self.producer.begin_transaction()
        except KafkaException as error:
            self.end_badly(error)

    def commit(
        self,
        offsets: dict[tuple[str, int], int],
        patience: float | None = None,
        interruptible: bool = True,
    ) -> None:
        """Flush, add ``offsets`` and commit, within ``patience`` (``COMMIT_PATIENCE``); on
        failure abort or recreate (and raise ``TransactionAborted``). Not ``interruptible``
        (on the way out): it tries until its patience runs out whatever the stopping flag says,
        and a failure is only raised, the transaction left open for the broker to end."""
        deadline = time.monotonic() + (COMMIT_PATIENCE if patience is None else patience)
        positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        group = self.consumer.consumer_group_metadata()

        def send_offsets_to_transaction(timeout: float) -> None:
            self.producer.send_offsets_to_transaction(positions, group, timeout)

        try:
            self._retry(self._flush, deadline, interruptible)
            # After the flush, not before: see ``stream_processors.kafka.transactions.prepare``.
            if positions:
                self._retry(send_offsets_to_transaction, deadline, interruptible)
            self._retry(self.producer.commit_transaction, deadline, interruptible)
        except (KafkaException, _GaveUp) as error:
            if not interruptible:  # on the way out: what is open is the next producer's to end
                log.warning("commit on the way out failed (%s); left to the broker", error)
                raise TransactionAborted() from error
            self.end_badly(error)

    def end_badly(self, error: KafkaException | _GaveUp) -> None:
        """Abort (or recreate, if the error is fatal or the abort fails), rewind, and raise."""
        kafka_error = error.args[0] if isinstance(error, KafkaException) else None
        if kafka_error is not None and kafka_error.fatal():
            self.recreate(f"fatal producer error: {kafka_error}")
        log.warning("aborting transaction: %s", error)
        try:
            self._retry(self.producer.abort_transaction, time.monotonic() + ABORT_PATIENCE)
        except (KafkaException, _GaveUp) as failure:
            self.recreate(f"abort failed: {failure}")
        self.rewind()
        raise TransactionAborted() from error

    def abort_lost(self) -> None:
        """Abort after the partitions were lost: nothing to rewind to, they are not ours."""
        try:
            self._retry(self.producer.abort_transaction, time.monotonic() + ABORT_PATIENCE)
        except (KafkaException, _GaveUp) as failure:
            self.recreate(f"abort failed: {failure}")

    def recreate(self, why: str) -> None:
        """A new producer with the same transactional id (fencing the old one), the consumer
        rewound; raises ``TransactionAborted(recreated=True)``."""
        self.recreations.note("producer", why)
        log.warning("recreating the transactional producer: %s", why)
        self.producer = self._initialised(self._new_producer())
        self.rewind()
        raise TransactionAborted(recreated=True)

    def rewind(self) -> None:
        """Seek every assigned partition back to its committed offset (or the beginning).

        A consumer that cannot read them for ``REWIND_PATIENCE`` seconds is given up on with a
        fatal error (``kafka.transactions.rewind_stuck`` says why), for the caller to replace
        it; a new consumer starts from the committed offsets too.
        """
        began = time.monotonic()
        while True:
            assignment = self.consumer.assignment()
            if not assignment:
                return
            try:
                committed = self._committed(assignment)
                break
            except KafkaException as error:
                if error.args[0].fatal():  # the consumer is done for: the caller replaces it
                    raise
                self._wait_to_rewind(began, str(error))
            except _GaveUp as error:
                self._wait_to_rewind(began, str(error))
        seek_to_committed(self.consumer, committed)

    def _wait_to_rewind(self, began: float, why: str) -> None:
        if time.monotonic() - began >= REWIND_PATIENCE:
            raise rewind_stuck(why, REWIND_PATIENCE)
        self._wait(f"the committed offsets to rewind to ({why})")

    # -- waiting, bounded ---------------------------------------------------------------------

    def _committed(self, assignment: list[TopicPartition]) -> list[TopicPartition]:
        found: list[TopicPartition] = []

        def committed(timeout: float) -> None:
            found.extend(self.consumer.committed(assignment, timeout))

        self._call(committed, CALL_TIMEOUT, time.monotonic() + CALL_TIMEOUT + 1)
        return found

    def _initialised(self, producer: Producer) -> Producer:
        """``init_transactions``, retried until it answers (or the process stops)."""
        while True:
            try:
                deadline = time.monotonic() + CALL_TIMEOUT + 1
                self._call(producer.init_transactions, CALL_TIMEOUT, deadline)
                return producer
            except _GaveUp as error:
                self._wait(f"the transaction coordinator ({error})")
            except KafkaException as error:
                if error.args[0].fatal():
                    raise
                self._wait(f"the transaction coordinator ({error.args[0]})")

    def _flush(self, timeout: float) -> None:
        """``flush``, as an error while records are left (the broker did not take them)."""
        if self.producer.flush(timeout) > 0:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "flush", retriable=True))

    def _retry(
        self, call: Callable[[float], object], deadline: float, interruptible: bool = True
    ) -> None:
        """``call(timeout)`` until it succeeds; retriable errors are retried until ``deadline``
        (then ``_GiveUp``); others are raised. Checks the stopping flag between tries."""
        while True:
            remaining = deadline - time.monotonic()
            try:
                self._call(call, max(0.1, min(CALL_TIMEOUT, remaining)), deadline, interruptible)
                return
            except KafkaException as error:
                if not error.args[0].retriable():
                    raise
                if time.monotonic() >= deadline:
                    raise _GaveUp(str(error.args[0])) from error
                last = error
            if interruptible and self.stopping.is_set():
                raise Stopping() from last
            time.sleep(0.05)

    def _call(
        self,
        call: Callable[[float], object],
        timeout: float,
        deadline: float,
        interruptible: bool = True,
    ) -> None:
        """``call(timeout)``, in a helper thread the loop waits for in short slices.

        Why a thread: some transactional calls block for the producer's transaction timeout
        whatever ``timeout`` says (``send_offsets_to_transaction`` with the coordinator gone
        does), and a signal handler only runs between Python instructions. Waiting here keeps
        SIGTERM honoured (``Stopping``) and ``deadline`` kept (``_GaveUp``); a call given up on
        is left running in its daemon thread, and the next call gets a new thread.
        """
        outcome: list[BaseException | None] = []

        def job() -> None:
            try:
                call(timeout)
                outcome.append(None)
            except BaseException as error:  # handed to the waiting thread
                outcome.append(error)

        done = self._helper.run(job)
        while not done.wait(0.1):
            if interruptible and self.stopping.is_set():
                self._helper.abandon()
                raise Stopping()
            if time.monotonic() > deadline + 0.5:
                self._helper.abandon()
                raise _GaveUp(f"{getattr(call, '__name__', 'call')} still blocked at its deadline")
        if outcome[0] is not None:
            raise outcome[0]

    _said = 0.0

    def _wait(self, what: str) -> None:
        """A pause between tries of a wait that has no deadline but the stopping flag."""
        if self.stopping.is_set():
            raise Stopping()
        if time.monotonic() - self._said >= SAY_EVERY:
            log.warning("waiting for %s", what)
            self._said = time.monotonic()
        self.stopping.wait(0.2)
        if self.stopping.is_set():
            raise Stopping()
