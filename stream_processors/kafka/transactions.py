"""Committing and aborting a consume-transform-produce transaction, the way librdkafka asks.

Processors and workers both consume, produce in a transaction, and commit the consumed offsets
with the consumer's group metadata (KIP-447: the group generation fences a zombie that lost its
partitions, so one transactional id per process is enough). Errors come in three kinds:
``retriable()`` ones (a timeout, ``CONCURRENT_TRANSACTIONS`` from ``send_offsets_to_transaction``)
are tried again, in short calls, for at most ``PATIENCE`` seconds in all; ``txn_requires_abort()``
ones, and a retriable one that outlived that patience, abort the transaction, and the consumer is
rewound to its committed offsets so the inputs are read again; ``fatal()`` ones, and an abort
that fails, leave the producer unusable: ``abort`` raises, and the caller either exits (to be
restarted) or makes a new producer with the same transactional id (``new_producer``), which
fences the old one and aborts what it left open, and rewinds.

A transactional call that does not return ``HUNG_AFTER`` seconds past its own timeout is taken
for hung, and reported as a fatal error (the producer is replaced): after a broker SIGKILL and
restart, librdkafka 2.16's ``send_offsets_to_transaction(..., 2)`` was seen blocking for
minutes, which is how a processor stalled with its partitions. The calls run in a thread of
their own so that the caller can stop waiting.

Every wait on the broker is cut into calls of at most ``STEP`` seconds with the caller's
``stopping`` flag looked at between them: a process asked to stop during an outage raises
``Stopped`` within a few seconds, leaving its transaction open for the broker to abort
(``transaction.timeout.ms``) or its successor's ``init_transactions`` to fence (or to complete,
if ``commit_transaction`` had reached the broker): the transaction's records and its consumed
offsets are committed together or not at all, so nothing is lost or doubled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

log = logging.getLogger(__name__)

#: Longest single blocking call to the broker, in seconds: the stop flag is looked at between.
STEP = 2.0
#: Seconds a retriable error is retried before the transaction is given up (aborted).
PATIENCE = 20.0
#: Seconds a rewind may fail to read the committed offsets before the consumer is replaced.
REWIND_PATIENCE = 15.0
#: Seconds past its own timeout after which a transactional call is taken for hung.
HUNG_AFTER = 5.0
# "A previous (or conflicting) call is still in progress": after a call taken for hung, every
# later call on that producer says so. Retrying cannot cure it: the producer is unusable.
_STUCK = {KafkaError._PREV_IN_PROGRESS, KafkaError._CONFLICT}


class Stopped(Exception):
    """The process was asked to stop while it waited on the broker."""


class ConsumerFailed(KafkaException):
    """The consumer reported a fatal error (a fenced static member, say): it must be replaced."""


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


def _stop_if_asked(stopping: threading.Event | None) -> None:
    if stopping is not None and stopping.is_set():
        raise Stopped()


def _pause(stopping: threading.Event | None, seconds: float) -> None:
    if stopping is None:
        time.sleep(seconds)
    else:
        stopping.wait(seconds)


def retrying(
    call: Callable[[float], Any],
    stopping: threading.Event | None = None,
    patience: float = PATIENCE,
) -> Any:
    """``call(timeout)``, again while it fails with a retriable error, for ``patience`` seconds
    in all; each call gets at most ``STEP`` seconds. Raises ``Stopped`` once ``stopping`` is set,
    or the last error once the patience is spent."""
    deadline = time.monotonic() + patience
    while True:
        _stop_if_asked(stopping)
        try:
            return _within(call, max(0.1, min(STEP, deadline - time.monotonic())), stopping)
        except KafkaException as error:
            if error.args[0].code() in _STUCK:
                stuck = f"a hung transactional call is still in progress: {error.args[0]}"
                raise KafkaException(KafkaError(error.args[0].code(), stuck, fatal=True)) from error
            if not error.args[0].retriable() or time.monotonic() >= deadline:
                raise
            _pause(stopping, 0.05)


def _within(call: Callable[[float], Any], timeout: float, stopping: threading.Event | None) -> Any:
    """``call(timeout)`` in a thread of its own, waited for ``timeout + HUNG_AFTER`` seconds at
    most (and no longer once ``stopping`` is set); a call that does not return by then raises a
    fatal error, for the caller to replace the producer."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call(timeout)))
        except BaseException as error:  # handed to the caller's thread
            outcome.append((False, error))

    thread = threading.Thread(target=run, name="sagalog-transaction-call", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout + HUNG_AFTER
    while not outcome:
        thread.join(0.1)
        if outcome:
            break
        _stop_if_asked(stopping)
        if time.monotonic() >= deadline:
            log.error("a transactional call has not returned in %.0f s: hung", timeout + HUNG_AFTER)
            hung = f"a transactional call did not return within {timeout + HUNG_AFTER:.0f} s"
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, hung, fatal=True))
    returned, value = outcome[0]
    if not returned:
        raise value
    return value


def until_done(
    call: Callable[[float], Any],
    what: str,
    stopping: threading.Event | None,
    errors: tuple[type[Exception], ...] = (KafkaException,),
) -> Any:
    """``call(timeout)`` until it raises none of ``errors``: for what must happen before the
    process can go on (rewinding, a new producer, a restore), while the broker may be down.
    Logs every ~10 s; raises ``Stopped`` once ``stopping`` is set."""
    began = time.monotonic()
    said = began
    while True:
        _stop_if_asked(stopping)
        try:
            return call(STEP)
        except errors as error:
            if time.monotonic() - said >= 10:
                said = time.monotonic()
                log.warning("%s: still failing after %.0f s: %s", what, said - began, error)
            _pause(stopping, 0.2)


def flush(producer: Producer, stopping: threading.Event | None = None) -> None:
    """Wait until every record produced is acknowledged or has failed (its failure then fails
    the commit). The transactional producer gives up on a record after ``transaction.timeout.ms``
    (``message.timeout.ms`` cannot be longer), so this ends during an outage too."""
    while producer.flush(STEP) > 0:
        _stop_if_asked(stopping)


def commit(
    producer: Producer,
    consumer: Consumer,
    offsets: Mapping[tuple[str, int], int],
    stopping: threading.Event | None = None,
) -> None:
    """Flush, add ``offsets`` ({(topic, partition): next offset}) and commit the transaction.

    Raises ``KafkaException`` when that fails (``abort`` decides what follows), or ``Stopped``.
    """
    prepare(producer, consumer, offsets, stopping)
    retrying(producer.commit_transaction, stopping)


def prepare(
    producer: Producer,
    consumer: Consumer,
    offsets: Mapping[tuple[str, int], int],
    stopping: threading.Event | None = None,
) -> None:
    """The part of ``commit`` before ``commit_transaction``: if it fails, the transaction is
    certainly not committed; once ``commit_transaction`` has been called and failed, it may
    have been (a new producer's ``init_transactions`` then completes it)."""
    group = consumer.consumer_group_metadata()
    positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
    flush(producer, stopping)  # serves delivery callbacks: callers may want the offsets written
    # Offsets after the flush: sending them first, to overlap their round trips with the records'
    # delivery, made every hop slower when measured (docs/benchmarks.md, 2026-12-01), likely
    # because the transaction coordinator takes one request of a transaction at a time (an
    # AddOffsetsToTxn behind the records' AddPartitionsToTxn waits for a retry).
    if positions:
        retrying(lambda t: producer.send_offsets_to_transaction(positions, group, t), stopping)


def abort(
    producer: Producer,
    consumer: Consumer,
    error: KafkaException,
    stopping: threading.Event | None = None,
) -> None:
    """Abort after ``error`` and rewind ``consumer`` to its committed offsets.

    Raises ``error`` if it is fatal, or the abort's own error if the abort fails: the producer
    is then unusable, and the caller makes a new one (``new_producer``) or exits.
    """
    kafka_error = error.args[0]
    if kafka_error.fatal():
        log.error("fatal transaction error: %s", kafka_error)
        raise error
    log.warning("aborting transaction: %s", kafka_error)
    retrying(producer.abort_transaction, stopping)
    rewind(consumer, stopping)


def new_producer(settings: Mapping[str, Any], stopping: threading.Event | None = None) -> Producer:
    """A transactional producer ready to begin, waiting for the broker as long as it takes.

    Its ``init_transactions`` fences any producer of the same transactional id (an unusable one
    this process replaces, or its predecessor's) and aborts the transaction it left open.
    """
    producer = Producer(dict(settings))
    until_done(producer.init_transactions, "initialising the transactional producer", stopping)
    return producer


def rewind(
    consumer: Consumer,
    stopping: threading.Event | None = None,
    patience: float | None = None,
) -> None:
    """Seek every assigned partition back to its committed offset (or the beginning): going on
    without rewinding would skip the inputs of the aborted transaction.

    Waits for the broker ``patience`` seconds (``REWIND_PATIENCE``), then raises
    ``ConsumerFailed`` (``rewind_stuck``) for the caller to replace the consumer, which starts
    from the committed offsets too.
    """
    assignment = consumer.assignment()
    if not assignment:
        return
    patience = REWIND_PATIENCE if patience is None else patience
    began = time.monotonic()
    said = began
    while True:
        _stop_if_asked(stopping)
        try:
            committed = consumer.committed(assignment, timeout=STEP)
            break
        except KafkaException as error:
            if error.args[0].fatal():
                raise ConsumerFailed(error.args[0]) from error
            if time.monotonic() - began >= patience:
                raise rewind_stuck(str(error.args[0]), patience) from error
            if time.monotonic() - said >= 10:
                said = time.monotonic()
                log.warning("rewinding the consumer: still failing: %s", error.args[0])
            _pause(stopping, 0.2)
    seek_to_committed(consumer, committed)


def rewind_stuck(why: str, patience: float = REWIND_PATIENCE) -> ConsumerFailed:
    """The error of a rewind that could not read the committed offsets for ``patience`` s.

    After a broker SIGKILL, a consumer's every offset fetch was seen timing out for minutes (its
    group coordinator had moved away and back), while a new consumer of the same group read
    them at once: so the consumer is given up on, not waited for.
    """
    stuck = f"committed offsets unreadable for {patience:.0f} s ({why})"
    return ConsumerFailed(KafkaError(KafkaError._TIMED_OUT, stuck, fatal=True))


class Seeking(Protocol):
    """What ``seek_to_committed`` needs of a consumer (a real one or the processor's)."""

    def seek(self, partition: TopicPartition, /) -> None: ...


def seek_to_committed(consumer: Seeking, committed: list[TopicPartition]) -> None:
    """Seek each of ``committed``'s partitions to its offset (the beginning if none)."""
    for tp in committed:
        offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        try:
            consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as error:
            # A partition not fetched from yet starts at its committed offset anyway.
            log.debug("seek %s[%s]: %s", tp.topic, tp.partition, error)
