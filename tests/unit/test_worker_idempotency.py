"""Unit tests of what makes a worker's side effects once: keys, contexts and handled records.

Covers: the step's idempotency key and attempt derived from a command id (steps, compensations,
a handler's unbound commands, instance ids with slashes, ids not made by the engine); the
headers every command carries; the ``CommandContext`` a handler gets, from the headers or, for
older commands without them, from the command id; the handled record's encoding on
``<group>.handled`` and its decoding (incomplete records are skipped); ``HandledCommands``
(restoring one command partition's records, staging, commit, abort, forget); and
``Worker.handle`` answering a remembered command without running its handler.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Message

from examples.order_fulfillment.messages import MakePayment, PaymentCompleted
from sagas import idempotency
from sagas.idempotency import HandledCommand, HandledCommands
from sagas.worker import CommandContext, Worker, command_context
from stream_processors.core.decide import command_id, idempotency_key
from stream_processors.engine.routing import (
    ATTEMPT,
    COMMAND_ID,
    IDEMPOTENCY_KEY,
    INSTANCE,
    REPLY_TO,
    SAGA,
    Headers,
    command_headers,
    header,
)

CID = "orders/o-1/payment/3"
HANDLED = HandledCommand(CID, "orders.inbox", "o-1", b"\xc3\x01reply", "payments.commands", 5)


@pytest.mark.parametrize(
    ("cid", "expected"),
    [
        (command_id("orders", "o-1", "payment", 3), ("orders/o-1/payment", 3)),
        ("orders/o-1/payment.compensation/1", ("orders/o-1/payment.compensation", 1)),
        ("orders/o-1/#7/1", ("orders/o-1/#7", 1)),
        ("orders/a/b/c/payment/12", ("orders/a/b/c/payment", 12)),
        ("faust:o-1:payment:1", ("faust:o-1:payment:1", 1)),  # not ours: its own key
        ("orders/o-1/payment/x", ("orders/o-1/payment/x", 1)),
    ],
)
def test_the_idempotency_key_is_the_command_id_without_its_attempt(
    cid: str, expected: tuple[str, int]
) -> None:
    assert idempotency_key(cid) == expected


def test_a_compensation_has_a_key_of_its_own() -> None:
    forward, _ = idempotency_key(command_id("orders", "o-1", "payment", 1))
    undo, _ = idempotency_key(command_id("orders", "o-1", "payment.compensation", 1))
    assert forward != undo


def test_commands_carry_the_key_and_the_attempt() -> None:
    headers = command_headers(CID, "orders.inbox", "o-1", "orders")
    assert header(headers, COMMAND_ID) == CID
    assert header(headers, IDEMPOTENCY_KEY) == "orders/o-1/payment"
    assert header(headers, ATTEMPT) == "3"


def _message(headers: Headers, value: bytes = b"", topic: str = "payments.commands") -> Message:
    return Message(topic=topic, partition=5, offset=42, key=b"o-1", value=value, headers=headers)


def test_the_context_comes_from_the_headers() -> None:
    headers: Headers = [(IDEMPOTENCY_KEY, b"step-key"), (ATTEMPT, b"2"), (SAGA, b"orders")]
    context = command_context(_message(headers), CID, "o-1")
    assert context == CommandContext(
        idempotency_key="step-key",
        command_id=CID,
        attempt=2,
        instance_id="o-1",
        saga="orders",
        topic="payments.commands",
        partition=5,
        offset=42,
    )


def test_an_older_command_without_the_headers_gets_them_from_its_id() -> None:
    context = command_context(_message([(ATTEMPT, b"not a number")]), CID, "o-1")
    assert (context.idempotency_key, context.attempt, context.saga) == (
        "orders/o-1/payment",
        3,
        None,
    )


def test_a_handled_record_round_trips() -> None:
    key, value, headers = HANDLED.encode()
    assert key == CID.encode() and value == HANDLED.reply
    assert HandledCommand.decode(key, value, headers) == HANDLED
    assert HandledCommand.decode(key, value, dict(headers)) == HANDLED  # as a dict, too


@pytest.mark.parametrize(
    "drop", [REPLY_TO, INSTANCE, "sagalog.handled.topic", "sagalog.handled.partition"]
)
def test_an_incomplete_handled_record_is_skipped(drop: str) -> None:
    key, value, headers = HANDLED.encode()
    assert HandledCommand.decode(key, value, [h for h in headers if h[0] != drop]) is None
    assert HandledCommand.decode(None, value, headers) is None
    assert HandledCommand.decode(key, None, headers) is None


@pytest.fixture
def topic_records(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[int, ...]]]:
    """The handled topic as ``HandledCommands`` reads it; returns the reads: (topic, partitions)."""
    stored = [
        HANDLED,
        HandledCommand(
            "orders/o-2/payment/1", "orders.inbox", "o-2", b"r2", "payments.commands", 1
        ),
        HandledCommand("orders/o-3/label/1", "orders.inbox", "o-3", b"r3", "shipping.commands", 5),
    ]
    reads: list[tuple[str, tuple[int, ...]]] = []

    def committed_records(
        topic: str, bootstrap: Any, *, partitions: list[int]
    ) -> Iterator[Message]:
        reads.append((topic, tuple(partitions)))
        for handled in stored:
            key, value, headers = handled.encode()
            partition = handled.partition % 4
            if partition in partitions:
                yield Message(
                    topic=topic, partition=partition, key=key, value=value, headers=headers
                )

    monkeypatch.setattr(idempotency, "committed_records", committed_records)
    return reads


def test_restoring_keeps_the_records_of_one_command_partition(
    topic_records: list[tuple[str, tuple[int, ...]]],
) -> None:
    handled = HandledCommands("sagalog.worker.payments", None, partitions=4)
    assert handled.restore("payments.commands", 5) == 1
    assert topic_records == [("sagalog.worker.payments.handled", (1,))]  # 5 % 4
    assert handled.reply("payments.commands", 5, CID) == HANDLED
    assert handled.reply("payments.commands", 1, "orders/o-2/payment/1") is None  # not ours
    handled.forget("payments.commands", 5)
    assert handled.reply("payments.commands", 5, CID) is None


def test_staged_records_are_known_until_aborted_and_kept_once_committed(
    topic_records: list[tuple[str, tuple[int, ...]]],
) -> None:
    handled = HandledCommands("sagalog.worker.payments", None, partitions=4)
    handled.restore("payments.commands", 0)
    new = HandledCommand(
        "orders/o-9/payment/1", "orders.inbox", "o-9", b"r9", "payments.commands", 0
    )
    handled.stage(new)
    assert handled.reply("payments.commands", 0, new.command_id) == new
    handled.aborted()
    assert handled.reply("payments.commands", 0, new.command_id) is None
    handled.stage(new)
    handled.committed()
    assert handled.reply("payments.commands", 0, new.command_id) == new


def _payments(calls: list[str]) -> Worker:
    worker = Worker("payments-test")

    @worker.handles(MakePayment)
    def pay(command: MakePayment, context: CommandContext) -> PaymentCompleted:
        calls.append(context.idempotency_key)
        return PaymentCompleted(order_id=command.order_id, payment_id="p-1")

    return worker


def _payment_message() -> Message:
    value = MakePayment(order_id="o-1", customer_id="c", amount_cents=1, card_token="t").encode()
    return _message(command_headers(CID, "orders.inbox", "o-1", "orders"), value)


def test_a_first_command_runs_its_handler_and_is_to_be_remembered() -> None:
    calls: list[str] = []
    answer = _payments(calls).handle(_payment_message())
    assert calls == ["orders/o-1/payment"]
    assert answer.outgoing[0] == "orders.inbox" and answer.handled is not None
    assert answer.handled.reply == answer.outgoing[2]
    assert (answer.handled.topic, answer.handled.partition) == ("payments.commands", 5)


def test_a_remembered_command_is_answered_without_its_handler(
    topic_records: list[tuple[str, tuple[int, ...]]],
) -> None:
    calls: list[str] = []
    worker = _payments(calls)
    worker._handled = HandledCommands("sagalog.worker.payments", None, partitions=4)
    worker._handled.restore("payments.commands", 5)
    answer = worker.handle(_payment_message())
    assert calls == []
    assert answer.handled is None  # nothing new to remember
    assert answer.outgoing[:3] == ("orders.inbox", b"o-1", HANDLED.reply)
    assert header(answer.outgoing[3], COMMAND_ID) == CID
