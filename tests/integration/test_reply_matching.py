"""Bad input that looks almost right does not change an order's outcome (issue 19, parts 2 and 5).

On the real broker, with ``sagas run`` and the workers as OS processes:

- a reply with no ``sagalog.command_id`` (a forged ``PaymentFailed``) reaching instances that
  wait for their payment is ignored (``no-command-id``): every order still completes;
- a start event published with a Kafka key other than its key field is routed by the field:
  its saga completes (its replies find it);
- an inbox record keyed by another instance than it names is dead-lettered as ``key-mismatch``;
- 3,000 records with random unknown schema fingerprints are dead-lettered as ``unknown-schema``
  while a legitimate order published after them completes (the schema history is not read for
  each of them).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest
from confluent_kafka import Message, Producer

from examples.order_fulfillment.messages import PaymentFailed
from stream_processors.codecs.avro import MAGIC
from stream_processors.engine.routing import DLQ_REASON
from stream_processors.kafka.config import producer_config
from tests.integration.saga_harness import TOPICS, SagaRun, header_of

pytestmark = pytest.mark.kafka

STORM = 3_000


def _dead_letters(saga: SagaRun, wanted: dict[str, int], timeout: float = 90) -> list[Message]:
    """This run's dead letters, once ``wanted[prefix]`` of those keyed ``prefix...`` are in."""
    letters: list[Message] = []

    def keyed(prefix: str) -> list[Message]:
        return [m for m in letters if (m.key() or b"").startswith(prefix.encode())]

    deadline = time.monotonic() + timeout
    while any(len(keyed(p)) < n for p, n in wanted.items()):
        assert time.monotonic() < deadline, f"{wanted}?\n{saga.processes.log_tails()}"
        letters += saga.dlq.read_to_end()
    return letters


def test_replies_without_command_ids_wrong_keys_and_unknown_schemas_do_not_change_outcomes(
    saga: SagaRun,
) -> None:
    orders = saga.plan(7, seed=19, failures=0.0)
    waiting, rekeyed, late = orders[:5], orders[5], orders[6]
    assert {o.expected for o in orders} == {"completed"}
    processor = saga.start_processor()  # no workers yet: the orders wait for their payment
    saga.publish(waiting)
    producer = Producer(producer_config(saga.kafka.bootstrap, "reply-matching-test"))

    def produce(topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value)
                return
            except BufferError:
                producer.poll(0.1)

    # A start event whose Kafka key is not its key field: routed by the field.
    produce(TOPICS.sources[0], f"dlq-{saga.run_id}-rekeyed", rekeyed.event.encode())
    assert producer.flush(30) == 0
    started = {o.event.order_id for o in orders[:6]}
    deadline = time.monotonic() + 90
    while started - saga.journal.entries.keys():
        assert time.monotonic() < deadline, f"not started\n{saga.processes.log_tails()}"
        saga.journal._take(saga.journal.reader.poll(0.5))

    # A payment failure with no command id for each waiting instance: ignored.
    for order in orders[:6]:
        order_id = order.event.order_id
        produce(TOPICS.inbox, order_id, PaymentFailed(order_id=order_id, reason="forged").encode())
    # A start event in the inbox keyed by another instance than it names.
    mismatched = replace(late.event, order_id=f"{saga.prefix}mismatch")
    produce(TOPICS.inbox, f"dlq-{saga.run_id}-mismatch", mismatched.encode())
    # A storm of records with random unknown fingerprints, then a legitimate order.
    for n in range(STORM):
        produce(TOPICS.sources[0], f"dlq-{saga.run_id}-fp-{n}", MAGIC + os.urandom(8) + b"\x00")
    assert producer.flush(60) == 0
    saga.publish([late])
    saga.processes.workers()

    assert saga.outcomes(orders) == {o.event.order_id: "completed" for o in orders}
    assert processor.metric("sagalog_inputs_ignored_total", reason="no-command-id") >= 6

    mismatch, fingerprints = f"dlq-{saga.run_id}-mismatch", f"dlq-{saga.run_id}-fp-"
    letters = _dead_letters(saga, {mismatch: 1, fingerprints: STORM})
    [letter] = [m for m in letters if m.key() == mismatch.encode()]
    assert header_of(letter, DLQ_REASON) == "key-mismatch"
    saga.journal.catch_up()
    assert mismatched.order_id not in saga.journal.entries  # never started anywhere

    storm = [m for m in letters if (m.key() or b"").startswith(fingerprints.encode())]
    assert len(storm) == STORM
    assert {header_of(m, DLQ_REASON) for m in storm} == {"unknown-schema"}
    assert processor.metric("sagalog_dead_letters_total", reason="unknown-schema") >= STORM
