"""Control flow through the public test kit, continued: Sleep, child sagas (both sides), bounded
loops, Succeed and Fail nodes, typed references, declaration errors, early awaited events, and
the kit's own check that every decision replays.

See ``test_control_flow.py`` for Choice, Parallel, the fork's join and Map.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from sagas import DeclarationError, RetryPolicy, Saga, Wait, evolve
from sagas.flow import Branch, Child, Choice, Map, Parallel, Sleep, Succeed, When
from sagas.testing import START_MS, SagaTest, verify_histories
from sagas.testing import _saga_test as kit_module
from stream_processors.codecs.records import decode_record
from stream_processors.core.decision import CHILD_CANCEL, CHILD_END
from stream_processors.core.instance import Status, StepStatus
from stream_processors.core.journal import Kind
from stream_processors.core.model import (
    CHILD_FAILED,
    ChildEnded,
    CommandFailed,
    Fail,
    OperatorAction,
)
from tests.unit.flow_records import (
    ID,
    A,
    B,
    C,
    D,
    E,
    Flow,
    G,
    H,
    Job,
    Started,
    Verified,
    begin,
    begin_job,
    cid,
    kinds,
    reply,
    undo,
    verify_every_journal,
)


@pytest.fixture(autouse=True)
def decisions_replay(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from verify_every_journal(monkeypatch)


# --- Sleep ----------------------------------------------------------------------------------------


class Napping(Saga, name="napping"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    nap = Sleep(seconds=30)
    d = D.step()


def test_a_sleep_waits_on_a_durable_timer_fired_by_the_virtual_clock() -> None:
    test = SagaTest(Napping)
    test.start(Started(id=ID))
    slept = test.reply(test.expect_command(A.do), A.done(id=ID))
    assert kinds(slept)[2:] == [Kind.WAIT_STARTED, Kind.TIMER_SCHEDULED]
    assert (slept.entries[2].step, slept.entries[2].command_id) == ("nap", cid("napping", "nap"))
    assert slept.entries[3].timer == "sleep:nap"
    assert test.due("sleep:nap") == START_MS + 30_000
    assert slept.commands == []
    assert test.advance(29.999) == []
    (woke,) = test.advance(0.001)
    assert kinds(woke) == [Kind.TIMER_FIRED, Kind.STEP_SUCCEEDED, Kind.COMMAND_SENT]
    assert [e.at_ms for e in woke.entries] == [START_MS + 30_000] * 3
    assert [c.command_id for c in woke.commands] == [cid("napping", "d")]
    reply(test, D)
    assert test.status == "completed"
    assert test.instance.completed == ("a", "nap", "d")


class NapUntil(Saga, name="nap_until"):
    start, state, begin = Started, Flow, staticmethod(begin)
    nap = Sleep(until=lambda s: s.wake_at)
    d = D.step()


@pytest.mark.parametrize(
    ("wake_at", "due"), [(START_MS + 3_600_000, START_MS + 3_600_000), (1, START_MS)]
)
def test_a_sleep_until_a_time_from_the_state(wake_at: int, due: int) -> None:
    """A time already past wakes at once (at the next tick of the clock)."""
    test = SagaTest(NapUntil)
    test.start(Started(id=ID, wake_at=wake_at))
    assert test.due("sleep:nap") == due
    test.advance(hours=1)
    assert [c.command_id for c in test.outstanding] == [cid("nap_until", "d")]
    assert test.sent[0].at_ms == due


def test_cancelling_a_sleeping_saga_cancels_the_sleep_timer_and_compensates() -> None:
    test = SagaTest(Napping)
    test.start(Started(id=ID))
    reply(test, A)
    cancelled = test.cancel(reason="customer left")
    assert kinds(cancelled) == [
        Kind.OPERATOR_ACTION,
        Kind.SAGA_COMPENSATING,
        Kind.TIMER_CANCELLED,
        Kind.STEP_FAILED,
        Kind.COMPENSATION_SENT,
    ]
    assert (cancelled.entries[2].timer, cancelled.entries[3].step) == ("sleep:nap", "nap")
    assert test.timers == {}
    assert test.advance(minutes=5) == []
    undo(test, A)
    assert test.status == "compensated"
    assert test.instance.reason == "cancelled by tester: customer left"


# --- child sagas ----------------------------------------------------------------------------------


class Kid(Saga, name="kid"):
    start, state, begin = Job, Flow, staticmethod(begin_job)
    h = H.step()


class Parent(Saga, name="parent"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    kid = Child(Kid, lambda s: Job(id=f"{s.id}-kid"))
    d = D.step()


class Forgiving(Saga, name="forgiving"):
    start, state, begin = Started, Flow, staticmethod(begin)
    kid = Child(Kid, lambda s: Job(id=f"{s.id}-kid"), catch={CHILD_FAILED: "plan_b"}, next="d")
    plan_b = G.step(end=True)
    d = D.step()


KID = f"{ID}-kid"


def child_started(saga: type[Saga] = Parent) -> tuple[SagaTest, Any]:
    test = SagaTest(saga)
    test.start(Started(id=ID))
    if "a" in saga.definition.tasks:
        reply(test, A)
    sent = test.expect_command(Job)
    return test, sent


def test_a_child_step_sends_the_child_start_to_its_inbox_keyed_by_the_child_instance() -> None:
    test, sent = child_started()
    assert (sent.kind, sent.topic, sent.key) == ("child-start", "kid.inbox", KID)
    assert (sent.step, sent.command_id) == ("kid", cid("parent", "kid"))
    assert sent.command == Job(id=KID)
    (outgoing,) = [c for c in test.outgoing if c.kind == "child-start"]
    assert outgoing.parent == ID
    assert test.instance.children == {"kid": KID}
    ended = test.child_ended(sent, "completed")
    assert kinds(ended) == [Kind.INPUT_ACCEPTED, Kind.STEP_SUCCEEDED, Kind.COMMAND_SENT]
    assert [c.command_id for c in ended.commands] == [cid("parent", "d")]
    reply(test, D)
    assert test.status == "completed"


@pytest.mark.parametrize("status", ["compensated", "failed"])
def test_a_child_that_does_not_complete_fails_its_step_with_child_failed(status: str) -> None:
    test, sent = child_started()
    failed = test.child_ended(sent, status, reason="h: HFailed")
    assert kinds(failed) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_FAILED,
        Kind.SAGA_COMPENSATING,
        Kind.COMPENSATION_SENT,
    ]
    why = f"kid: child saga kid {KID} {status}: h: HFailed"
    assert failed.entries[1].reason == why
    undo(test, A)
    assert test.status == "compensated"
    assert test.instance.reason == why


def test_child_failed_is_catchable() -> None:
    test, sent = child_started(Forgiving)
    caught = test.child_ended(sent, "compensated")
    assert [c.command_id for c in caught.commands] == [cid("forgiving", "plan_b")]
    reply(test, G)
    assert test.status == "completed"


def test_cancelling_the_parent_cancels_the_child_and_waits_for_its_end() -> None:
    test, sent = child_started()
    cancelled = test.cancel(reason="stop")
    assert kinds(cancelled) == [Kind.OPERATOR_ACTION, Kind.SAGA_COMPENSATING]
    (cancel,) = cancelled.commands
    assert (cancel.kind, cancel.topic, cancel.key) == (CHILD_CANCEL, "kid.inbox", KID)
    action = decode_record(cancel.value)
    assert action == OperatorAction(
        action="cancel", by=f"parent/{ID}", reason="cancelled by tester: stop"
    )
    assert test.status == "compensating"
    assert [s.command_id for s in test.outstanding] == [sent.command_id]
    # The child, told to cancel, compensates and reports it: the parent then undoes ``a``.
    child = SagaTest(Kid)
    child.start(sent.command, parent=sent)
    assert not child.feed(action, note="cancel by parent").ignored
    assert child.status == "compensating"  # its step h is in flight: awaited, then undone
    reply(child, H)
    undo(child, H)
    assert child.status == "compensated"
    assert child.reported is not None
    ended, answers = child.reported
    test.reply(answers, ended)
    assert test.instance.steps["kid"].status is StepStatus.FAILED
    undo(test, A)
    assert test.status == "compensated"


class Patient(Saga, name="patient"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    kid = Child(Kid, lambda s: Job(id=f"{s.id}-kid"), timeout=10)


def test_a_child_step_that_times_out_cancels_its_child() -> None:
    """Fixed: the step failed, the parent compensated, and the child ran on, orphaned."""
    test, sent = child_started(Patient)
    (fired,) = test.advance(10)
    why = "kid: no reply in time"
    assert kinds(fired) == [
        Kind.TIMER_FIRED,
        Kind.STEP_FAILED,
        Kind.SAGA_COMPENSATING,
        Kind.COMPENSATION_SENT,
    ]
    cancel, undo_a = fired.commands
    assert (cancel.kind, cancel.topic, cancel.key) == (CHILD_CANCEL, "kid.inbox", KID)
    assert decode_record(cancel.value) == OperatorAction(
        action="cancel", by=f"patient/{ID}", reason=why
    )
    assert undo_a.command_id == cid("patient", "a.compensation")
    late = test.feed(ChildEnded(saga="kid", instance=KID, status="compensated"), sent.command_id)
    assert late.ignored == "duplicate"  # the step has had its answer
    undo(test, A)
    assert test.status == "compensated"


def test_a_child_step_cannot_be_retried() -> None:
    """Its child runs once: a second start is a duplicate the child ignores, and the child's
    end answers the first attempt, which the retried step no longer takes."""
    with pytest.raises(DeclarationError, match="child step 'kid' cannot be retried"):

        class Retrying(Saga, name="retrying"):
            start, state, begin = Started, Flow, staticmethod(begin)
            kid = Child(Kid, lambda s: Job(id=s.id), timeout=10, retry=RetryPolicy(max_attempts=2))


class KidBranch(Branch):
    kid = Child(Kid, lambda s: Job(id=f"{s.id}-kid"))


class FailBranch(Branch):
    e = E.step()


class ParentOfBranches(Saga, name="parent_of_branches"):
    start, state, begin = Started, Flow, staticmethod(begin)
    both = Parallel(KidBranch, FailBranch)


def test_a_failed_sibling_branch_cancels_a_child_and_awaits_its_end() -> None:
    test = SagaTest(ParentOfBranches)
    test.start(Started(id=ID))
    sent = test.expect_command(Job)
    failed = test.reply(test.expect_command(E.do), E.failed(id=ID))
    assert Kind.STEP_CANCELLED in kinds(failed)
    (cancel,) = failed.commands
    assert (cancel.kind, cancel.topic, cancel.key) == (CHILD_CANCEL, "kid.inbox", KID)
    assert test.status == "compensating"
    ended = test.child_ended(sent, "compensated")
    assert kinds(ended) == [Kind.INPUT_ACCEPTED, Kind.STEP_FAILED, Kind.SAGA_FAILED]
    assert test.instance.reason == "e: EFailed"


@pytest.mark.parametrize(("ok", "status"), [(True, "completed"), (False, "failed")])
def test_a_child_reports_its_end_to_the_parent_that_started_it(ok: bool, status: str) -> None:
    parent, sent = child_started()
    child = SagaTest(Kid)
    started = child.start(sent.command, parent=sent)
    first = started.entries[0]
    assert (first.reply_to, first.reply_key, first.command_id) == (
        "parent.inbox",
        ID,
        sent.command_id,
    )
    assert child.reported is None
    ended = child.reply(child.expect_command(H.do), (H.done if ok else H.failed)(id=KID))
    (report,) = [c for c in ended.commands if c.kind == CHILD_END]
    assert (report.topic, report.key, report.command_id) == ("parent.inbox", ID, sent.command_id)
    why = None if ok else "h: HFailed"
    assert child.reported == (
        ChildEnded(saga="kid", instance=KID, status=status, reason=why),
        sent.command_id,
    )
    outcome, answers = child.reported
    parent.reply(answers, outcome)
    assert parent.instance.steps["kid"].status is (
        StepStatus.SUCCEEDED if ok else StepStatus.FAILED
    )


def test_a_saga_started_without_a_parent_reports_nothing() -> None:
    child = SagaTest(Kid)
    child.start(Job(id=KID))
    reply(child, H)
    assert child.status == "completed"
    assert child.reported is None
    assert child.instance.reply_to is None


# --- loops ----------------------------------------------------------------------------------------


def looping(name: str) -> type[Saga]:
    class Looping(Saga, name=name):
        start, state, begin = Started, Flow, staticmethod(begin)
        a = A.step()
        b = B.step(max_visits=2)
        again = Choice(When(lambda s: s.rounds < len(s.skus), "b"), default="d")
        d = D.step()

        @evolve(B.done)
        def counted(state: Flow, event: Any) -> Flow:
            return replace(state, rounds=state.rounds + 1)

    return Looping


def test_a_loop_within_its_bound_runs_the_step_again_under_a_visit_key() -> None:
    test = SagaTest(looping("loop_ok"))
    test.start(Started(id=ID, skus=["x", "y"]))
    reply(test, A)
    first = reply(test, B)
    second = test.expect_command(B.do)
    assert (first.step, second.step) == ("b", "b~2")
    assert (first.command_id, second.command_id) == (cid("loop_ok", "b"), cid("loop_ok", "b~2"))
    passed = [e for e in test.journal if Kind(e.kind) is Kind.NODE_PASSED]
    assert [(e.step, e.reason) for e in passed] == [("again", "-> b")]
    test.reply(second, B.done(id=ID))
    passed = [e for e in test.journal if Kind(e.kind) is Kind.NODE_PASSED]
    assert [(e.step, e.node, e.reason) for e in passed][-1] == ("again~2", "again", "-> d")
    reply(test, D)
    assert test.status == "completed"
    assert test.instance.completed == ("a", "b", "b~2", "d")
    # Only the nodes on the loop are counted: the others are entered once by construction.
    assert test.instance.visits == {"b": 2, "again": 2}


def test_a_loop_beyond_its_bound_fails_the_saga_naming_the_step() -> None:
    test = SagaTest(looping("loop_over"))
    test.start(Started(id=ID, skus=["x", "y", "z"]))
    reply(test, A)
    reply(test, B)
    over = test.reply(test.expect_command(B.do, step="b~2"), B.done(id=ID))
    why = "step 'b' would run a visit 3; it allows 2"
    assert kinds(over) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_SUCCEEDED,
        Kind.NODE_PASSED,
        Kind.SAGA_COMPENSATING,
        Kind.COMPENSATION_SENT,
    ]
    assert [c.command_id for c in over.commands] == [cid("loop_over", "b~2.compensation")]
    assert [undo(test, family).step for family in (B, B, A)] == ["b~2", "b", "a"]
    assert test.status == "compensated"
    assert test.instance.reason == why


def test_an_operator_signal_naming_a_looped_step_answers_its_visit_in_flight() -> None:
    """Fixed: it matched the first visit, which had its answer, and was ignored as a duplicate."""
    test = SagaTest(looping("loop_signal"))
    test.start(Started(id=ID, skus=["x", "y", "z"]))
    reply(test, A)
    test.signal(B.done(id=ID))  # names the node: ``loop_signal/i-1/b``
    assert [s.step for s in test.outstanding] == ["b~2"]
    signalled = test.signal(B.done(id=ID), reason="done by hand")
    assert (signalled.entries[0].step, signalled.entries[0].command_id) == (
        "b~2",
        cid("loop_signal", "b~2"),
    )
    # A third visit is over the bound: b~2 is being undone, and a compensation's signal names
    # the node's compensation (``loop_signal/i-1/b.compensation``).
    assert test.status == "compensating"
    assert test.instance.steps["b~2"].status is StepStatus.COMPENSATING
    assert [s.step for s in test.outstanding] == ["b~2"]
    test.signal(B.undone(id=ID))
    assert [s.step for s in test.outstanding] == ["b"]


def test_an_operator_command_failed_naming_a_looped_step_fails_its_visit_in_flight() -> None:
    test = SagaTest(looping("loop_failed"))
    test.start(Started(id=ID, skus=["x", "y"]))
    reply(test, A)
    reply(test, B)
    failed = CommandFailed(error="ConnectionError", message="by hand")
    decision = test.feed(failed, f"loop_failed/{ID}/b", note="signal by tester: test")
    assert kinds(decision) == [Kind.INPUT_ACCEPTED, Kind.ATTEMPT_FAILED, Kind.TIMER_SCHEDULED]
    assert decision.entries[0].step == "b~2"


def test_an_unbounded_loop_is_refused_at_declaration_naming_the_cycle() -> None:
    with pytest.raises(DeclarationError, match=r"steps b -> again -> b form a loop with no bound"):

        class Endless(Saga, name="endless"):
            start, state, begin = Started, Flow, staticmethod(begin)
            a = A.step()
            b = B.step()
            again = Choice(When(lambda s: s.rounds < 3, "b"), default="d")
            d = D.step()


# --- Succeed and Fail -----------------------------------------------------------------------------


class Ends(Saga, name="ends"):
    start, state, begin = Started, Flow, staticmethod(begin)
    route = Choice(When(lambda s: s.express, "nothing_to_do"), default="a")
    nothing_to_do = Succeed("express orders need nothing")
    a = A.step()
    no_stock = Fail("out of stock", error="OutOfStock")


def test_succeed_completes_the_saga_with_its_reason_journaled() -> None:
    test = SagaTest(Ends)
    started = test.start(Started(id=ID, express=True))
    assert kinds(started) == [
        Kind.SAGA_STARTED,
        Kind.NODE_PASSED,
        Kind.NODE_PASSED,
        Kind.SAGA_COMPLETED,
    ]
    assert [(e.step, e.reason) for e in started.entries[1:3]] == [
        ("route", "-> nothing_to_do"),
        ("nothing_to_do", "express orders need nothing"),
    ]
    assert test.status == "completed"
    assert test.sent == []


def test_fail_fails_the_saga_with_its_reason_after_compensating() -> None:
    test = SagaTest(Ends)
    test.start(Started(id=ID))
    failed = test.reply(test.expect_command(A.do), A.done(id=ID))
    assert kinds(failed) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_SUCCEEDED,
        Kind.NODE_PASSED,
        Kind.SAGA_COMPENSATING,
        Kind.COMPENSATION_SENT,
    ]
    assert failed.entries[2].step == "no_stock"
    undo(test, A)
    assert test.status == "compensated"
    assert test.instance.reason == "out of stock"


class Refuses(Branch):
    e = E.step()
    refuse = Fail("refused by policy", error="Refused")


class JustC(Branch):
    c = C.step()


def refusing(name: str, **catch: Any) -> type[Saga]:
    class Refusing(Saga, name=name):
        start, state, begin = Started, Flow, staticmethod(begin)
        both = Parallel(JustC, Refuses, **catch)
        rescue = G.step(end=True)

    return Refusing


def test_fail_in_a_branch_is_caught_by_the_parallel_with_its_error_name() -> None:
    test = SagaTest(refusing("refused_caught", catch={"Refused": "rescue"}))
    test.start(Started(id=ID))
    reply(test, C)
    caught = test.reply(test.expect_command(E.do), E.done(id=ID))
    assert kinds(caught) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_SUCCEEDED,
        Kind.NODE_PASSED,
        Kind.BRANCH_FAILED,
        Kind.BLOCK_FAILED,
        Kind.COMMAND_SENT,
    ]
    assert (caught.entries[3].branch, caught.entries[3].reason) == (1, "refused by policy")
    assert [c.command_id for c in caught.commands] == [cid("refused_caught", "rescue")]
    reply(test, G)
    assert test.status == "completed"


def test_fail_in_a_branch_uncaught_fails_the_saga_and_undoes_both_branches() -> None:
    test = SagaTest(refusing("refused_uncaught", catch={"Other": "rescue"}))
    test.start(Started(id=ID))
    reply(test, E)
    reply(test, C)
    assert test.status == "compensating"
    assert [undo(test, family).step for family in (C, E)] == ["c", "e"]
    assert test.status == "compensated"
    assert test.instance.reason == "refused by policy"


# --- typed references -----------------------------------------------------------------------------

_d = D.step()
_rescue = G.step(end=True)
_quick = A.step(next=_d)
_slow = B.step(catch={B.failed: _rescue}, next=_d)


class Typed(Saga, name="typed"):
    start, state, begin = Started, Flow, staticmethod(begin)
    route = Choice(When(lambda s: s.express, _quick), default=_slow)
    quick = _quick
    slow = _slow
    rescue = _rescue
    d = _d


def test_targets_given_as_node_objects_resolve_to_their_names() -> None:
    definition = Typed.definition
    route = definition.flow["route"]
    assert [rule.target for rule in route.rules] == ["quick"]  # type: ignore[union-attr]
    assert route.default == "slow"  # type: ignore[union-attr]
    assert definition.tasks["quick"].next == ("d",)
    assert definition.tasks["slow"].catch == {"BFailed": "rescue"}
    assert definition.tasks["slow"].next == ("d",)
    test = SagaTest(Typed)
    test.start(Started(id=ID))
    reply(test, B, ok=False)
    reply(test, G)
    assert test.status == "completed"
    assert test.instance.completed == ("rescue",)


def test_a_target_object_that_is_not_a_step_of_the_saga_is_refused() -> None:
    stranger = H.step()
    with pytest.raises(
        DeclarationError, match=r"step 'a': targets .*which is not a step of the saga"
    ):

        class Lost(Saga, name="lost"):
            start, state, begin = Started, Flow, staticmethod(begin)
            a = A.step(next=stranger)


# --- declaration errors ---------------------------------------------------------------------------


class Jumps(Branch):
    b = B.step(next="c")


class Lands(Branch):
    c = C.step()


class NoItems(Branch):
    e = E.step()


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ({"a": A.step(next="nowhere")}, "step 'a' goes to unknown step 'nowhere'"),
        (
            {"a": A.step(catch={A.failed: "nowhere"})},
            "step 'a' catches 'AFailed' with unknown step 'nowhere'",
        ),
        ({"route": Choice(When(bool, "nowhere"))}, "step 'route': chooses unknown step 'nowhere'"),
        (
            {"both": Parallel(Jumps, Lands)},
            "step 'c' is reached from branch 0 of 'both' and from branch 1 of 'both'",
        ),
        (
            {"a": A.step(next="c"), "both": Parallel(Lands)},
            "step 'c' is reached from the main path and from branch 0 of 'both'",
        ),
        ({"lines": Map(None, NoItems)}, "step 'lines': a map needs items"),  # type: ignore[arg-type]
        (
            {"both": Parallel(Jumps, Lands, join="any")},
            "step 'both': join must be 'all' or 'first'",
        ),
        ({"nap": Sleep()}, "step 'nap': a sleep needs either seconds or until"),
        ({"a": A.step(max_visits=0)}, "step 'a': max_visits must be at least 1"),
        (
            {"lines": Map(lambda s: s.skus, NoItems, max_concurrency=0)},
            "step 'lines': max_concurrency and max_items must be at least 1",
        ),
    ],
)
def test_declaration_errors_name_the_step_and_the_field(
    nodes: dict[str, Any], message: str
) -> None:
    body = {"start": Started, "state": Flow, "begin": staticmethod(begin), **nodes}
    with pytest.raises(DeclarationError, match=message) as error:
        type("Broken", (Saga,), body, name="broken")
    assert "saga 'broken'" in str(error.value)


# --- early events ---------------------------------------------------------------------------------


def verifying(name: str, early: float | None) -> type[Saga]:
    class Verifying(Saga, name=name):
        start, state, begin = Started, Flow, staticmethod(begin)
        a = A.step()
        check = Wait(success=Verified, timeout=600, early=early)
        d = D.step()

    return Verifying


def test_an_early_event_is_kept_and_satisfies_its_wait_within_the_window() -> None:
    test = SagaTest(verifying("early_ok", early=60))
    test.start(Started(id=ID))
    kept = test.send(Verified(id=ID))
    assert kinds(kept) == [Kind.EVENT_KEPT]
    assert kept.entries[0].step == "check"
    assert len(test.instance.early) == 1
    test.advance(60)
    took = test.reply(test.expect_command(A.do), A.done(id=ID))
    assert kinds(took) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_SUCCEEDED,
        Kind.WAIT_STARTED,
        Kind.TIMER_SCHEDULED,
        Kind.INPUT_ACCEPTED,
        Kind.TIMER_CANCELLED,
        Kind.STEP_SUCCEEDED,
        Kind.COMMAND_SENT,
    ]
    assert took.entries[4].record == kept.entries[0].record
    assert took.entries[4].reason == "kept: it came before the wait started"
    assert test.instance.early == ()
    assert [c.command_id for c in took.commands] == [cid("early_ok", "d")]


def test_an_early_event_older_than_the_window_does_not_satisfy_the_wait() -> None:
    test = SagaTest(verifying("early_late", early=60))
    test.start(Started(id=ID))
    test.send(Verified(id=ID))
    test.advance(61)
    reply(test, A)
    assert test.instance.steps["check"].status is StepStatus.PENDING
    assert "timeout:check" in test.timers


@pytest.mark.parametrize("when", ["no-window", "after-the-wait"])
def test_an_event_no_wait_will_take_is_journaled_unmatched(when: str) -> None:
    test = SagaTest(verifying(f"unmatched_{when}", early=0 if when == "no-window" else 60))
    test.start(Started(id=ID))
    if when == "after-the-wait":
        reply(test, A)
        test.send(Verified(id=ID))  # takes the wait
        assert test.instance.steps["check"].status is StepStatus.SUCCEEDED
    unmatched = test.send(Verified(id=ID))
    assert kinds(unmatched) == [Kind.EVENT_UNMATCHED]
    assert unmatched.entries[0].step == "check"
    assert test.instance.early == ()


class Rechecking(Saga, name="rechecking"):
    start, state, begin = Started, Flow, staticmethod(begin)
    check = Wait(success=Verified, timeout=600, early=60, max_visits=2)
    b = B.step()
    again = Choice(When(lambda s: s.rounds < 2, "check"), default="d")
    d = D.step()

    @evolve(Verified)
    def verified(state: Flow, event: Verified) -> Flow:
        return replace(state, rounds=state.rounds + 1)


def test_an_early_event_is_kept_for_the_next_visit_of_a_looped_wait() -> None:
    test = SagaTest(Rechecking)
    test.start(Started(id=ID))
    test.send(Verified(id=ID))  # takes the first visit
    assert [s.step for s in test.outstanding] == ["b"]
    assert kinds(test.send(Verified(id=ID))) == [Kind.EVENT_KEPT]  # the wait may run again
    took = test.reply(test.expect_command(B.do), B.done(id=ID))
    accepted = [e for e in took.entries if Kind(e.kind) is Kind.INPUT_ACCEPTED]
    assert [e.step for e in accepted] == ["b", "check~2"]
    assert test.state.rounds == 2
    assert test.instance.steps["check~2"].status is StepStatus.SUCCEEDED
    reply(test, B, step="b~2")
    reply(test, D)
    assert test.status == "completed"
    assert test.instance.early == ()
    assert test.feed(Verified(id=ID)).ignored == "finished"


def test_verify_histories_replays_kept_events_and_a_child_start() -> None:
    """Fixed: an early event's decision (``EventKept``, ``EventUnmatched``) was read as part of
    the one before it, a kept event taken by a wait as an input of its own, and a child's start
    was decided again without its parent: every such journal "decided differently"."""
    early = SagaTest(verifying("verified_history", early=60))
    early.start(Started(id=ID))
    early.send(Verified(id=ID))
    reply(early, A)
    early.send(Verified(id=ID))  # nobody waits for it any more
    assert Kind.EVENT_UNMATCHED in kinds(early.journal)
    _, sent = child_started()
    child = SagaTest(Kid)
    child.start(sent.command, parent=sent)
    reply(child, H)
    report = verify_histories(Kid, [child.journal])
    assert (report.ok, report.instances) == (True, 1)
    report = verify_histories(early.definition, [early.journal])
    assert (report.ok, report.instances) == (True, 1)


# --- the kit checks every decision ----------------------------------------------------------------


def test_the_kit_checks_replay_and_snapshots_after_every_decision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kit calls ``assert_replays`` after every decision it accepts (every test of the
    constructs here runs through it), on the whole journal so far; and it fails on a journal
    that does not fold to the state."""
    checked: list[int] = []
    real = kit_module.assert_replays

    def counting(definition: Any, journal: Any, state: Any) -> None:
        checked.append(len(journal))
        real(definition, journal, state)

    monkeypatch.setattr(kit_module, "assert_replays", counting)
    test = SagaTest(Napping)
    decisions = [test.start(Started(id=ID)), test.reply(test.expect_command(A.do), A.done(id=ID))]
    decisions += test.advance(30)
    decisions.append(test.reply(test.expect_command(D.do), D.done(id=ID)))
    assert checked == [sum(len(d.entries) for d in decisions[: i + 1]) for i in range(4)]
    # And what it checks fails on a journal that does not fold to the state.
    with pytest.raises(AssertionError, match="journal positions"):
        real(test.definition, test.journal[1:], test.instance)
    with pytest.raises(AssertionError, match="differs from the state"):
        real(test.definition, test.journal, replace(test.instance, status=Status.RUNNING))
