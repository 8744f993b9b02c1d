"""Forged commands and replies change no outcome: signing, and the topics workers reply to.

The order saga runs as real ``sagas`` processes on the real broker. Command ids are predictable
(``saga/instance/step/attempt``), so whoever can write the inbox or a command topic can name the
right one. With signing keys given to the processor and the workers (``SAGALOG_SIGNING_KEYS``):

- a forged ``PaymentCompleted`` carrying the right command id (unsigned, or signed with a key
  the engine does not have) for orders whose card is declined is dead-lettered as
  ``bad-signature``, and those orders still fail; a forged ``CommandFailed`` for orders that
  pay is dead-lettered too, and no second payment attempt is sent;
- a forged ``MakePayment`` with a command id the saga has not used yet is dead-lettered by the
  payments worker as ``bad-signature`` without being remembered: when the order comes, its real
  command with that id is handled and the order completes.

Without signing, a worker still answers only to the topics it allows (``*.inbox`` by default):
a forged command whose reply address is the saga's snapshots changelog is dead-lettered as
``bad-reply-address``, the changelog gets nothing, and a processor restarted afterwards
restores and runs.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from dataclasses import replace

import pytest
from confluent_kafka import Message, Producer

from examples.order_fulfillment.messages import MakePayment, PaymentCompleted
from examples.order_fulfillment.scenario import PlannedOrder, plan_orders
from examples.order_fulfillment.services import DECLINED_CARD
from sagas.idempotency import recorded_replies
from stream_processors.codecs.records import decode_record
from stream_processors.codecs.signing import KEYS_VARIABLE, Keyring, Purpose, SigningKey, signed
from stream_processors.core.decide import command_id
from stream_processors.core.journal import Kind
from stream_processors.core.model import CommandFailed
from stream_processors.engine.routing import (
    DLQ_DETAIL,
    DLQ_REASON,
    Headers,
    command_headers,
    reply_headers,
)
from stream_processors.kafka.config import producer_config
from stream_processors.kafka.topics import ensure_plain_topics
from tests.integration.saga_harness import TOPICS, CommittedReader, SagaRun, header_of, wait_for_log

pytestmark = pytest.mark.kafka

SAGA = TOPICS.saga
PAYMENTS_DLQ = "payments.commands.dlq"
SIGNING_ENV = {
    KEYS_VARIABLE: f"it-1:{base64.b64encode(b'integration-test-secret-32-bytes').decode()}"
}
#: Someone else's key under the engine's key id: its signatures must not pass.
ATTACKER = Keyring((SigningKey("it-1", b"attacker-has-a-different-secret!"),))


def _produce(bootstrap: str, records: Iterable[tuple[str, bytes, bytes, Headers]]) -> None:
    producer = Producer(producer_config(bootstrap, "saga-test-forger"))
    for topic, key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=headers)
    assert producer.flush(30) == 0


def _dead_letters(
    reader: CommittedReader, keys: set[bytes], timeout: float = 60
) -> dict[bytes, Message]:
    """The dead letters of ``keys`` (one each), waiting until all have arrived."""
    found: dict[bytes, Message] = {}
    deadline = time.monotonic() + timeout
    while not keys <= found.keys():
        if time.monotonic() > deadline:
            raise AssertionError(f"dead letters of {sorted(keys - found.keys())} did not arrive")
        for message in reader.poll(0.5):
            if message.key() in keys:
                assert message.key() not in found, f"{message.key()!r} dead-lettered twice"
                found[message.key() or b""] = message
    return found


def _wait_for_payment_commands(saga: SagaRun, orders: list[PlannedOrder]) -> None:
    """Until each order's first payment command is journaled as sent."""
    wanted = {o.event.order_id for o in orders}
    deadline = time.monotonic() + 60
    while True:
        saga.journal.catch_up()
        sent = {
            instance
            for instance, entries in saga.journal.entries.items()
            if any(e.kind == Kind.COMMAND_SENT.value and e.step == "payment" for e in entries)
        }
        if wanted <= sent:
            return
        assert time.monotonic() < deadline, f"no payment command for {sorted(wanted - sent)}"
        time.sleep(0.2)


def _worker_serving(saga: SagaRun, name: str) -> None:
    process = saga.processes.worker(name)
    wait_for_log(process, lambda text: f"worker {name} serving" in text, 60, "serving")


def test_forged_replies_with_the_right_command_id_change_no_outcome(saga: SagaRun) -> None:
    saga.processes.env.update(SIGNING_ENV)
    declined = plan_orders(3, payment_failure_rate=1.0, shipping_failure_rate=0, run_id=saga.run_id)
    paying = plan_orders(2, 0, 0, seed=7, run_id=saga.run_id)
    paying = [  # other order ids than the declined ones (both plans number from 0)
        PlannedOrder(replace(o.event, order_id=o.event.order_id + "-p"), o.expected) for o in paying
    ]
    assert all(o.event.card_token == DECLINED_CARD for o in declined)
    saga.start_processor()
    _worker_serving(saga, "shipping")  # payments only once the forgeries are dealt with
    saga.publish([*declined, *paying])
    _wait_for_payment_commands(saga, [*declined, *paying])

    forged = []
    for number, order in enumerate(declined):
        order_id = order.event.order_id
        value = PaymentCompleted(order_id=order_id, payment_id="forged").encode()
        headers = reply_headers(command_id(SAGA, order_id, "payment", 1))
        if number == 0:  # signed, but with a key the engine does not have
            headers = signed(
                ATTACKER, Purpose.INBOX, TOPICS.inbox, order_id.encode(), value, headers
            )
        forged.append((TOPICS.inbox, order_id.encode(), value, headers))
    for order in paying:
        order_id = order.event.order_id
        value = CommandFailed(error="ConnectionError", message="forged").encode()
        headers = reply_headers(command_id(SAGA, order_id, "payment", 1))
        forged.append((TOPICS.inbox, order_id.encode(), value, headers))
    _produce(saga.kafka.bootstrap, forged)

    letters = _dead_letters(saga.dlq, {key for _, key, _, _ in forged})
    assert {header_of(m, DLQ_REASON) for m in letters.values()} == {"bad-signature"}
    assert "does not match" in (header_of(letters[forged[0][1]], DLQ_DETAIL) or "")
    assert "no sagalog.signature" in (header_of(letters[forged[1][1]], DLQ_DETAIL) or "")

    _worker_serving(saga, "payments")
    orders = [*declined, *paying]
    assert saga.outcomes(orders) == {o.event.order_id: o.expected for o in orders}
    ids = saga.committed_command_ids()
    for order in orders:  # one payment attempt each: the forged CommandFailed retried nothing
        assert command_id(SAGA, order.event.order_id, "payment", 2) not in ids
    saga.journal.catch_up()
    for order in orders:
        accepted = [
            e
            for e in saga.journal.entries[order.event.order_id]
            if e.kind == Kind.INPUT_ACCEPTED.value
        ]
        assert [e.step for e in accepted].count("payment") == 1


def test_a_forged_command_with_a_future_id_does_not_poison_the_worker(saga: SagaRun) -> None:
    saga.processes.env.update(SIGNING_ENV)
    ensure_plain_topics([PAYMENTS_DLQ], saga.kafka.bootstrap)
    worker_dlq = CommittedReader(saga.kafka.bootstrap, PAYMENTS_DLQ, from_end=True)
    try:
        [order] = plan_orders(1, 0, 0, seed=11, run_id=saga.run_id)
        order_id = order.event.order_id
        future = command_id(SAGA, order_id, "payment", 1)
        saga.start_processor()
        for name in ("payments", "shipping"):
            _worker_serving(saga, name)
        value = MakePayment(
            order_id=order_id, customer_id="c", amount_cents=1, card_token=DECLINED_CARD
        ).encode()
        headers = command_headers(future, TOPICS.inbox, order_id, SAGA)
        _produce(saga.kafka.bootstrap, [("payments.commands", order_id.encode(), value, headers)])
        [letter] = _dead_letters(worker_dlq, {order_id.encode()}).values()
        assert header_of(letter, DLQ_REASON) == "bad-signature"
        assert future not in recorded_replies("sagalog.worker.payments", saga.kafka.bootstrap)

        saga.publish([order])  # the real command with that id: handled, not answered from memory
        assert saga.outcomes([order]) == {order_id: "completed"}
        reply = recorded_replies("sagalog.worker.payments", saga.kafka.bootstrap)[future]
        assert isinstance(decode_record(reply), PaymentCompleted)
    finally:
        worker_dlq.close()


def test_a_command_replying_to_the_snapshots_topic_is_dead_lettered(saga: SagaRun) -> None:
    ensure_plain_topics([PAYMENTS_DLQ], saga.kafka.bootstrap)
    worker_dlq = CommittedReader(saga.kafka.bootstrap, PAYMENTS_DLQ, from_end=True)
    forged_key = f"order-{saga.run_id}-forged".encode()
    snapshots = CommittedReader(
        saga.kafka.bootstrap, TOPICS.snapshots, from_end=True, keep=lambda m: m.key() == forged_key
    )
    try:
        processor = saga.start_processor()
        _worker_serving(saga, "payments")
        value = MakePayment(
            order_id=forged_key.decode(), customer_id="c", amount_cents=1, card_token="t"
        ).encode()
        headers = command_headers(
            command_id(SAGA, forged_key.decode(), "payment", 1),
            TOPICS.snapshots,
            forged_key.decode(),
            SAGA,
        )
        _produce(saga.kafka.bootstrap, [("payments.commands", forged_key, value, headers)])
        [letter] = _dead_letters(worker_dlq, {forged_key}).values()
        assert header_of(letter, DLQ_REASON) == "bad-reply-address"
        assert snapshots.read_to_end() == []

        assert processor.stop() == 0
        _worker_serving(saga, "shipping")
        restarted = saga.start_processor()
        [order] = plan_orders(1, 0, 0, seed=13, run_id=saga.run_id)
        saga.publish([order])
        assert saga.outcomes([order]) == {order.event.order_id: "completed"}
        assert restarted.running
    finally:
        worker_dlq.close()
        snapshots.close()
