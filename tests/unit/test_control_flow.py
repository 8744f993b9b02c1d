"""Control flow through the public test kit: Choice, Parallel (joins, cancellation, compensation
across branches), the a->(b, c)->d join, and Map (concurrency, gathering, tolerated failures).

Every saga is declared with the public API (``sagas``, ``sagas.flow``) and run by ``SagaTest``
on its virtual clock; the kit checks the event-sourcing invariants (replay, snapshots, timers)
after every decision. Sleeps, child sagas, loops, ends, typed references, declaration errors
and early events are in ``test_control_flow_more.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from sagas import Compensate, Saga, Step, Wait
from sagas.flow import Branch, Choice, Map, Parallel, Sleep, When
from sagas.testing import SagaTest
from stream_processors.core.instance import BranchStatus, StepStatus
from stream_processors.core.journal import Kind
from tests.unit.flow_records import (
    ID,
    A,
    B,
    C,
    D,
    E,
    F,
    Flow,
    G,
    Line,
    Pack,
    Packed,
    PackFailed,
    Started,
    Unpack,
    Unpacked,
    Verified,
    begin,
    cid,
    kinds,
    reply,
    undo,
    verify_every_journal,
)


@pytest.fixture(autouse=True)
def decisions_replay(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from verify_every_journal(monkeypatch)


# --- Choice ---------------------------------------------------------------------------------------


class Routed(Saga, name="routed"):
    start, state, begin = Started, Flow, staticmethod(begin)
    route = Choice(
        When(lambda s: s.express, "fast"),
        When(lambda s: len(s.skus) > 1, "bulk"),
        default="slow",
    )
    fast = A.step(end=True)
    bulk = B.step(end=True)
    slow = C.step()


@pytest.mark.parametrize(
    ("express", "skus", "target", "family"),
    [
        (True, ["x", "y"], "fast", A),  # both rules hold: the first wins
        (False, ["x", "y"], "bulk", B),
        (False, ["x"], "slow", C),  # no rule: the default
    ],
)
def test_a_choice_takes_the_first_rule_that_holds_else_its_default(
    express: bool, skus: list[str], target: str, family: Any
) -> None:
    test = SagaTest(Routed)
    started = test.start(Started(id=ID, express=express, skus=skus))
    assert kinds(started) == [Kind.SAGA_STARTED, Kind.NODE_PASSED, Kind.COMMAND_SENT]
    passed = started.entries[1]
    assert (passed.step, passed.node, passed.reason) == ("route", "route", f"-> {target}")
    assert [c.command_id for c in started.commands] == [cid("routed", target)]
    reply(test, family)
    assert test.status == "completed"
    assert test.instance.completed == (target,)


class Strict(Saga, name="strict"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    route = Choice(When(lambda s: s.express, "fast"))
    fast = B.step()


def test_a_choice_with_no_match_and_no_default_fails_the_saga_naming_the_choice() -> None:
    test = SagaTest(Strict)
    test.start(Started(id=ID))
    decision = test.reply(test.expect_command(A.do), A.done(id=ID))
    why = "choice 'route': no rule matched and there is no default"
    assert kinds(decision) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_SUCCEEDED,
        Kind.NODE_PASSED,
        Kind.SAGA_COMPENSATING,
        Kind.COMPENSATION_SENT,
    ]
    assert decision.entries[2].reason == why
    assert [c.command_id for c in decision.commands] == [cid("strict", "a.compensation")]
    undo(test, A)
    assert test.status == "compensated"
    assert test.instance.reason == why


class Left(Branch):
    pick = Choice(When(lambda s: s.express, "quick"), default="careful")
    quick = A.step(end=True)
    careful = B.step()


class Right(Branch):
    c = C.step()


class BranchChoice(Saga, name="branch_choice"):
    start, state, begin = Started, Flow, staticmethod(begin)
    both = Parallel(Left, Right)
    d = D.step()


@pytest.mark.parametrize(("express", "family", "step"), [(True, A, "quick"), (False, B, "careful")])
def test_a_choice_inside_a_parallel_branch(express: bool, family: Any, step: str) -> None:
    test = SagaTest(BranchChoice)
    started = test.start(Started(id=ID, express=express))
    passed = next(e for e in started.entries if Kind(e.kind) is Kind.NODE_PASSED)
    assert (passed.step, passed.block, passed.branch, passed.reason) == (
        "pick",
        "both",
        0,
        f"-> {step}",
    )
    assert sorted(c.command_id for c in started.commands) == [
        cid("branch_choice", "c"),
        cid("branch_choice", step),
    ]
    reply(test, family)
    assert test.instance.blocks["both"].branches == (BranchStatus.SUCCEEDED, BranchStatus.RUNNING)
    reply(test, C)
    reply(test, D)
    assert test.status == "completed"
    assert test.instance.completed == (step, "c", "d")


# --- Parallel -------------------------------------------------------------------------------------


class OnlyB(Branch):
    b = B.step()


class OnlyC(Branch):
    c = C.step()


class Both(Saga, name="both"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    both = Parallel(OnlyB, OnlyC)
    d = D.step()


def test_a_parallel_joined_on_all_waits_for_every_branch() -> None:
    test = SagaTest(Both)
    test.start(Started(id=ID))
    forked = test.reply(test.expect_command(A.do), A.done(id=ID))
    assert kinds(forked)[2:] == [
        Kind.BLOCK_STARTED,
        Kind.BRANCH_STARTED,
        Kind.COMMAND_SENT,
        Kind.BRANCH_STARTED,
        Kind.COMMAND_SENT,
    ]
    assert [c.command_id for c in forked.commands] == [cid("both", "b"), cid("both", "c")]
    half = test.reply(test.expect_command(C.do), C.done(id=ID))  # the second branch first
    assert kinds(half) == [Kind.INPUT_ACCEPTED, Kind.STEP_SUCCEEDED, Kind.BRANCH_SUCCEEDED]
    assert half.commands == []
    joined = test.reply(test.expect_command(B.do), B.done(id=ID))
    assert kinds(joined) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_SUCCEEDED,
        Kind.BRANCH_SUCCEEDED,
        Kind.BLOCK_SUCCEEDED,
        Kind.COMMAND_SENT,
    ]
    assert [c.command_id for c in joined.commands] == [cid("both", "d")]
    reply(test, D)
    assert test.status == "completed"
    assert test.instance.completed == ("a", "c", "b", "d")


class Race(Saga, name="race"):
    start, state, begin = Started, Flow, staticmethod(begin)
    both = Parallel(OnlyB, OnlyC, join="first")
    d = D.step()


def raced() -> SagaTest:
    """A first-joined race whose branch ``b`` succeeded: ``c`` is cancelled, in flight."""
    test = SagaTest(Race)
    test.start(Started(id=ID))
    first = test.reply(test.expect_command(B.do), B.done(id=ID))
    assert kinds(first) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_SUCCEEDED,
        Kind.BRANCH_SUCCEEDED,
        Kind.BRANCH_CANCELLED,
        Kind.STEP_CANCELLED,
        Kind.BLOCK_SUCCEEDED,
        Kind.COMMAND_SENT,
    ]
    assert first.entries[3].branch == 1
    assert first.entries[4].step == "c"
    assert [c.command_id for c in first.commands] == [cid("race", "d")]
    assert test.instance.steps["c"].status is StepStatus.CANCELLED
    return test


def test_join_first_goes_on_at_the_first_success_and_undoes_a_late_sibling_success() -> None:
    test = raced()
    reply(test, D)
    assert test.status == "running"  # c's command is still in flight
    late = test.reply(test.expect_command(C.do), C.done(id=ID))
    assert kinds(late) == [Kind.INPUT_ACCEPTED, Kind.STEP_SUCCEEDED, Kind.COMPENSATION_SENT]
    assert [c.command_id for c in late.commands] == [cid("race", "c.compensation")]
    assert test.status == "running"
    done = undo(test, C)
    assert done.step == "c"
    assert test.status == "completed"
    assert test.instance.steps["c"].status is StepStatus.COMPENSATED
    assert test.instance.completed == ("b", "d", "c")


def test_join_first_a_late_sibling_failure_only_ends_it() -> None:
    test = raced()
    late = test.reply(test.expect_command(C.do), C.failed(id=ID))
    assert kinds(late) == [Kind.INPUT_ACCEPTED, Kind.STEP_FAILED]
    reply(test, D)
    assert test.status == "completed"
    assert [s.command_id for s in test.sent] == [
        cid("race", "b"),
        cid("race", "c"),
        cid("race", "d"),
    ]


def test_join_first_a_branch_that_fails_before_any_succeeded_fails_the_parallel() -> None:
    test = SagaTest(Race)
    test.start(Started(id=ID))
    failed = test.reply(test.expect_command(C.do), C.failed(id=ID))
    assert kinds(failed) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_FAILED,
        Kind.BRANCH_FAILED,
        Kind.BRANCH_CANCELLED,
        Kind.STEP_CANCELLED,
        Kind.BLOCK_FAILED,
        Kind.SAGA_COMPENSATING,
    ]
    undone = test.reply(test.expect_command(B.do), B.done(id=ID))
    assert [c.command_id for c in undone.commands] == [cid("race", "b.compensation")]
    undo(test, B)
    assert test.status == "compensated"


class NapBranch(Branch):
    nap = Sleep(seconds=100)


class Timed(Saga, name="timed", deadline=50):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    both = Parallel(OnlyB, NapBranch)
    d = D.step()


def test_the_deadline_in_a_parallel_stops_a_sleep_and_awaits_a_command_before_undoing() -> None:
    test = SagaTest(Timed)
    test.start(Started(id=ID))
    reply(test, A)
    (fired,) = test.advance(50)
    assert kinds(fired) == [
        Kind.TIMER_FIRED,
        Kind.SAGA_COMPENSATING,
        Kind.BRANCH_CANCELLED,
        Kind.BRANCH_CANCELLED,
        Kind.STEP_CANCELLED,  # b: in flight
        Kind.TIMER_CANCELLED,
        Kind.STEP_FAILED,  # nap
        Kind.BLOCK_CANCELLED,
    ]
    assert [e.step for e in fired.entries[4:8]] == ["b", None, "nap", "both"]
    assert fired.entries[5].timer == "sleep:nap"
    assert test.instance.blocks["both"].status is BranchStatus.CANCELLED
    assert test.instance.blocks["both"].branches == (BranchStatus.CANCELLED,) * 2
    assert [s.step for s in test.outstanding] == ["b"]
    reply(test, B)
    assert [undo(test, family).step for family in (B, A)] == ["b", "a"]
    assert test.status == "compensated"
    assert test.instance.reason == "deadline exceeded"


def test_cancelling_a_saga_in_a_map_cancels_its_items_and_undoes_those_done() -> None:
    """Fixed: the map stayed "running" in the compensated instance (its branches shown active)."""
    test = started_map(mapped("map_cancelled", max_concurrency=2), 4)
    packed(test, 1)
    cancelled = test.cancel()
    assert kinds(cancelled) == [
        Kind.OPERATOR_ACTION,
        Kind.SAGA_COMPENSATING,
        Kind.BRANCH_CANCELLED,  # item 0 (item 1 succeeded, items 2 and 3: 2 runs, 3 queued)
        Kind.BRANCH_CANCELLED,
        Kind.STEP_CANCELLED,
        Kind.STEP_CANCELLED,
        Kind.BLOCK_CANCELLED,
    ]
    assert [e.branch for e in cancelled.entries[2:4]] == [0, 2]
    assert [e.step for e in cancelled.entries[4:6]] == [key(0), key(2)]
    assert test.instance.blocks["lines"].branches == (
        BranchStatus.CANCELLED,
        BranchStatus.SUCCEEDED,
        BranchStatus.CANCELLED,
        BranchStatus.QUEUED,
    )
    packed(test, 2, ok=False)
    packed(test, 0)  # done after all: undone, latest completed first
    undone = [test.expect_command(Unpack).step]
    test.reply(test.expect_command(Unpack), Unpacked(sku="sku-0"))
    undone.append(test.expect_command(Unpack).step)
    test.reply(test.expect_command(Unpack), Unpacked(sku="sku-1"))
    assert undone == [key(0), key(1)]
    undo(test, A)
    assert test.status == "compensated"
    assert not any(isinstance(s.command, Pack) and s.step == key(3) for s in test.sent)


class Two(Branch):
    b1 = B.step()
    b2 = C.step()


class Other(Branch):
    e1 = E.step()
    e2 = F.step()


class Interleaved(Saga, name="interleaved"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    both = Parallel(Two, Other)
    d = D.step()


def test_a_failed_branch_compensates_every_branch_in_reverse_order_of_completion() -> None:
    test = SagaTest(Interleaved)
    test.start(Started(id=ID))
    reply(test, A)
    reply(test, B)  # b1
    reply(test, E)  # e1
    reply(test, C)  # b2: branch 0 succeeded
    failed = test.reply(test.expect_command(F.do), F.failed(id=ID))
    assert kinds(failed) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_FAILED,
        Kind.BRANCH_FAILED,
        Kind.BLOCK_FAILED,
        Kind.SAGA_COMPENSATING,
        Kind.COMPENSATION_SENT,
    ]
    assert test.instance.completed == ("a", "b1", "e1", "b2")
    undone = [undo(test, family).step for family in (C, E, B, A)]
    assert undone == ["b2", "e1", "b1", "a"]
    assert [s.command_id for s in test.sent if s.compensation] == [
        cid("interleaved", f"{step}.compensation") for step in undone
    ]
    assert test.status == "compensated"
    assert test.instance.reason == "e2: FFailed"


class Slow(Branch):
    b = B.step()


class Waits(Branch):
    wait = Wait(success=Verified, timeout=600)


class Naps(Branch):
    nap = Sleep(seconds=600)


class Fails(Branch):
    e = E.step()


class Siblings(Saga, name="siblings"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    all = Parallel(Slow, Waits, Naps, Fails)


def siblings_failed() -> SagaTest:
    test = SagaTest(Siblings)
    test.start(Started(id=ID))
    reply(test, A)
    assert set(test.timers) == {"timeout:wait", "sleep:nap"}
    failed = test.reply(test.expect_command(E.do), E.failed(id=ID))
    why = "cancelled: e: EFailed"
    assert kinds(failed) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_FAILED,
        Kind.BRANCH_FAILED,
        *[Kind.BRANCH_CANCELLED] * 3,
        Kind.STEP_CANCELLED,  # b: its command is in flight
        Kind.TIMER_CANCELLED,
        Kind.STEP_FAILED,  # wait: nothing in flight
        Kind.TIMER_CANCELLED,
        Kind.STEP_FAILED,  # nap
        Kind.BLOCK_FAILED,
        Kind.SAGA_COMPENSATING,
    ]
    assert [e.branch for e in failed.entries[3:6]] == [0, 1, 2]
    assert {e.reason for e in failed.entries[3:7]} == {why}
    assert [e.step for e in failed.entries[6:11:2]] == ["b", "wait", "nap"]
    assert [e.timer for e in failed.entries[7:11:2]] == ["timeout:wait", "sleep:nap"]
    assert failed.commands == []
    assert test.timers == {}
    assert test.status == "compensating"
    assert [s.step for s in test.outstanding] == ["b"]  # awaited before compensating
    return test


def test_a_failed_branch_cancels_waits_and_sleeps_at_once_and_awaits_a_command() -> None:
    test = siblings_failed()
    late = test.reply(test.expect_command(B.do), B.done(id=ID))
    assert kinds(late) == [Kind.INPUT_ACCEPTED, Kind.STEP_SUCCEEDED, Kind.COMPENSATION_SENT]
    assert [c.command_id for c in late.commands] == [cid("siblings", "b.compensation")]
    undo(test, B)
    undo(test, A)
    assert test.status == "compensated"


def test_a_cancelled_sibling_that_fails_leaves_only_the_earlier_steps_to_undo() -> None:
    test = siblings_failed()
    late = test.reply(test.expect_command(B.do), B.failed(id=ID))
    assert kinds(late) == [Kind.INPUT_ACCEPTED, Kind.STEP_FAILED, Kind.COMPENSATION_SENT]
    assert [c.command_id for c in late.commands] == [cid("siblings", "a.compensation")]
    undo(test, A)
    assert test.status == "compensated"


class SlowWithTimeout(Branch):
    b = B.step(timeout=10)


class TimedSiblings(Saga, name="timed_siblings"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    both = Parallel(SlowWithTimeout, Fails)


def test_the_timeout_of_a_cancelled_step_unblocks_the_compensation() -> None:
    test = SagaTest(TimedSiblings)
    test.start(Started(id=ID))
    reply(test, A)
    reply(test, E, ok=False)
    assert test.instance.steps["b"].status is StepStatus.CANCELLED
    assert "timeout:b" in test.timers  # still bounds the wait for its reply
    (fired,) = test.advance(10)
    assert kinds(fired) == [Kind.TIMER_FIRED, Kind.STEP_FAILED, Kind.COMPENSATION_SENT]
    assert [c.command_id for c in fired.commands] == [cid("timed_siblings", "a.compensation")]
    undo(test, A)
    assert test.status == "compensated"


def results(state: Flow, replies: list[Any]) -> Flow:
    return replace(state, gathered=[type(r).__name__ for r in replies])


class Gathered(Saga, name="gathered"):
    start, state, begin = Started, Flow, staticmethod(begin)
    both = Parallel(OnlyB, OnlyC, gather=results)


def test_a_parallel_gathers_each_branch_last_reply_in_branch_order() -> None:
    test = SagaTest(Gathered)
    test.start(Started(id=ID))
    reply(test, C)
    reply(test, B)
    assert test.status == "completed"
    assert test.state.gathered == ["BDone", "CDone"]


class Ok(Branch):
    b = B.step()


class Bad(Branch):
    e = E.step()


class Rescued(Saga, name="rescued"):
    start, state, begin = Started, Flow, staticmethod(begin)
    both = Parallel(Ok, Bad, catch={E.failed: "rescue"}, next="d")
    rescue = G.step(end=True)
    d = D.step()


def test_a_parallel_catch_goes_to_another_step_without_compensating() -> None:
    test = SagaTest(Rescued)
    test.start(Started(id=ID))
    reply(test, B)
    caught = test.reply(test.expect_command(E.do), E.failed(id=ID))
    assert kinds(caught) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_FAILED,
        Kind.BRANCH_FAILED,
        Kind.BLOCK_FAILED,
        Kind.COMMAND_SENT,
    ]
    assert [c.command_id for c in caught.commands] == [cid("rescued", "rescue")]
    reply(test, G)
    assert test.status == "completed"
    assert test.instance.completed == ("b", "rescue")
    assert not any(s.compensation for s in test.sent)
    assert "d" not in test.instance.steps


# --- the join of a step with several next ------------------------------------------------------


class Fork(Saga, name="fork"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step(next=("b", "c"))
    b = B.step(next="d")
    c = C.step(next="d")
    d = D.step()


@pytest.mark.parametrize("first", ["b", "c"])
def test_a_fork_joins_where_its_branches_meet_and_sends_the_join_once(first: str) -> None:
    """The old engine sent ``d`` when ``b`` succeeded and again (same id) when ``c`` did."""
    test = SagaTest(Fork)
    test.start(Started(id=ID))
    forked = test.reply(test.expect_command(A.do), A.done(id=ID))
    assert [c.command_id for c in forked.commands] == [cid("fork", "b"), cid("fork", "c")]
    one, other = (B, C) if first == "b" else (C, B)
    assert reply(test, one).command_id == cid("fork", first)
    assert not any(isinstance(s.command, D.do) for s in test.sent)
    joined = test.reply(test.expect_command(other.do), other.done(id=ID))
    assert [c.command_id for c in joined.commands] == [cid("fork", "d")]
    reply(test, D)
    assert test.status == "completed"
    assert [s.command_id for s in test.sent if isinstance(s.command, D.do)] == [cid("fork", "d")]
    assert test.instance.completed.count("d") == 1
    assert test.instance.completed[-1] == "d"
    assert test.instance.blocks["a.fork"].status is BranchStatus.SUCCEEDED


class ForkWithFlow(Saga, name="fork_flow"):
    """A fork whose branches reach the join through a sleep, a choice and a catch."""

    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step(next=("b", "nap"))
    b = B.step(catch={B.failed: "d"}, next="pick")
    pick = Choice(When(lambda s: s.express, "e"), default="d")
    e = E.step(next="d")
    nap = Sleep(seconds=5, next="d")
    d = D.step()


@pytest.mark.parametrize(
    ("express", "b_ok", "steps"),
    [(True, True, ["b", "e"]), (False, True, ["b"]), (False, False, ["b"])],
)
def test_a_fork_joins_once_whether_its_branches_reach_the_join_by_sleep_choice_or_catch(
    express: bool, b_ok: bool, steps: list[str]
) -> None:
    """Fixed: only a task's ``next`` was cut at the join; a sleep's, a choice's or a catch's
    way to it made the join a node of two paths, and the saga was refused at declaration."""
    test = SagaTest(ForkWithFlow)
    test.start(Started(id=ID, express=express))
    reply(test, A)
    reply(test, B, ok=b_ok)
    if express:
        reply(test, E)
    assert not any(isinstance(s.command, D.do) for s in test.sent)
    (woke,) = test.advance(5)
    assert [c.command_id for c in woke.commands] == [cid("fork_flow", "d")]
    reply(test, D)
    assert test.status == "completed"
    assert [s.step for s in test.sent] == ["a", *steps, "d"]
    assert test.instance.completed.count("d") == 1


def test_a_fork_branch_ends_where_it_went_to_the_join() -> None:
    definition = ForkWithFlow.definition
    assert definition.flow["a.fork"].next == ("d",)  # type: ignore[union-attr]
    assert definition.tasks["b"].catch == {"BFailed": "a.fork.0.joined"}
    pick = definition.flow["pick"]
    assert pick.default == "a.fork.0.joined"  # type: ignore[union-attr]
    assert definition.tasks["e"].next == ()
    assert definition.flow["nap"].next == ()  # type: ignore[union-attr]


# --- Map ------------------------------------------------------------------------------------------


class PackEach(Branch):
    pack = Step(
        Pack,
        success=Packed,
        failure=PackFailed,
        compensate=Compensate(Unpack, success=Unpacked),
    )


def boxes(state: Flow, results: list[Any]) -> Flow:
    return replace(state, gathered=["none" if r is None else r.box for r in results])


def mapped(name: str, **options: Any) -> type[Saga]:
    """``a``, then a map of ``PackEach`` over the state's ``lines``, then ``d``."""

    class Mapped(Saga, name=name):
        start, state, begin = Started, Flow, staticmethod(begin)
        a = A.step()
        lines = Map(lambda s: s.lines, PackEach, gather=boxes, **options)
        d = D.step()

    return Mapped


LINES = [Line(sku=f"sku-{i}", qty=i + 1) for i in range(4)]


def key(index: int) -> str:
    return f"lines[{index}]/pack"


def started_map(saga: type[Saga], count: int) -> SagaTest:
    test = SagaTest(saga)
    test.start(Started(id=ID, lines=LINES[:count]))
    reply(test, A)
    return test


def packed(test: SagaTest, index: int, ok: bool = True) -> Any:
    sent = test.expect_command(Pack, step=key(index))
    sku = LINES[index].sku
    return test.reply(sent, Packed(sku=sku, box=f"box-{index}") if ok else PackFailed(sku=sku))


def test_a_map_runs_at_most_max_concurrency_items_and_gathers_results_in_item_order() -> None:
    saga = mapped("map_two", max_concurrency=2)
    test = started_map(saga, 4)
    assert [s.step for s in test.outstanding] == [key(0), key(1)]
    first = test.sent[1]
    assert first.command == Pack(id=ID, sku="sku-0", qty=1)  # built from the record item
    assert first.command_id == cid("map_two", "lines[0]/pack")
    assert test.instance.blocks["lines"].branches == (
        BranchStatus.RUNNING,
        BranchStatus.RUNNING,
        BranchStatus.QUEUED,
        BranchStatus.QUEUED,
    )
    next_one = packed(test, 1)  # out of order: the second item first
    assert kinds(next_one) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_SUCCEEDED,
        Kind.BRANCH_SUCCEEDED,
        Kind.BRANCH_STARTED,
        Kind.COMMAND_SENT,
    ]
    assert next_one.entries[3].branch == 2
    assert [s.step for s in test.outstanding] == [key(0), key(2)]
    packed(test, 2)
    assert [s.step for s in test.outstanding] == [key(0), key(3)]
    packed(test, 3)
    joined = packed(test, 0)
    assert kinds(joined)[-2:] == [Kind.BLOCK_SUCCEEDED, Kind.COMMAND_SENT]
    assert test.state.gathered == ["box-0", "box-1", "box-2", "box-3"]
    reply(test, D)
    assert test.status == "completed"
    ids = [s.command_id for s in test.sent if isinstance(s.command, Pack)]
    assert ids == [cid("map_two", key(i)) for i in (0, 1, 2, 3)]
    assert len(set(ids)) == 4


class PackDicts(Saga, name="pack_dicts"):
    start, state, begin = Started, Flow, staticmethod(begin)
    lines = Map(lambda s: [{"sku": sku, "qty": 7} for sku in s.skus], PackEach, gather=boxes)


def test_a_map_item_command_is_built_from_a_dict_item_and_the_state() -> None:
    test = SagaTest(PackDicts)
    test.start(Started(id=ID, skus=["x", "y"]))
    assert [s.command for s in test.outstanding] == [
        Pack(id=ID, sku="x", qty=7),
        Pack(id=ID, sku="y", qty=7),
    ]
    test.reply(test.expect_command(Pack, step=key(1)), Packed(sku="y", box="by"))
    test.reply(test.expect_command(Pack, step=key(0)), Packed(sku="x", box="bx"))
    assert test.status == "completed"
    assert test.state.gathered == ["bx", "by"]


@pytest.mark.parametrize(
    ("options", "count", "failures"),
    [({"tolerated_failures": 1}, 3, [1]), ({"tolerated_percentage": 50}, 4, [0, 3])],
)
def test_failures_under_the_tolerance_let_the_map_succeed_with_none_results(
    options: dict[str, Any], count: int, failures: list[int]
) -> None:
    test = started_map(mapped("map_tolerant", **options), count)
    for index in range(count):
        decision = packed(test, index, ok=index not in failures)
        if index in failures:
            assert kinds(decision)[:3] == [
                Kind.INPUT_ACCEPTED,
                Kind.STEP_FAILED,
                Kind.BRANCH_FAILED,
            ]
    expected = ["none" if i in failures else f"box-{i}" for i in range(count)]
    assert test.state.gathered == expected
    reply(test, D)
    assert test.status == "completed"
    assert not any(s.compensation for s in test.sent)


@pytest.mark.parametrize("options", [{"tolerated_failures": 1}, {"tolerated_percentage": 25}])
def test_failures_over_the_tolerance_fail_the_map_cancel_running_items_and_compensate(
    options: dict[str, Any],
) -> None:
    test = started_map(mapped("map_intolerant", **options), 4)
    packed(test, 0)
    packed(test, 1, ok=False)  # tolerated: one of four
    over = packed(test, 2, ok=False)
    assert kinds(over) == [
        Kind.INPUT_ACCEPTED,
        Kind.STEP_FAILED,
        Kind.BRANCH_FAILED,
        Kind.BRANCH_CANCELLED,
        Kind.STEP_CANCELLED,
        Kind.BLOCK_FAILED,
        Kind.SAGA_COMPENSATING,
    ]
    assert (over.entries[3].branch, over.entries[4].step) == (3, key(3))
    assert over.commands == []
    assert test.status == "compensating"
    packed(test, 3)  # the cancelled item succeeded after all: it is undone first
    undone = test.expect_command(Unpack)
    assert (undone.step, undone.command) == (key(3), Unpack(id=ID, sku="sku-3", qty=4))
    test.reply(undone, Unpacked(sku="sku-3"))
    test.reply(test.expect_command(Unpack, step=key(0)), Unpacked(sku="sku-0"))
    undo(test, A)
    assert test.status == "compensated"
    assert test.instance.reason == f"{key(2)}: PackFailed"
    assert "d" not in test.instance.steps


def test_an_operator_signal_answers_a_map_item_by_node_or_by_its_own_key() -> None:
    test = started_map(mapped("map_signal", max_concurrency=2), 3)
    by_node = test.signal(Packed(sku="sku-0", box="by-hand"))  # ``map_signal/i-1/pack``
    assert by_node.entries[0].step == key(0)  # the first item in flight
    assert [s.step for s in test.outstanding] == [key(1), key(2)]
    by_key = test.signal(Packed(sku="sku-2", box="b"), command_id=f"map_signal/{ID}/{key(2)}")
    assert by_key.entries[0].step == key(2)
    assert [s.step for s in test.outstanding] == [key(1)]


def test_a_map_item_retried_after_a_transient_failure_gets_its_own_attempt_id() -> None:
    test = started_map(mapped("map_retry"), 2)
    test.fail_transiently(test.expect_command(Pack, step=key(0)))
    assert test.due(f"retry:{key(0)}") == test.now_ms + 1_000
    test.advance(1)
    retried = test.expect_command(Pack, step=key(0))
    assert (retried.attempt, retried.command_id) == (2, cid("map_retry", key(0), 2))
    assert retried.idempotency_key == f"map_retry/{ID}/{key(0)}"
    packed(test, 0)
    packed(test, 1)
    assert test.state.gathered == ["box-0", "box-1"]


def test_a_map_over_max_items_fails_the_saga_with_a_reason() -> None:
    test = started_map(mapped("map_capped", max_items=2), 3)
    why = "map 'lines': 3 items, at most 2 allowed"
    passed = next(e for e in test.journal if Kind(e.kind) is Kind.NODE_PASSED)
    assert (passed.step, passed.reason) == ("lines", why)
    assert test.status == "compensating"
    undo(test, A)
    assert test.status == "compensated"
    assert test.instance.reason == why
    assert not any(isinstance(s.command, Pack) for s in test.sent)


def test_a_map_over_an_empty_list_succeeds_at_once() -> None:
    test = SagaTest(mapped("map_empty"))
    test.start(Started(id=ID))
    joined = test.reply(test.expect_command(A.do), A.done(id=ID))
    assert kinds(joined)[2:] == [Kind.BLOCK_STARTED, Kind.BLOCK_SUCCEEDED, Kind.COMMAND_SENT]
    assert joined.entries[2].attempt == 0  # no items
    assert [c.command_id for c in joined.commands] == [cid("map_empty", "d")]
    assert test.state.gathered == []
