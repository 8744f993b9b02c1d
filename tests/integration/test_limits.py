"""No record crashes a process: oversized and undeliverable records end dead-lettered (issue 19).

Real ``sagas run`` and ``sagas worker`` processes with their DEFAULT limits get records they
cannot pass on as they are, written by a producer allowed larger records than theirs:

- on ``orders.events``: 1.2 MB; exactly the processor's input limit (its routed copy would not
  fit: ``outputs-too-large``) and one byte more (``too-large``); a 300 KB order id
  (``instance-id-too-long``);
- on the inbox: an operator cancel with a 900 KB reason, as the CLI would write it (which the
  CLI itself refuses in one line);
- on ``payments.commands``: a 10 MB command (``too-large``), and commands whose reply address is
  a missing topic (``reply-undeliverable``, redrivable to the reply topic); an invalid name is
  refused before the handler runs (``bad-reply-address``).

Each ends on its dead-letter topic with its reason and origin, cut to fit; the processes keep
running and serve orders published afterwards, and restarted they do not crash on those records.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Message, Producer

from examples.order_fulfillment.messages import MakePayment, OrderPlaced
from examples.order_fulfillment.saga import OrderFulfillment
from examples.order_fulfillment.scenario import PlannedOrder
from sagas.operator import OperatorError, dead_letters, redrive, send_action
from stream_processors.core.limits import DLQ_DROPPED_HEADERS, DLQ_TRUNCATED, record_size
from stream_processors.core.model import OperatorAction, SagaDefinition
from stream_processors.engine.routing import (
    COMMAND_ID,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    NOTE,
    REPLY_TO,
    Headers,
    command_headers,
    received_headers,
)
from stream_processors.kafka.config import producer_config
from stream_processors.kafka.topics import ensure_plain_topics
from tests.integration.saga_harness import (
    TOPICS,
    CommittedReader,
    SagaRun,
    header_of,
    set_topic_limit,
)

pytestmark = pytest.mark.kafka

LIMIT = 1_000_000  # the processor's --max-record-bytes and librdkafka's message.max.bytes
COMMANDS = "payments.commands"


def _order(order_id: str, card_token: str = "tok_ok") -> bytes:
    placed = OrderPlaced(
        order_id=order_id, customer_id="c", amount_cents=100, card_token=card_token, postcode="1"
    )
    return placed.encode()


def _exactly(key: bytes, size: int) -> bytes:
    """An OrderPlaced keyed ``key`` whose record (no headers) is ``size`` bytes."""
    token = "t" * (size - record_size(key, _order(key.decode(), "")))
    value = _order(key.decode(), token)
    while record_size(key, value) > size:  # the token's length prefix grew a byte
        token = token[:-1]
        value = _order(key.decode(), token)
    assert record_size(key, value) == size
    return value


def _wait_for(reader: CommittedReader, keys: set[bytes], timeout: float) -> dict[bytes, Message]:
    found: dict[bytes, Message] = {}
    deadline = time.monotonic() + timeout
    while not keys <= found.keys():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not dead-lettered: {sorted(k[:40] for k in keys - found.keys())}"
            )
        for message in reader.poll(0.5):
            for key in keys:
                if (message.key() or b"").startswith(key[:200]):
                    found[key] = message
    return found


def test_oversized_and_undeliverable_records_are_dead_lettered_and_nothing_crashes(
    saga: SagaRun,
) -> None:
    run = saga.run_id
    bootstrap = saga.kafka.bootstrap
    ensure_plain_topics([f"{COMMANDS}.dlq"], bootstrap)
    set_topic_limit(saga.kafka, COMMANDS, 20_000_000)
    set_topic_limit(saga.kafka, TOPICS.inbox, 2_000_000)
    worker_dlq = CommittedReader(bootstrap, f"{COMMANDS}.dlq", from_end=True)
    saga.start()
    big = Producer(
        producer_config(bootstrap, "limits-test", None, **{"message.max.bytes": 20_000_000})
    )
    produced: dict[bytes, tuple[str, int, int]] = {}

    def delivered(error: object, message: Message) -> None:
        assert error is None, error
        where = (message.topic() or "", message.partition() or 0, message.offset() or 0)
        produced[(message.key() or b"")[:200]] = where

    def send(topic: str, key: bytes, value: bytes, headers: Headers) -> bytes:
        big.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)
        return key

    # The processor's inputs, with the reason each must be dead-lettered for.
    at_limit, over = f"lim-{run}-at".encode(), f"lim-{run}-over".encode()
    long_id = f"lim-{run}-long-".encode() + b"i" * 300_000
    cancel = OperatorAction(action="cancel", by="ops", reason="r" * 900_000).encode()
    processor_cases: dict[bytes, str] = {
        send(TOPICS.sources[0], f"lim-{run}-huge".encode(), b"x" * 1_200_000, []): "too-large",
        send(TOPICS.sources[0], at_limit, _exactly(at_limit, LIMIT), []): "outputs-too-large",
        send(TOPICS.sources[0], over, _exactly(over, LIMIT + 1), []): "too-large",
        send(TOPICS.sources[0], long_id, _order(long_id.decode()), []): "instance-id-too-long",
        send(
            TOPICS.inbox,
            f"lim-{run}-cancel".encode(),
            cancel,
            [(NOTE, b"cancel by ops: " + b"r" * 900_000)],
        ): "too-large",
    }

    # The worker's commands.
    def command(name: str, reply_to: str, card_token: str = "tok_ok") -> bytes:
        order_id = f"lim-{run}-{name}"
        value = MakePayment(
            order_id=order_id, customer_id="c", amount_cents=1, card_token=card_token
        ).encode()
        command_id = f"order_fulfillment/{order_id}/payment/1"
        headers = command_headers(command_id, reply_to, order_id, "order_fulfillment")
        return send(COMMANDS, order_id.encode(), value, headers)

    missing_reply = f"lim-{run}-missing.inbox"  # an allowed address, of a topic not there
    worker_cases: dict[bytes, str] = {
        command("ten-mb", TOPICS.inbox, "t" * 10_000_000): "too-large",
        command("missing", missing_reply): "reply-undeliverable",
        command("invalid", "not a topic!"): "bad-reply-address",  # refused before the handler
    }
    assert big.flush(60) == 0

    # The CLI's library refuses the 900 KB reason in one line, before anything is sent.
    with pytest.raises(OperatorError, match=r"over the limit of \d+ bytes"):
        send_action(_saga_definition(), f"lim-{run}-cli", "cancel", "ops", "r" * 900_000, bootstrap)

    saga_letters = _wait_for(saga.dlq, set(processor_cases), timeout=60)
    worker_letters = _wait_for(worker_dlq, set(worker_cases), timeout=60)
    for key, reason in processor_cases.items():
        _assert_dead_letter(saga_letters[key], reason, produced[key[:200]])
    # What did not fit was cut, and says so: values keep their start, an oversized note is gone.
    for name, size in (("huge", 1_200_000), ("at", None), ("over", None)):
        key = f"lim-{run}-{name}".encode()
        cut = saga_letters[key]
        assert header_of(cut, DLQ_TRUNCATED) == str(
            size or len(_exactly(key, LIMIT)) + (name == "over")
        )
    cancelled = saga_letters[f"lim-{run}-cancel".encode()]
    assert cancelled.value() == cancel
    assert header_of(cancelled, DLQ_DROPPED_HEADERS) == NOTE
    for key, reason in worker_cases.items():
        letter = worker_letters[key]
        assert header_of(letter, DLQ_REASON) == reason, key[:40]
        if reason == "too-large":
            _assert_dead_letter(letter, reason, produced[key[:200]])
    missing = worker_letters[worker_cases_key(worker_cases, "missing")]
    assert header_of(missing, DLQ_TOPIC) == missing_reply  # redrive sends it to the reply topic
    assert header_of(missing, REPLY_TO) == missing_reply
    assert header_of(missing, COMMAND_ID) == f"order_fulfillment/lim-{run}-missing/payment/1"

    # Once the reply topic exists, a redrive delivers the reply there.
    ensure_plain_topics([missing_reply], bootstrap, partitions=1)
    replies = CommittedReader(bootstrap, missing_reply)
    redriven = next(
        d
        for d in dead_letters(f"{COMMANDS}.dlq", bootstrap, reason="reply-undeliverable")
        if d.key == missing.key()
    )
    assert redrive(f"{COMMANDS}.dlq", [redriven], bootstrap) == 1
    assert [m.value() for m in replies.read_to_end()] == [missing.value()]
    replies.close()

    # Everyone is still running and serves orders published afterwards; restarted, too.
    orders = saga.plan(40, seed=19)
    _assert_serving(saga, orders[:20])
    for process in list(saga.processes.started):
        process.stop()
    saga.processes.started.clear()
    saga.start()
    time.sleep(3)
    _assert_serving(saga, orders[20:])
    worker_dlq.close()


def worker_cases_key(cases: dict[bytes, str], name: str) -> bytes:
    return next(k for k in cases if k.endswith(f"-{name}".encode()))


def _saga_definition() -> SagaDefinition:
    return OrderFulfillment.definition


def _assert_dead_letter(letter: Message, reason: str, origin: tuple[str, int, int]) -> None:
    topic, partition, offset = origin
    assert header_of(letter, DLQ_REASON) == reason, (letter.key() or b"")[:60]
    assert header_of(letter, DLQ_TOPIC) == topic
    assert header_of(letter, DLQ_PARTITION) == str(partition)
    assert header_of(letter, DLQ_OFFSET) == str(offset)
    headers = received_headers(letter)
    assert record_size(letter.key(), letter.value(), headers) <= LIMIT


def _assert_serving(saga: SagaRun, orders: list[PlannedOrder]) -> None:
    def dead() -> list[str]:
        return [p.log_path.name for p in saga.processes.started if not p.running]

    assert not dead(), saga.processes.log_tails()
    saga.publish(orders)
    outcomes = saga.outcomes(orders, timeout=60)
    assert outcomes == {o.event.order_id: o.expected for o in orders}
    assert not dead(), saga.processes.log_tails()
