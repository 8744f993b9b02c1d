"""Operator verdicts in the pure core: every action on every status is applied (its first entry
carries the request id) or refused (an ``OperatorRefused`` entry saying why, which no fold, replay
or history counts); an unknown instance is refused without creating one. No Kafka."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from examples.order_fulfillment.messages import (
    OrderPlaced,
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    ShippingFailed,
    ShippingLabelCreated,
)
from sagas.testing import SagaTest, verify_histories
from stream_processors.core.decide import Input, decide, refusal_parts, refusal_reason
from stream_processors.core.decision import command_id
from stream_processors.core.fold import apply, fold
from stream_processors.core.instance import Instance, Status
from stream_processors.core.journal import REFUSAL_SEQ, JournalEntry, Kind, stateless
from stream_processors.core.model import OperatorAction, SagaDefinition
from stream_processors.core.oversize import park_for
from stream_processors.engine.routing import NOTE, OPERATOR_ID
from tests.unit.processor_rig import Rig
from tests.unit.saga_run import SAGA, Run

NOW = 1_900_000_000_000
ORDER = OrderPlaced(
    order_id="o-1", customer_id="c-1", amount_cents=100, card_token="t", postcode="1000"
)


def _cid(step: str, attempt: int = 1) -> str:
    return command_id(SAGA.name, "o-1", step, attempt)


def _running(run: SagaTest) -> None:
    run.feed(ORDER)


def _compensating(run: SagaTest) -> None:
    run.feed(ORDER)
    run.feed(PaymentCompleted(order_id="o-1", payment_id="p-1"), _cid("payment"))
    run.feed(ShippingFailed(order_id="o-1", reason="no"), _cid("shipping"))


def _completed(run: SagaTest) -> None:
    run.feed(ORDER)
    run.feed(PaymentCompleted(order_id="o-1", payment_id="p-1"), _cid("payment"))
    run.feed(ShippingLabelCreated(order_id="o-1", tracking_number="t-1"), _cid("shipping"))


def _compensated(run: SagaTest) -> None:
    _compensating(run)
    run.feed(PaymentRefunded(order_id="o-1", payment_id="p-1"), _cid("payment.compensation"))


def _failed(run: SagaTest) -> None:
    run.feed(ORDER)
    run.feed(PaymentFailed(order_id="o-1", reason="declined"), _cid("payment"))


#: How to bring the example's instance ``o-1`` into each status.
JOURNEYS: dict[Status, Callable[[SagaTest], None]] = {
    Status.RUNNING: _running,
    Status.COMPENSATING: _compensating,
    Status.COMPLETED: _completed,
    Status.COMPENSATED: _compensated,
    Status.FAILED: _failed,
}
#: Which action applies in which status; every other pair is refused.
APPLIES = {("cancel", Status.RUNNING), ("retry", Status.NEEDS_ATTENTION)}
APPLIES |= {("resolve", Status.NEEDS_ATTENTION)}


def instance_in(status: Status) -> Instance:
    if status is Status.NEEDS_ATTENTION:
        parking = park_for(SAGA, instance_in(Status.RUNNING), "checked", NOW)
        assert parking is not None and parking.instance is not None
        return parking.instance
    if status is Status.RESOLVED:
        before = instance_in(Status.NEEDS_ATTENTION)
        resolved = decide(SAGA, before, _action("resolve"), NOW).instance
        assert resolved is not None
        return resolved
    run = Run()
    JOURNEYS[status](run)
    assert run.instance.status is status
    return run.instance


def _action(name: str, operator_id: str | None = "op-1") -> Input:
    action = OperatorAction(action=name, by="alice", reason="checked by hand")
    return Input(action, action.encode(), operator_id=operator_id, key="o-1")


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("action", ["retry", "cancel", "resolve", "restart"])
def test_every_action_on_every_status_is_applied_or_refused_with_why(
    action: str, status: Status
) -> None:
    before = instance_in(status)
    decision = decide(SAGA, before, _action(action), NOW)
    if (action, status) in APPLIES:
        assert decision.refusal is None and decision.ignored is None
        first = decision.entries[0]
        assert first.kind == Kind.OPERATOR_ACTION.value and first.operator_id == "op-1"
        assert first.seq == before.seq
        assert all(entry.operator_id is None for entry in decision.entries[1:])
        return
    named = action if action != "restart" else "unknown"
    assert decision.ignored == f"operator-{named}-not-applicable"
    assert decision.rejected is None and decision.entries == []
    assert decision.instance is before  # nothing changes, not even the position
    refusal = decision.refusal
    assert refusal is not None
    assert (refusal.kind, refusal.seq, refusal.instance) == ("OperatorRefused", REFUSAL_SEQ, "o-1")
    assert refusal.operator_id == "op-1" and refusal.at_ms == NOW
    assert refusal.record == _action(action).raw
    note, code, why = refusal_parts(refusal.reason or "")
    assert note == f"{action} by alice: checked by hand"
    assert code == decision.ignored
    if action == "restart":
        assert why == "unknown action 'restart': one of retry, cancel, resolve, prioritize"
    else:
        assert why.endswith(f"; this one is {status.value}")


def _prioritize(priority: int | None, operator_id: str | None = "op-1") -> Input:
    from stream_processors.core.throttle import PRIORITIZE, prioritize_reason

    why = "the customer called" if priority is None else prioritize_reason(priority, "vip")
    action = OperatorAction(action=PRIORITIZE, by="alice", reason=why)
    return Input(action, action.encode(), operator_id=operator_id, key="o-1")


def _limited() -> SagaDefinition:
    from sagas import Limit
    from stream_processors.core.throttle import Throttle

    return replace(SAGA, throttle=Throttle({"payments": Limit(rate=10)}))


def test_a_prioritize_is_journaled_with_who_and_the_priority_read_back_from_it() -> None:
    from stream_processors.core.decide import prioritized

    before = instance_in(Status.RUNNING)
    asked = _prioritize(7)
    decision = decide(_limited(), before, asked, NOW)
    assert decision.refusal is None and decision.ignored is None and decision.commands == []
    (entry,) = decision.entries
    assert (entry.kind, entry.operator_id) == (Kind.OPERATOR_ACTION.value, "op-1")
    assert entry.reason == "prioritize by alice: priority 7: vip" and entry.record == asked.raw
    assert prioritized(decision, asked.record) == 7
    after = decision.instance
    moved = {"seq": before.seq, "updated_at_ms": before.updated_at_ms}
    assert after is not None and replace(after, **moved) == before  # history only


@pytest.mark.parametrize(
    ("saga", "status", "priority", "code"),
    [
        ("limited", None, 7, "unknown-instance"),
        ("limited", Status.COMPLETED, 7, "operator-prioritize-not-applicable"),
        ("limited", Status.RUNNING, None, "operator-prioritize-not-applicable"),
        ("unlimited", Status.RUNNING, 7, "operator-prioritize-not-applicable"),
    ],
)
def test_a_prioritize_that_cannot_apply_is_refused_and_journaled_as_such(
    saga: str, status: Status | None, priority: int | None, code: str
) -> None:
    from stream_processors.core.decide import prioritized

    definition = _limited() if saga == "limited" else SAGA
    before = None if status is None else instance_in(status)
    asked = _prioritize(priority)
    decision = decide(definition, before, asked, NOW)
    assert decision.ignored == code and decision.entries == [] and decision.rejected is None
    refusal = decision.refusal
    assert refusal is not None and refusal.operator_id == "op-1"
    assert refusal_parts(refusal.reason or "")[1] == code
    assert prioritized(decision, asked.record) is None


def test_an_action_for_an_unknown_instance_is_refused_and_creates_none() -> None:
    decision = decide(SAGA, None, _action("cancel"), NOW)
    assert decision.rejected is None and decision.ignored == "unknown-instance"
    assert decision.instance is None and decision.entries == []
    refusal = decision.refusal
    assert refusal is not None and refusal.instance == "o-1"
    _, code, why = refusal_parts(refusal.reason or "")
    assert code == "unknown-instance"
    assert why.startswith("there is no instance 'o-1' of order_fulfillment")
    assert fold(SAGA, None, [refusal]) is None


def test_without_a_request_id_nothing_changes_from_before() -> None:
    """An action sent by an older client asks for no verdict: as before, ignored or rejected."""
    assert decide(SAGA, None, _action("cancel", None), NOW).rejected == "unknown-instance"
    completed = decide(SAGA, instance_in(Status.COMPLETED), _action("retry", None), NOW)
    assert completed.ignored == "operator-retry-not-applicable" and completed.refusal is None


def test_a_signal_that_answers_nothing_is_refused_and_one_that_applies_carries_the_id() -> None:
    before = instance_in(Status.RUNNING)
    stale = PaymentCompleted(order_id="o-1", payment_id="p-1")
    signal = Input(stale, stale.encode(), _cid("payment", 7), "signal by bob: bank said so")
    refused = decide(SAGA, before, _with_id(signal), NOW)
    assert refused.ignored == "stale" and refused.refusal is not None
    note, code, why = refusal_parts(refused.refusal.reason or "")
    assert (note, code) == ("signal by bob: bank said so", "stale")
    assert why == "it answers no attempt the instance waits for"
    named = Input(stale, stale.encode(), _cid("payment"), "signal by bob: bank said so")
    applied = decide(SAGA, before, _with_id(named), NOW)
    assert applied.entries[0].kind == Kind.INPUT_ACCEPTED.value
    assert applied.entries[0].operator_id == "op-2"


def _with_id(received: Input) -> Input:
    return Input(
        received.record,
        received.raw,
        received.command_id,
        received.note,
        operator_id="op-2",
        key="o-1",
    )


def test_fold_skips_refusals_wherever_they_are() -> None:
    run = Run()
    _completed(run)
    journal = list(run.journal)
    refusal = decide(SAGA, run.instance, _action("retry"), NOW).refusal
    assert refusal is not None and stateless(refusal)
    assert apply(SAGA, run.instance, refusal) is run.instance
    for where in range(len(journal) + 1):
        with_refusal = [*journal[:where], refusal, *journal[where:]]
        assert fold(SAGA, None, with_refusal) == run.instance
    # Read back from Avro, as replay and history read it: still skipped.
    decoded = JournalEntry.decode(refusal.encode())
    assert decoded == refusal and fold(SAGA, None, [decoded, *journal]) == run.instance


def test_a_refusal_reason_reads_back_even_when_the_note_has_the_same_shape() -> None:
    note, code = "cancel by eve: because; refused (x): y", "operator-cancel-not-applicable"
    reason = refusal_reason(note, code, "cancel applies to ...")
    assert refusal_parts(reason) == (note, code, "cancel applies to ...")
    assert refusal_parts("not a refusal") == ("", "", "not a refusal")


def test_the_processor_journals_a_refusal_alone_and_dead_letters_nothing(tmp_path: Path) -> None:
    """On in-memory Kafka: an action for an unknown instance and one that does not apply are
    journaled as refusals, in the input's transaction, with no snapshot and no dead letter."""
    rig = Rig(tmp_path)
    try:
        rig.start()
        rig.place("o-1")
        rig.steps(3)
        stored, journal = rig.stored("o-1"), len(rig.visible(rig.topics.journal))
        for key, action, request in ((b"o-1", "retry", b"r-1"), (b"nobody", "cancel", b"r-2")):
            value = OperatorAction(action=action, by="alice", reason="why").encode()
            headers = [(NOTE, f"{action} by alice: why".encode()), (OPERATOR_ID, request)]
            rig.broker.publish(rig.topics.inbox, key, value, headers)
        rig.steps(2)
        written = rig.visible(rig.topics.journal)[journal:]
        entries = [JournalEntry.decode(message.value() or b"") for message in written]
        assert [(e.instance, e.kind, e.seq, e.operator_id) for e in entries] == [
            ("o-1", "OperatorRefused", -1, "r-1"),
            ("nobody", "OperatorRefused", -1, "r-2"),
        ]
        assert [m.key() for m in written] == [b"o-1", b"nobody"]
        assert rig.visible(rig.topics.dlq) == []
        assert rig.stored("o-1") == stored and rig.stored("nobody") is None
        snapshots = [m.key() for m in rig.visible(rig.topics.snapshots)]
        assert b"nobody" not in snapshots and snapshots.count(b"o-1") == 1
    finally:
        rig.processor.close()


def test_recorded_histories_with_verdicts_decide_the_same_again() -> None:
    """A journal as the processor writes it, with an applied request (its id on the entry) and
    refusals (one of an id that never started), replays without a difference."""
    before = instance_in(Status.RUNNING)
    run = Run()
    _running(run)
    journal = list(run.journal)
    cancelled = decide(SAGA, before, _action("cancel", "op-9"), NOW)
    refused = decide(SAGA, cancelled.instance, _action("cancel", "op-10"), NOW + 1)
    nobody = decide(SAGA, None, _action("retry", "op-11"), NOW + 2)
    assert cancelled.entries[0].operator_id == "op-9"
    assert refused.refusal is not None and nobody.refusal is not None
    recorded = [*journal, *cancelled.entries, refused.refusal, nobody.refusal]
    nobody_id = replace(nobody.refusal, instance="nobody")
    report = verify_histories(SAGA, [*recorded, nobody_id])
    assert report.instances == 1 and report.differences == ()
