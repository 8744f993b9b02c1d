"""Committing and aborting a consume-transform-produce transaction, the way librdkafka asks,
with every wait on the broker bounded: the one implementation processors and workers share.

Processors and workers both consume, produce in a transaction, and commit the consumed offsets
with the consumer's group metadata (KIP-447: the group generation fences a zombie that lost its
partitions, so one transactional id per process is enough). Errors come in three kinds:

- ``retriable()`` ones (a timeout, ``CONCURRENT_TRANSACTIONS`` from
  ``send_offsets_to_transaction``) are tried again, in calls of at most ``STEP`` seconds, until
  the caller's deadline (``COMMIT_PATIENCE`` for a commit); then ``GaveUp`` is raised, and the
  transaction is aborted;
- ``txn_requires_abort()`` ones, and a give-up, abort the transaction, and the consumer is
  rewound to its committed offsets so the inputs are read again (``abort``);
- ``fatal()`` ones, and an abort that fails, leave the producer unusable: ``abort`` raises, and
  the caller makes a new producer with the same transactional id (``initialised``), which fences
  the old one and ends what it left open, and rewinds.

``Calls`` makes the blocking calls on a helper thread that the caller waits for in short slices:
some transactional calls block for the producer's transaction timeout whatever timeout they are
given (``send_offsets_to_transaction`` with the coordinator gone does), and a signal handler only
runs between Python instructions. So a stop request raises ``Stopping`` within a fraction of a
second, leaving the transaction open for the broker to abort (``transaction.timeout.ms``) or for
the successor's ``init_transactions`` to fence (or to complete, if ``commit_transaction`` had
reached the broker): its records and its consumed offsets are committed together or not at all,
so nothing is lost or doubled. A call that does not return ``HUNG_AFTER`` seconds past its own
timeout is taken for hung (``Hung``, fatal: the producer is replaced): after a broker SIGKILL and
restart, librdkafka 2.16's ``send_offsets_to_transaction(..., 2)`` was seen blocking for minutes,
which is how a processor once stalled with its partitions.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from stream_processors.kafka.clients import Consumer, Producer, Stopping

log = logging.getLogger(__name__)

T = TypeVar("T")
P = TypeVar("P", bound=Producer)

#: Longest single blocking call to the broker, in seconds: the stop flag is looked at between.
STEP = 2.0
#: Seconds a commit's retriable errors are retried before the transaction is aborted instead.
COMMIT_PATIENCE = 10.0
#: Seconds an abort may take before the producer is replaced instead.
ABORT_PATIENCE = 4.0
#: Seconds a rewind may fail to read the committed offsets before the consumer is replaced.
REWIND_PATIENCE = 15.0
#: Seconds past its own timeout after which a call is taken for hung.
HUNG_AFTER = 5.0
#: How often a wait for the broker says that it still waits.
SAY_EVERY = 10.0
#: The pause between two tries of a call that failed with a retriable error.
_RETRY_PAUSE = 0.05
# "A previous (or conflicting) call is still in progress": after a call taken for hung, every
# later call on that producer says so. Retrying cannot cure it: the producer is unusable.
_STUCK = {KafkaError._PREV_IN_PROGRESS, KafkaError._CONFLICT}


class ConsumerFailed(KafkaException):
    """The consumer reported a fatal error (a fenced static member, say): it must be replaced."""


class GaveUp(KafkaException):
    """Retriable errors until the deadline: the transaction is to be aborted (neither fatal nor
    retriable itself: the producer is sound)."""

    def __init__(self, what: str, last: KafkaError) -> None:
        super().__init__(KafkaError(last.code(), f"{what}: still failing at its deadline: {last}"))


class Hung(KafkaException):
    """A call that did not return ``HUNG_AFTER`` seconds past its timeout (fatal)."""

    def __init__(self, what: str, waited: float) -> None:
        why = f"{what} did not return within {waited:.0f} s"
        super().__init__(KafkaError(KafkaError._TIMED_OUT, why, fatal=True))


def consumed(message: Message) -> bool:
    """True for a record to process; False for a consumer event (logged); raises
    ``ConsumerFailed`` if fatal."""
    error = message.error()
    if error is None:
        return True
    # A fenced static member reports code _FATAL with fatal() false: stop all the same.
    if error.fatal() or error.code() == KafkaError._FATAL:
        raise ConsumerFailed(error)
    log.warning("consumer: %s", error)
    return False


def _named(call: Callable[..., object]) -> str:
    return getattr(call, "__name__", "a call to the broker")


_Job = tuple[Callable[[], None], threading.Event]


class Calls:
    """A process's blocking calls to the broker, each bounded, and all given up on ``stopping``.

    The calls run on one daemon helper thread, reused from call to call (a thread per call costs
    more than the calls it waits for, at a hundred commits a second). A call given up on is left
    to finish alone in its thread; the next call gets a new thread.
    """

    def __init__(self, stopping: threading.Event | None = None) -> None:
        self.stopping = stopping
        self._jobs: queue.SimpleQueue[_Job | None] | None = None
        self._said = 0.0

    def stop_if_asked(self) -> None:
        if self.stopping is not None and self.stopping.is_set():
            raise Stopping()

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or until asked to stop (then ``Stopping``)."""
        if self.stopping is None:
            time.sleep(seconds)
        elif self.stopping.wait(seconds):
            raise Stopping()

    def bounded(self, call: Callable[[float], T], timeout: float, interruptible: bool = True) -> T:
        """``call(timeout)`` on the helper thread, waited for ``timeout + HUNG_AFTER`` seconds
        at most (then ``Hung``), and, if ``interruptible``, no longer once asked to stop."""
        outcome: list[tuple[bool, Any]] = []

        def job() -> None:
            try:
                outcome.append((True, call(timeout)))
            except BaseException as error:  # handed to the waiting thread
                outcome.append((False, error))

        done = self._run(job)
        waited = timeout + HUNG_AFTER
        deadline = time.monotonic() + waited
        while not done.wait(0.1):
            if interruptible and self.stopping is not None and self.stopping.is_set():
                self._abandon()
                raise Stopping()
            if time.monotonic() >= deadline:
                self._abandon()
                log.error("%s has not returned in %.0f s: hung", _named(call), waited)
                raise Hung(_named(call), waited)
        returned, value = outcome[0]
        if not returned:
            raise value
        result: T = value
        return result

    def retrying(
        self, call: Callable[[float], T], deadline: float, interruptible: bool = True
    ) -> T:
        """``call(timeout)``, again while it fails with a retriable error, until ``deadline``
        (``time.monotonic()``), then ``GaveUp``; any other error is raised at once, and one
        that says a hung call is still in progress is made fatal."""
        while True:
            if interruptible:
                self.stop_if_asked()
            timeout = max(0.1, min(STEP, deadline - time.monotonic()))
            try:
                return self.bounded(call, timeout, interruptible)
            except KafkaException as error:  # ``Hung`` is fatal: raised below, not retried
                kafka_error = error.args[0]
                if kafka_error.code() in _STUCK:
                    stuck = f"a hung transactional call is still in progress: {kafka_error}"
                    fatal = KafkaError(kafka_error.code(), stuck, fatal=True)
                    raise KafkaException(fatal) from error
                if not kafka_error.retriable():
                    raise
                if time.monotonic() >= deadline:
                    raise GaveUp(_named(call), kafka_error) from error
            time.sleep(_RETRY_PAUSE)

    def until_done(
        self,
        call: Callable[[float], T],
        what: str,
        errors: tuple[type[Exception], ...] = (KafkaException,),
    ) -> T:
        """``call(STEP)`` in this thread until it raises none of ``errors``: for what must
        happen before the process can go on (a new producer, a restore), while the broker may
        be down. A fatal ``KafkaException`` (but ``Hung``) is raised: trying again cannot help.
        Says what it waits for every ``SAY_EVERY`` seconds; raises ``Stopping`` when asked."""
        while True:
            self.stop_if_asked()
            try:
                return call(STEP)
            except errors as error:
                if _fatal(error) and not isinstance(error, Hung):
                    raise
                self.waiting(f"{what} ({error})")

    def waiting(self, what: str) -> None:
        """A pause in a wait for the broker, said now and then."""
        if time.monotonic() - self._said >= SAY_EVERY:
            self._said = time.monotonic()
            log.warning("waiting for %s", what)
        self.pause(0.2)

    def _run(self, job: Callable[[], None]) -> threading.Event:
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            threading.Thread(
                target=_serve, args=(self._jobs,), name="sagalog-kafka-calls", daemon=True
            ).start()
        done = threading.Event()
        self._jobs.put((job, done))
        return done

    def _abandon(self) -> None:
        if self._jobs is not None:
            self._jobs.put(None)  # the thread ends once its running job returns
            self._jobs = None


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while (item := jobs.get()) is not None:
        job, done = item
        job()
        done.set()


def _fatal(error: BaseException) -> bool:
    return isinstance(error, KafkaException) and bool(error.args[0].fatal())


def initialised(calls: Calls, producer: P) -> P:
    """``producer`` once its ``init_transactions`` answered, waiting for the broker as long as
    it takes. It fences any producer of the same transactional id (an unusable one this process
    replaces, or its predecessor's) and ends the transaction that one left open."""

    def init_transactions(timeout: float) -> None:
        calls.bounded(producer.init_transactions, timeout)

    calls.until_done(init_transactions, "the transaction coordinator")
    return producer


def _flush(producer: Producer) -> Callable[[float], None]:
    def flush(timeout: float) -> None:
        """``flush``, as a retriable error while records are left (the broker did not take
        them yet); it serves the delivery callbacks."""
        if producer.flush(timeout) > 0:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "flush", retriable=True))

    return flush


def commit(
    calls: Calls,
    producer: Producer,
    consumer: Consumer,
    offsets: Mapping[tuple[str, int], int],
    deadline: float,
    interruptible: bool = True,
    committing: Callable[[], None] | None = None,
) -> None:
    """Flush, add ``offsets`` ({(topic, partition): next offset}) and commit the transaction by
    ``deadline``. Raises ``KafkaException`` when that fails (``abort`` decides what follows),
    or ``Stopping``.

    ``committing`` is called just before ``commit_transaction``: a failure before it means the
    transaction is certainly not committed; after it, it may have been (a new producer's
    ``init_transactions`` then completes it)."""
    group = consumer.consumer_group_metadata()
    positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]

    def send_offsets_to_transaction(timeout: float) -> None:
        producer.send_offsets_to_transaction(positions, group, timeout)

    calls.retrying(_flush(producer), deadline, interruptible)
    # Offsets after the flush: sending them first, to overlap their round trips with the records'
    # delivery, made every hop slower when measured (docs/benchmarks.md, 2026-12-01), likely
    # because the transaction coordinator takes one request of a transaction at a time (an
    # AddOffsetsToTxn behind the records' AddPartitionsToTxn waits for a retry).
    if positions:
        calls.retrying(send_offsets_to_transaction, deadline, interruptible)
    if committing is not None:
        committing()
    calls.retrying(producer.commit_transaction, deadline, interruptible)


def abort(calls: Calls, producer: Producer, consumer: Consumer, error: KafkaException) -> None:
    """Abort after ``error`` and rewind ``consumer`` to its committed offsets.

    Raises ``error`` if it is fatal, or the abort's own error if the abort fails: the producer
    is then unusable, and the caller makes a new one (``initialised``). A consumer that cannot
    rewind raises ``ConsumerFailed`` (the transaction is aborted by then).
    """
    kafka_error = error.args[0]
    if kafka_error.fatal():
        log.error("fatal transaction error: %s", kafka_error)
        raise error
    log.warning("aborting transaction: %s", kafka_error)
    abort_open(calls, producer)
    rewind(calls, consumer)


def abort_open(calls: Calls, producer: Producer) -> None:
    """``abort_transaction`` within ``ABORT_PATIENCE``; raises if the producer cannot abort."""
    calls.retrying(producer.abort_transaction, time.monotonic() + ABORT_PATIENCE)


def rewind(calls: Calls, consumer: Consumer, patience: float | None = None) -> None:
    """Seek every assigned partition back to its committed offset (or the beginning): going on
    without rewinding would skip the inputs of the aborted transaction.

    Waits for the broker ``patience`` seconds (``REWIND_PATIENCE``), then raises
    ``ConsumerFailed`` (``rewind_stuck``) for the caller to replace the consumer, which starts
    from the committed offsets too.
    """
    patience = REWIND_PATIENCE if patience is None else patience
    began = time.monotonic()
    while True:
        assignment = consumer.assignment()  # again each time: a rebalance may change it
        if not assignment:
            return
        try:
            committed = calls.bounded(lambda t: consumer.committed(assignment, t), STEP)  # noqa: B023 (called at once)
            break
        except KafkaException as error:
            if error.args[0].fatal():  # the consumer is done for: the caller replaces it
                raise ConsumerFailed(error.args[0]) from error
            if time.monotonic() - began >= patience:
                raise rewind_stuck(str(error.args[0]), patience) from error
            calls.waiting(f"the committed offsets to rewind to ({error.args[0]})")
    seek_to_committed(consumer, committed)


def rewind_stuck(why: str, patience: float = REWIND_PATIENCE) -> ConsumerFailed:
    """The error of a rewind that could not read the committed offsets for ``patience`` s.

    After a broker SIGKILL, a consumer's every offset fetch was seen timing out for minutes (its
    group coordinator had moved away and back), while a new consumer of the same group read
    them at once: so the consumer is given up on, not waited for.
    """
    stuck = f"committed offsets unreadable for {patience:.0f} s ({why})"
    return ConsumerFailed(KafkaError(KafkaError._TIMED_OUT, stuck, fatal=True))


def seek_to_committed(consumer: Consumer, committed: list[TopicPartition]) -> None:
    """Seek each of ``committed``'s partitions to its offset (the beginning if none)."""
    for tp in committed:
        offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        try:
            consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as error:
            # A partition not fetched from yet starts at its committed offset anyway.
            log.debug("seek %s[%s]: %s", tp.topic, tp.partition, error)
