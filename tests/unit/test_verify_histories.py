"""``verify_histories``: recorded journals replayed against a saga, and the first differences.

Histories are recorded with ``SagaTest`` under the example saga (every outcome, retries fired by
timers, an operator's cancel); the same saga replays them clean, also after a bare version bump.
Changed sagas (a different retry policy, steps in another order, a renamed step, a renamed
command) report the instances they would run differently, at the position of the first entry
that differs. Histories saved with ``sagas history --json`` load back from files and folders.
"""

from __future__ import annotations

import json
import types
from dataclasses import replace
from pathlib import Path

import pytest

from examples.order_fulfillment.messages import (
    CreateShippingLabel,
    MakePayment,
    OrderPlaced,
    OrderState,
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    RefundPayment,
    ShippingFailed,
    ShippingLabelCreated,
)
from examples.order_fulfillment.saga import OrderFulfillment
from examples.user_signup.workers import signup as signup_worker
from sagas import Compensate, RetryPolicy, Saga, Step
from sagas.cli.history import _entry_json
from sagas.testing import (
    HistoriesDiffer,
    SagaTest,
    load_histories,
    verify_histories,
)
from stream_processors.core.journal import JournalEntry
from stream_processors.declarative.definition import load_definition
from stream_processors.declarative.machine import ExecutionStarted
from stream_processors.tools.history import Located

Journal = list[JournalEntry]


def order(order_id: str) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id, customer_id="c", amount_cents=700, card_token="tok", postcode="N1"
    )


def paid(test: SagaTest) -> None:
    order_id = test.instance.instance_id
    test.reply(
        test.expect_command(MakePayment), PaymentCompleted(order_id=order_id, payment_id="p")
    )


def completed() -> Journal:
    test = SagaTest(OrderFulfillment)
    test.start(order("completed"))
    paid(test)
    shipped = ShippingLabelCreated(order_id="completed", tracking_number="t")
    test.reply(test.expect_command(CreateShippingLabel), shipped)
    return test.journal


def declined() -> Journal:
    test = SagaTest(OrderFulfillment)
    test.start(order("declined"))
    failed = PaymentFailed(order_id="declined", reason="no")
    test.reply(test.expect_command(MakePayment), failed)
    return test.journal


def refunded() -> Journal:
    test = SagaTest(OrderFulfillment)
    test.start(order("refunded"))
    paid(test)
    test.advance(seconds=5)
    failed = ShippingFailed(order_id="refunded", reason="x")
    test.reply(test.expect_command(CreateShippingLabel), failed)
    done = PaymentRefunded(order_id="refunded", payment_id="p")
    test.reply(test.expect_command(RefundPayment), done)
    return test.journal


def retried(times: int = 2) -> Journal:
    """Payment fails transiently ``times`` times (3 fails it for good under the default)."""
    test = SagaTest(OrderFulfillment)
    test.start(order(f"retried-{times}"))
    for _ in range(times):
        test.fail_transiently(test.expect_command(MakePayment), "ConnectionError", "reset")
        test.advance(seconds=30)
    if test.status == "running":
        paid(test)
    return test.journal


def cancelled() -> Journal:
    test = SagaTest(OrderFulfillment)
    test.start(order("cancelled"))
    test.cancel(by="alice", reason="asked to")
    paid(test)
    done = PaymentRefunded(order_id="cancelled", payment_id="p")
    test.reply(test.expect_command(RefundPayment), done)
    return test.journal


def histories() -> list[Journal]:
    return [completed(), declined(), refunded(), retried(2), retried(3), cancelled()]


def _refund(state: OrderState) -> RefundPayment:
    assert state.payment_id is not None
    return RefundPayment(
        order_id=state.order_id, payment_id=state.payment_id, amount_cents=state.amount_cents
    )


REFUND = Compensate(RefundPayment, build=_refund, success=PaymentRefunded)
PAYMENT = Step(MakePayment, success=PaymentCompleted, failure=PaymentFailed, compensate=REFUND)
SHIPPING = Step(CreateShippingLabel, success=ShippingLabelCreated, failure=ShippingFailed)


def version_2(**steps: Step) -> type[Saga]:
    """The order saga as version 2, with ``steps`` (in this order) instead of its own."""
    body = {
        "start": OrderPlaced,
        "state": OrderState,
        "begin": OrderFulfillment.begin,
        "paid": OrderFulfillment.paid,
        **steps,
    }
    keywords = {"name": "order_fulfillment", "version": 2}
    return types.new_class("OrderFulfillmentV2", (Saga,), keywords, lambda ns: ns.update(body))


#: v2 changes nothing but its version.
BumpedOnly = version_2(payment=PAYMENT, shipping=SHIPPING)
#: v2 tries a payment five times, 1 s apart.
MoreRetries = version_2(
    payment=Step(
        MakePayment,
        success=PaymentCompleted,
        failure=PaymentFailed,
        compensate=REFUND,
        retry=RetryPolicy(max_attempts=5, interval=1, backoff_rate=1),
    ),
    shipping=SHIPPING,
)
#: v2 ships before it takes the payment.
ShipFirst = version_2(shipping=SHIPPING, payment=PAYMENT)
#: v2 calls the payment step ``charge``.
RenamedStep = version_2(charge=PAYMENT, shipping=SHIPPING)
#: v2 undoes a payment with another command (a shipping label, as a stand-in).
RefundsDifferently = version_2(
    payment=Step(
        MakePayment,
        success=PaymentCompleted,
        failure=PaymentFailed,
        compensate=Compensate(CreateShippingLabel, success=PaymentRefunded),
    ),
    shipping=SHIPPING,
)


def test_the_same_saga_replays_its_histories_clean() -> None:
    report = verify_histories(OrderFulfillment, histories())
    assert report.ok, str(report)
    assert report.instances == 6
    assert report.entries == sum(len(journal) for journal in histories())
    report.raise_for_differences()  # nothing to raise
    assert "6 instances" in str(report) and "0 decide differently" in str(report)


def test_a_new_version_that_decides_the_same_is_clean() -> None:
    assert verify_histories(BumpedOnly, histories()).ok


def test_journal_entries_in_journal_order_any_mix_of_instances() -> None:
    journals = histories()
    interleaved = sorted((e for j in journals for e in j), key=lambda e: (e.at_ms, e.seq))
    assert verify_histories(OrderFulfillment, interleaved).ok
    by_instance = {journal[0].instance: journal for journal in journals}
    assert verify_histories(OrderFulfillment.definition, by_instance).ok


def test_a_different_retry_policy_reports_only_the_instances_it_would_run_differently() -> None:
    report = verify_histories(MoreRetries, histories())
    assert not report.ok
    # retried-2: the second retry came 1 s after the failure, not 2 s; retried-3 was not failed.
    assert [(d.instance, d.position) for d in report.differences] == [
        ("retried-2", 9),
        ("retried-3", 9),
    ]
    difference = report.differences[0]
    assert difference.input.startswith("InputAccepted CommandFailed(error='ConnectionError'")
    assert (
        difference.expected[-1]
        == "#9 TimerScheduled step=payment attempt=3 timer=retry:payment due=+2s"
    )
    assert (
        difference.actual[-1]
        == "#9 TimerScheduled step=payment attempt=3 timer=retry:payment due=+1s"
    )
    with pytest.raises(HistoriesDiffer, match="retried-2 at position 9") as raised:
        report.raise_for_differences()
    assert isinstance(raised.value, AssertionError)
    assert "recorded:" in str(raised.value) and "now:" in str(raised.value)


def test_steps_in_another_order_differ_from_the_first_command() -> None:
    report = verify_histories(ShipFirst, histories())
    assert len(report.differences) == 6
    assert {d.position for d in report.differences} == {1}
    first = report.differences[0]
    assert first.input.startswith("SagaStarted OrderPlaced(")
    assert first.expected[1].startswith("#1 CommandSent step=payment attempt=1 MakePayment(")
    assert first.actual[1].startswith("#1 CommandSent step=shipping attempt=1 CreateShippingLabel(")


def test_a_renamed_step_differs_where_it_is_first_journaled() -> None:
    report = verify_histories(RenamedStep, histories())
    assert {d.position for d in report.differences} == {1}
    assert "step=charge" in report.differences[0].actual[1]


def test_a_different_compensation_command_differs_only_where_one_ran() -> None:
    report = verify_histories(RefundsDifferently, histories())
    assert [d.instance for d in report.differences] == ["refunded", "cancelled"]
    refunded_at = next(e.seq for e in refunded() if e.kind == "CompensationSent")
    assert report.differences[0].position == refunded_at
    assert "CreateShippingLabel(" in report.differences[0].actual[-1]


def test_an_input_the_new_version_ignores_is_a_difference() -> None:
    # A reply journaled with the id of a command this instance never sent is stale now.
    journal = completed()
    other = "order_fulfillment/x/payment/1"
    forged = [replace(e, command_id=other) if e.seq == 2 else e for e in journal]
    report = verify_histories(OrderFulfillment, forged)
    assert [(d.position, d.actual) for d in report.differences] == [(2, ("ignores it: stale",))]


# --- histories saved with ``sagas history --json`` ----------------------------------------------


def save(journal: Journal, path: Path, *, old_format: bool = False) -> None:
    entries = [_entry_json(Located(offset, entry)) for offset, entry in enumerate(journal)]
    if old_format:  # what `sagas history --json` wrote before it named instance and schema
        for item in entries:
            del item["instance"], item["record_schema"]
    path.write_text(json.dumps(entries, indent=2))


def test_load_histories_from_files_and_folders(tmp_path: Path) -> None:
    folder = tmp_path / "histories"
    folder.mkdir()
    for journal in histories():
        save(journal, folder / f"{journal[0].instance}.json")
    loaded = load_histories(folder)
    assert loaded == {journal[0].instance: journal for journal in histories()}
    assert verify_histories(OrderFulfillment, loaded).ok
    assert not verify_histories(MoreRetries, loaded).ok

    one = load_histories(folder / "completed.json")
    assert list(one) == ["completed"]
    two = load_histories([folder / "completed.json", str(folder / "declined.json")])
    assert list(two) == ["completed", "declined"]


def test_load_histories_of_the_older_format_needs_the_saga(tmp_path: Path) -> None:
    path = tmp_path / "refunded.json"
    save(refunded(), path, old_format=True)
    with pytest.raises(ValueError, match="pass saga= to find it"):
        load_histories(path)
    loaded = load_histories(path, saga=OrderFulfillment)
    assert loaded == {"refunded": refunded()}


def test_load_histories_of_a_file_with_several(tmp_path: Path) -> None:
    journals = histories()[:2]
    path = tmp_path / "several.json"
    lists = [[_entry_json(Located(0, entry)) for entry in journal] for journal in journals]
    path.write_text(json.dumps(lists))
    assert load_histories(path) == {journal[0].instance: journal for journal in journals}
    path.write_text(json.dumps({"a": lists[0]}))
    assert list(load_histories(path)) == ["a"]
    path.write_text('"nope"')
    with pytest.raises(ValueError, match="not a journal saved by"):
        load_histories(path)


def test_a_declarative_execution_saved_and_loaded_replays_clean(tmp_path: Path) -> None:
    """A definition's documents (``DocumentSet`` entries: JSON, not Avro) are saved readable
    and load back to the same bytes."""
    definition = load_definition(
        Path(__file__).parents[2] / "examples/user_signup/user_signup.json"
    )
    test = SagaTest(definition)
    test.start(ExecutionStarted(execution="s-1", input='{"email": "a@b.c", "n": 1.5}'))
    while test.outstanding:
        test.handle(test.outstanding[0], signup_worker)
    assert test.status.value == "completed"
    path = tmp_path / "s-1.json"
    save(test.journal, path)
    saved = json.loads(path.read_text())
    documents = [item["document"] for item in saved if item["event"] == "DocumentSet"]
    assert documents[-1]["final_state"] == "COMPLETED" and documents[-1]["n"] == 1.5
    assert {item["record_type"] for item in saved if item["event"] == "DocumentSet"} == {None}
    loaded = load_histories(path)
    assert loaded == {"s-1": test.journal}
    assert verify_histories(definition, loaded).ok
