"""A decision too large for Kafka parks its instance, loudly (``stream_processors.core.oversize``).

On the in-memory broker with topic limits set per test: a command, a journal entry or a snapshot
over its topic's limit leaves the input on the dead-letter topic (``outputs-too-large``) *and*
the instance parked (``needs_attention``) with a reason naming the record and its size, written
in the same transaction; an operator's retry then picks the instance up. When there is nothing
to park (a new instance) or the park itself would not fit, the input is only dead-lettered.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import Message

from examples.order_fulfillment.messages import OrderPlaced, PaymentCompleted
from examples.order_fulfillment.saga import OrderFulfillment
from sagas.testing import SagaTest
from stream_processors.core import oversize
from stream_processors.core.instance import Instance, Status, StepStatus, decode_snapshot
from stream_processors.core.journal import JournalEntry, Kind
from stream_processors.core.limits import BATCH_OVERHEAD, Limits, Oversize, record_size
from stream_processors.core.model import OperatorAction
from stream_processors.engine.routing import (
    COMMAND_ID,
    DLQ_DETAIL,
    DLQ_REASON,
    NOTE,
    header,
    received_headers,
    reply_headers,
)
from tests.unit.processor_rig import PAYMENTS, SAGA, SOURCE, Rig, order

SHIPPING = "shipping.commands"


def _limit(rig: Rig, topic: str, max_record_bytes: int) -> None:
    """The topic's ``max.message.bytes`` set so that records up to ``max_record_bytes`` fit."""
    rig.clients.topic_limits[topic] = Limits(topic_max_bytes=max_record_bytes + BATCH_OVERHEAD)


def _settle(rig: Rig, steps: int = 4) -> None:
    for _ in range(steps):
        rig.age_transaction()
        rig.steps()


def _place(rig: Rig, postcode: str = "1", card_token: str = "t") -> None:
    placed = OrderPlaced(
        order_id="o-1", customer_id="c", amount_cents=100, card_token=card_token, postcode=postcode
    )
    rig.broker.publish(SOURCE, b"o-1", placed.encode())
    _settle(rig)


def _pay(rig: Rig, payment_id: str = "pay-1") -> None:
    """The payment service's success reply to the payment command in flight."""
    [command] = rig.visible(PAYMENTS)
    command_id = header(command.headers(), COMMAND_ID)
    assert command_id is not None
    paid = PaymentCompleted(order_id="o-1", payment_id=payment_id).encode()
    rig.broker.publish(rig.topics.inbox, b"o-1", paid, reply_headers(command_id))
    _settle(rig)


def _operator(rig: Rig, action: str) -> None:
    """What ``sagas retry``/``resolve`` writes to the inbox."""
    record = OperatorAction(action=action, by="ops", reason="limit raised").encode()
    note = f"{action} by ops: limit raised".encode()
    rig.broker.publish(rig.topics.inbox, b"o-1", record, [(NOTE, note)])
    _settle(rig)


def _redrive(rig: Rig, letter: Message) -> None:
    """``sagas dlq redrive``: the dead letter back to the inbox with its original headers."""
    original = [(k, v) for k, v in received_headers(letter) if not k.startswith("sagalog.dlq.")]
    rig.broker.publish(rig.topics.inbox, b"o-1", letter.value() or b"", original)
    _settle(rig)


def _instance(rig: Rig) -> Instance:
    stored = rig.stored()
    assert stored is not None
    return decode_snapshot(stored)


def _journal_kinds(rig: Rig) -> list[str]:
    return [JournalEntry.decode(m.value() or b"").kind for m in rig.visible(rig.topics.journal)]


def _letters(rig: Rig) -> list[tuple[str | None, str | None]]:
    return [
        (header(m.headers(), DLQ_REASON), header(m.headers(), DLQ_DETAIL))
        for m in rig.visible(rig.topics.dlq)
    ]


def test_a_command_too_large_parks_the_instance_and_dead_letters_the_input(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    rig.start()
    _limit(rig, SHIPPING, 2000)
    _place(rig, postcode="p" * 3000)  # the shipping command will carry it
    _pay(rig)

    assert rig.visible(SHIPPING) == []
    [(reason, detail)] = _letters(rig)
    assert reason == "outputs-too-large"
    assert detail is not None
    assert detail.startswith("command order_fulfillment/o-1/shipping/1 for shipping.commands: ")
    assert detail.endswith("bytes > limit 2000; the instance is parked")
    parked = _instance(rig)  # the snapshot: the instance before the reply, parked
    assert parked.status is Status.NEEDS_ATTENTION and parked.parked_from is Status.RUNNING
    assert parked.reason is not None
    found = re.fullmatch(
        r"record-too-large: command CreateShippingLabel for step shipping would be (\d+) bytes, "
        r"the limit is 2000",
        parked.reason,
    )
    assert found is not None and int(found[1]) > 3000
    assert parked.steps["payment"].status is StepStatus.PENDING
    assert parked.data.payment_id is None  # type: ignore[attr-defined]
    assert _journal_kinds(rig)[-1] == Kind.SAGA_PARKED
    assert rig.committed()[(rig.topics.inbox, rig.broker.partition_of(b"o-1"))] == 2

    # The operator raises the limit, retries, and redrives the reply: the saga goes on.
    del rig.clients.topic_limits[SHIPPING]
    _operator(rig, "retry")
    assert _instance(rig).status is Status.RUNNING
    _redrive(rig, rig.visible(rig.topics.dlq)[0])
    [shipping] = rig.visible(SHIPPING)
    assert header(shipping.headers(), COMMAND_ID) == "order_fulfillment/o-1/shipping/1"
    assert _instance(rig).steps["shipping"].status is StepStatus.PENDING
    rig.processor.close()


def test_a_state_that_grows_too_large_parks_the_instance(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.start()
    _limit(rig, rig.topics.snapshots, 2000)
    _place(rig)
    before = rig.stored()
    assert before is not None and record_size(b"o-1", before) < 2000
    _pay(rig, payment_id="x" * 3000)  # the evolver keeps it in the state

    [(reason, detail)] = _letters(rig)
    assert reason == "outputs-too-large"
    assert detail is not None and detail.startswith("snapshot for order_fulfillment.snapshots: ")
    parked = _instance(rig)
    assert parked.status is Status.NEEDS_ATTENTION
    assert parked.reason is not None
    assert parked.reason.startswith("state-too-large: the snapshot would be ")
    assert parked.reason.endswith(" bytes, the limit is 2000")
    assert parked.data.payment_id is None  # type: ignore[attr-defined]
    assert parked.seq == decode_snapshot(before).seq + 1  # one entry: SagaParked

    _operator(rig, "resolve")
    assert _instance(rig).status is Status.RESOLVED
    rig.processor.close()


def test_when_the_park_does_not_fit_either_the_input_is_only_dead_lettered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    rig.start()
    _place(rig)
    before = rig.stored()
    assert before is not None
    kinds = _journal_kinds(rig)
    _limit(rig, rig.topics.snapshots, record_size(b"o-1", before))  # the state as it is, no more
    with caplog.at_level(logging.ERROR):
        _pay(rig)

    [(reason, detail)] = _letters(rig)
    assert reason == "outputs-too-large"
    assert detail is not None and "; not parked either: state-too-large: " in detail
    assert rig.stored() == before and _journal_kinds(rig) == kinds
    assert "not parked either: state-too-large" in caplog.text
    _settle(rig)  # nothing loops: the input was consumed
    assert len(_letters(rig)) == 1
    rig.processor.close()


def test_a_new_instance_whose_start_does_not_fit_is_only_dead_lettered(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.start()
    _limit(rig, PAYMENTS, 500)
    _place(rig, card_token="t" * 600)

    [(reason, detail)] = _letters(rig)
    assert reason == "outputs-too-large"
    assert detail is not None and detail.startswith("command order_fulfillment/o-1/payment/1")
    assert detail.endswith("; not parked: no instance yet")
    assert rig.stored() is None and rig.visible(rig.topics.journal) == []
    rig.processor.close()


def test_a_timer_decision_too_large_parks_and_fires_again_after_a_retry(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.start()
    _place(rig)
    [first] = rig.visible(PAYMENTS)
    _limit(rig, PAYMENTS, 100)  # the retried command will not fit
    rig.fail_command(first)  # transient: a retry timer (1 s), which fires while settling
    _settle(rig)
    rig.clock.now += 60
    _settle(rig)

    assert rig.visible(PAYMENTS) == [first] and _letters(rig) == []  # no timer letter: parked
    parked = _instance(rig)
    assert parked.status is Status.NEEDS_ATTENTION
    assert parked.reason is not None
    assert parked.reason.startswith("record-too-large: command MakePayment for step payment ")
    assert parked.reason.endswith(", the limit is 100")
    assert "retry:payment" in parked.timers  # kept while parked

    del rig.clients.topic_limits[PAYMENTS]
    _operator(rig, "retry")
    rig.clock.now += 1
    _settle(rig)
    retried = [header(m.headers(), COMMAND_ID) for m in rig.visible(PAYMENTS)[1:]]
    assert retried == ["order_fulfillment/o-1/payment/2"]
    assert _instance(rig).status is Status.RUNNING
    rig.processor.close()


def test_a_journal_entry_too_large_parks_with_record_too_large(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.start()
    _limit(rig, rig.topics.journal, 2000)
    _place(rig)
    _pay(rig, payment_id="x" * 3000)  # the reply, journaled as it came, does not fit

    [(reason, _)] = _letters(rig)
    assert reason == "outputs-too-large"
    parked = _instance(rig)
    assert parked.status is Status.NEEDS_ATTENTION and parked.reason is not None
    assert re.fullmatch(
        r"record-too-large: journal entry InputAccepted for step payment would be \d+ bytes, "
        r"the limit is 2000",
        parked.reason,
    )
    rig.processor.close()


def test_a_timer_decision_whose_park_does_not_fit_leaves_a_timer_letter(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.start()
    _place(rig)
    [first] = rig.visible(PAYMENTS)
    _limit(rig, PAYMENTS, 100)
    rig.fail_command(first)
    rig.age_transaction()
    rig.steps()  # the failure decided: a retry timer, not due yet
    waiting = rig.stored()
    assert waiting is not None and "retry:payment" in decode_snapshot(waiting).timers
    _limit(rig, rig.topics.snapshots, record_size(b"o-1", waiting))
    rig.clock.now += 60
    _settle(rig)

    [(reason, detail)] = _letters(rig)
    assert reason == "outputs-too-large"
    assert detail is not None and detail.startswith("timer retry:payment: command ")
    assert rig.stored() == waiting and rig.visible(PAYMENTS) == [first]
    rig.processor.close()


# -- the pure decision -------------------------------------------------------------------------


def _started() -> Instance:
    test = SagaTest(OrderFulfillment)
    test.start(order())
    return test.instance


TOO_LARGE = oversize.TooLarge(Oversize("snapshot", "t", 3000, 2000), oversize.SNAPSHOT)


def test_park_journals_saga_parked_on_the_instance_as_it_was() -> None:
    before = _started()
    decision = oversize.park(SAGA, before, TOO_LARGE, 5)
    assert decision is not None and decision.commands == []
    [entry] = decision.entries
    assert (entry.kind, entry.seq, entry.at_ms) == (Kind.SAGA_PARKED, before.seq, 5)
    assert entry.reason == "state-too-large: the snapshot would be 3000 bytes, the limit is 2000"
    assert decision.instance is not None and decision.instance.reason == entry.reason
    assert decision.instance.steps == before.steps and decision.instance.seq == before.seq + 1


def test_park_has_nothing_to_park_without_a_running_instance() -> None:
    before = _started()
    assert oversize.park(SAGA, None, TOO_LARGE, 5) is None
    for status in (Status.NEEDS_ATTENTION, Status.COMPLETED, Status.RESOLVED):
        assert oversize.park(SAGA, replace(before, status=status), TOO_LARGE, 5) is None
    assert oversize.park(SAGA, replace(before, status=Status.COMPENSATING), TOO_LARGE, 5)


def test_reasons_name_the_record() -> None:
    journal = oversize.described("journal entry", "InputAccepted", None)
    command = oversize.described("command", "MakePayment", "payment")
    assert oversize.TooLarge(Oversize("", "t", 9, 8), journal).reason == (
        "record-too-large: journal entry InputAccepted would be 9 bytes, the limit is 8"
    )
    assert oversize.TooLarge(Oversize("", "t", 9, 8), command).reason == (
        "record-too-large: command MakePayment for step payment would be 9 bytes, the limit is 8"
    )


def _raising(state: object, event: PaymentCompleted) -> object:
    raise ValueError(f"no payment ids like {event.payment_id!r}")


def test_saga_code_that_raises_parks_the_instance_and_dead_letters_the_input(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    rig.start()
    broken = {**SAGA.evolvers, PaymentCompleted: _raising}
    rig.processor.definition = replace(SAGA, evolvers=broken)
    _place(rig)
    with caplog.at_level(logging.ERROR):
        _pay(rig, payment_id="bad")
    [(reason, detail)] = _letters(rig)
    why = "saga-code-failed: ValueError: no payment ids like 'bad'"
    assert (reason, detail) == ("saga-code-failed", why)
    parked = _instance(rig)
    assert (parked.status, parked.reason) == (Status.NEEDS_ATTENTION, why)
    assert parked.steps["payment"].status is StepStatus.PENDING  # as it was before the input
    assert why in caplog.text
    # The processor goes on: another instance starts as usual.
    placed = OrderPlaced(
        order_id="o-2", customer_id="c", amount_cents=1, card_token="t", postcode="1"
    )
    rig.broker.publish(SOURCE, b"o-2", placed.encode())
    _settle(rig)
    assert len(rig.visible(PAYMENTS)) == 2
    rig.processor.close()
