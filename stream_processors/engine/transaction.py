"""The processor's open Kafka transaction: what it staged, and how it ends.

``OpenTransaction`` is everything the transaction holds that is not in Kafka yet: the instances'
new snapshots (the write cache) and their encodings, the next offsets of the inputs it consumed,
and the due-index entries (timers, expiries) it dealt with. It has one ``reset``, used after a
commit, an abort and a loss alike, so none of them can leave a field behind. ``Poisoned`` is
what outlives an aborted transaction on purpose: inputs whose produce failed midway, to be
dead-lettered when read again.

``Transactions`` ends a transaction against the clients through
``stream_processors.kafka.transactions`` (the calls, their bounds, the abort and the rewind, the
worker's too), so that neither a broker outage nor SIGTERM can hold the loop for long:

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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaException

from stream_processors.core.instance import Instance, schedule, schedule_text
from stream_processors.engine.store import DueRef, index_entries
from stream_processors.engine.tracing import Ended
from stream_processors.kafka import transactions
from stream_processors.kafka.clients import Consumer, Producer

log = logging.getLogger(__name__)

#: More recreations than this within the window mean a live twin fences us: exit.
RECREATE_LIMIT = 5
RECREATE_WINDOW = 60.0

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


class Transactions:
    """Begins, commits and aborts the processor's transactions; recreates its producer.

    The calls, their bounds and the abort's rewind are ``stream_processors.kafka.transactions``
    (the worker's too); what is the processor's own is what follows a failure: a fatal error or
    a failed abort recreates the producer, and the processor learns whether to catch its store
    up (``TransactionAborted.recreated``)."""

    def __init__(
        self,
        new_producer: Callable[[], Producer],
        consumer: Consumer,
        stopping: threading.Event,
    ) -> None:
        self._new_producer = new_producer
        self.consumer = consumer
        self.recreations = Recreations()
        self._calls = transactions.Calls(stopping)
        self.producer = transactions.initialised(self._calls, new_producer())

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
        patience = transactions.COMMIT_PATIENCE if patience is None else patience
        deadline = time.monotonic() + patience
        try:
            transactions.commit(
                self._calls, self.producer, self.consumer, offsets, deadline, interruptible
            )
        except KafkaException as error:
            if not interruptible:  # on the way out: what is open is the next producer's to end
                log.warning("commit on the way out failed (%s); left to the broker", error)
                raise TransactionAborted() from error
            self.end_badly(error)

    def end_badly(self, error: KafkaException) -> None:
        """Abort (or recreate, if the error is fatal or the abort fails), rewind, and raise."""
        if error.args[0].fatal():
            self.recreate(f"fatal producer error: {error.args[0]}")
        try:
            transactions.abort(self._calls, self.producer, self.consumer, error)
        except transactions.ConsumerFailed:
            raise  # aborted, but the consumer cannot rewind: the processor replaces it
        except KafkaException as failure:
            self.recreate(f"abort failed: {failure.args[0]}")
        raise TransactionAborted() from error

    def abort_lost(self) -> None:
        """Abort after the partitions were lost: nothing to rewind to, they are not ours."""
        try:
            transactions.abort_open(self._calls, self.producer)
        except KafkaException as failure:
            self.recreate(f"abort failed: {failure.args[0]}")

    def recreate(self, why: str) -> None:
        """A new producer with the same transactional id (fencing the old one), the consumer
        rewound; raises ``TransactionAborted(recreated=True)``."""
        self.recreations.note("producer", why)
        log.warning("recreating the transactional producer: %s", why)
        self.producer = transactions.initialised(self._calls, self._new_producer())
        self.rewind()
        raise TransactionAborted(recreated=True)

    def rewind(self) -> None:
        """Seek every assigned partition back to its committed offset; a consumer that cannot
        read them is given up on (``ConsumerFailed``, see ``kafka.transactions.rewind``)."""
        transactions.rewind(self._calls, self.consumer)
