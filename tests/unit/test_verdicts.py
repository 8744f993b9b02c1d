"""How verdicts read: one line per request, a summary of many grouped by reason, exit codes;
and a verdict made from the journal entry that answered it. No Kafka."""

from __future__ import annotations

from dataclasses import replace

from confluent_kafka import Message

from sagas.verdicts import (
    APPLIED,
    DEAD_LETTERED,
    EXIT_NO_VERDICT,
    EXIT_REFUSED,
    NO_VERDICT,
    REFUSED,
    SENT,
    Verdict,
    answered,
    dead_lettered,
    exit_code,
    summary,
    unanswered,
)
from stream_processors.core.decide import refusal_reason
from stream_processors.core.journal import REFUSAL_SEQ, JournalEntry

PENDING = Verdict("o-1", "retry", "req-1", SENT, inbox_partition=3, inbox_offset=41)
WHY = "retry applies to a parked instance (needs_attention); this one is completed"


def _entry(kind: str, seq: int, reason: str | None = None) -> JournalEntry:
    return JournalEntry(
        instance="o-1", seq=seq, kind=kind, at_ms=1, saga_version=1, reason=reason,
        operator_id="req-1",
    )  # fmt: skip


def test_an_applied_request_says_the_entry_and_where_it_is() -> None:
    verdict = answered(PENDING, _entry("OperatorAction", 7), 3, 1200)
    assert verdict.outcome == APPLIED and verdict.ok
    assert (verdict.seq, verdict.journal_partition, verdict.journal_offset) == (7, 3, 1200)
    assert verdict.describe() == "applied retry to o-1: OperatorAction #7 at journal[3]@1200"
    assert exit_code([verdict]) == 0


def test_a_refused_request_says_why_with_its_code_and_where_it_is_journaled() -> None:
    reason = refusal_reason("retry by alice: x", "operator-retry-not-applicable", WHY)
    verdict = answered(PENDING, _entry("OperatorRefused", REFUSAL_SEQ, reason), 3, 1201)
    assert verdict.outcome == REFUSED and not verdict.ok
    assert (verdict.code, verdict.why, verdict.seq) == ("operator-retry-not-applicable", WHY, None)
    assert verdict.describe() == (
        f"refused retry to o-1: {WHY} [operator-retry-not-applicable] "
        "(journaled at journal[3]@1201)"
    )
    assert exit_code([verdict]) == EXIT_REFUSED


def test_no_verdict_and_sent_only_say_where_the_request_went() -> None:
    late = unanswered(PENDING, "order_fulfillment", 2.5)
    assert late.outcome == NO_VERDICT and late.describe().startswith(
        "no verdict on retry to o-1: none within 2.5 s: is a processor of order_fulfillment"
    )
    assert late.describe().endswith("(sent to inbox[3]@41, request req-1)")
    assert exit_code([late]) == EXIT_NO_VERDICT
    assert PENDING.describe() == (
        "sent retry to o-1 (inbox[3]@41, request req-1); not waiting for the verdict"
    )
    assert exit_code([PENDING]) == 0
    assert PENDING.as_json()["inbox_offset"] == 41


def test_a_summary_counts_outcomes_and_groups_refusals_by_reason() -> None:
    applied = [replace(PENDING, instance=f"a-{n}", outcome=APPLIED) for n in range(3)]
    completed = [
        replace(PENDING, instance=f"c-{n}", outcome=REFUSED, code="operator-retry-not-applicable",
                why=WHY)
        for n in range(12)
    ]  # fmt: skip
    running = replace(completed[0], instance="r-0", why=WHY.replace("completed", "running"))
    late = unanswered(replace(PENDING, instance="l-0"), "order_fulfillment", 30)
    lines = summary([*applied, *completed, running, late], "retry")
    assert lines[0] == "retry: 17 instances: applied 3, refused 13, no verdict 1"
    # The largest group first; at most 10 ids named in each.
    named = ", ".join(f"c-{n}" for n in range(10))
    assert lines[1] == (f"  12 refused [operator-retry-not-applicable] {WHY}: {named} and 2 more")
    assert sorted(lines[2:]) == sorted(
        [
            f"  1 refused [operator-retry-not-applicable] {running.why}: r-0",
            f"  1 no verdict: {late.why}: l-0",
        ]
    )
    assert exit_code([*applied, *completed]) == EXIT_REFUSED
    assert exit_code([*applied, *completed, late]) == EXIT_NO_VERDICT
    assert summary([], "cancel") == ["cancel: 0 instances: none"]


def test_a_request_dead_lettered_before_any_decision_says_the_dead_letters_reason() -> None:
    headers = [
        ("sagalog.operator_id", b"req-1"),
        ("sagalog.dlq.reason", b"bad-signature"),
        ("sagalog.dlq.detail", b"no sagalog.signature header"),
    ]
    letter = Message(
        topic="order_fulfillment.dlq", partition=5, offset=9, key=b"o-1", headers=headers
    )
    verdict = dead_lettered(PENDING, letter)
    assert (verdict.outcome, verdict.code) == (DEAD_LETTERED, "bad-signature")
    assert verdict.describe() == (
        "dead-lettered retry to o-1: [bad-signature] no sagalog.signature header "
        "(dead letter order_fulfillment.dlq[5]@9: see sagas dlq list)"
    )
    assert exit_code([verdict]) == EXIT_REFUSED and not verdict.ok
    assert summary([verdict], "retry")[0] == "retry: 1 instances: dead-lettered 1"
