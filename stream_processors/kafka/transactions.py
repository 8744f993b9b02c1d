"""Committing and aborting a consume-transform-produce transaction, the way librdkafka asks.

Processors and workers both consume, produce in a transaction, and commit the consumed offsets
with the consumer's group metadata (KIP-447: the group generation fences a zombie that lost its
partitions, so one transactional id per process is enough). Errors come in three kinds:
``retriable()`` ones are tried again (``CONCURRENT_TRANSACTIONS`` from
``send_offsets_to_transaction``, typically); ``txn_requires_abort()`` ones abort the
transaction, and the consumer is rewound to its committed offsets so the inputs are read again;
anything else is fatal and raised, for the process to exit and be restarted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

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


def consumed(message: Message) -> bool:
    """True for a record to process; False for a consumer event (logged); raises if fatal."""
    error = message.error()
    if error is None:
        return True
    # A fenced static member reports code _FATAL with fatal() false: stop all the same.
    if error.fatal() or error.code() == KafkaError._FATAL:
        raise KafkaException(error)
    log.warning("consumer: %s", error)
    return False


def retrying(call: Callable[[], Any], attempts: int = 20) -> None:
    """``call()``, again after a short pause while it fails with a retriable error."""
    for attempt in range(attempts):
        try:
            call()
            return
        except KafkaException as error:
            if not error.args[0].retriable() or attempt == attempts - 1:
                raise
            time.sleep(0.05)


def commit(producer: Producer, consumer: Consumer, offsets: Mapping[tuple[str, int], int]) -> None:
    """Flush, add ``offsets`` ({(topic, partition): next offset}) and commit the transaction.

    Raises ``KafkaException`` when that fails; ``abort`` decides what follows.
    """
    group = consumer.consumer_group_metadata()
    positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
    producer.flush()  # serves delivery callbacks: callers may want the offsets written
    if positions:
        retrying(lambda: producer.send_offsets_to_transaction(positions, group, 30))
    retrying(lambda: producer.commit_transaction(30))


def abort(producer: Producer, consumer: Consumer, error: KafkaException) -> None:
    """Abort after ``error`` and rewind ``consumer`` to its committed offsets; raise if fatal."""
    kafka_error = error.args[0]
    if kafka_error.fatal() or not kafka_error.txn_requires_abort():
        log.error("fatal transaction error, exiting: %s", kafka_error)
        raise error
    log.warning("aborting transaction: %s", kafka_error)
    producer.abort_transaction(30)
    rewind(consumer)


def rewind(consumer: Consumer) -> None:
    """Seek every assigned partition back to its committed offset (or the beginning)."""
    assignment = consumer.assignment()
    if assignment:
        for tp in consumer.committed(assignment, timeout=30):
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
