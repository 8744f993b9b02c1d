"""Control-flow nodes inside one another: a parallel in a map's item, a child in a map, a loop
around a parallel. Through the public kit, every decision replayed (``verify_every_journal``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sagas import (
    Branch,
    Child,
    Choice,
    DeclarationError,
    Map,
    Parallel,
    Saga,
    Step,
    Succeed,
    When,
    evolve,
)
from sagas.testing import SagaTest
from stream_processors.core.journal import Kind
from tests.unit.flow_records import (
    ID,
    A,
    B,
    C,
    D,
    Flow,
    Job,
    Started,
    begin,
    begin_job,
    kinds,
    reply,
    verify_every_journal,
)


@pytest.fixture(autouse=True)
def _replayed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from verify_every_journal(monkeypatch)


class SideA(Branch):
    a = Step(A.do, success=A.done, failure=A.failed, build=lambda s, sku: A.do(id=f"{s.id}:{sku}"))


class SideB(Branch):
    b = Step(B.do, success=B.done, failure=B.failed, build=lambda s, sku: B.do(id=f"{s.id}:{sku}"))


class PerSku(Branch):
    both = Parallel(SideA, SideB)


class NestedMap(Saga, name="nested_map"):
    start = Started
    state = Flow
    begin = staticmethod(begin)

    items = Map(lambda s: s.skus, PerSku, max_concurrency=2)
    last = C.step()


def _answer(test: SagaTest, family: Any, step: str) -> None:
    sent = test.expect_command(family.do, step=step)
    test.reply(sent, family.done(id=sent.command.id))


def test_a_parallel_inside_each_map_item_keys_its_steps_by_item() -> None:
    test = SagaTest(NestedMap)
    test.start(Started(id=ID, skus=["x", "y", "z"]))
    keys = sorted(sent.step for sent in test.outstanding)
    assert keys == ["items[0]/a", "items[0]/b", "items[1]/a", "items[1]/b"]  # two items at once
    assert {sent.command.id for sent in test.outstanding} == {f"{ID}:x", f"{ID}:y"}
    _answer(test, A, "items[0]/a")
    _answer(test, B, "items[0]/b")  # item 0 done: item 2 starts
    assert sorted(s.step for s in test.outstanding) == [
        "items[1]/a",
        "items[1]/b",
        "items[2]/a",
        "items[2]/b",
    ]
    for step in ("items[1]/a", "items[1]/b", "items[2]/a", "items[2]/b"):
        family = A if step.endswith("/a") else B
        _answer(test, family, step)
    reply(test, C)
    assert test.status == "completed"
    assert len(test.instance.completed) == 7


class Worker(Saga, name="nested_child"):
    start = Job
    state = Flow
    begin = staticmethod(begin_job)

    work = D.step()


class ChildPerSku(Branch):
    run = Child(Worker, input=lambda s, sku: Job(id=f"{s.id}-{sku}"))


class MapOfChildren(Saga, name="map_of_children"):
    start = Started
    state = Flow
    begin = staticmethod(begin)

    children = Map(lambda s: s.skus, ChildPerSku, max_concurrency=5, tolerated_failures=1)


def test_a_map_of_child_sagas_starts_one_child_per_item_and_tolerates_one_failure() -> None:
    test = SagaTest(MapOfChildren)
    test.start(Started(id=ID, skus=["x", "y"]))
    started = sorted(test.outstanding, key=lambda s: s.step)
    assert [(s.kind, s.step, s.command.id) for s in started] == [
        ("child-start", "children[0]/run", f"{ID}-x"),
        ("child-start", "children[1]/run", f"{ID}-y"),
    ]
    test.child_ended(started[0], "completed")
    test.child_ended(started[1], "compensated")
    assert test.status == "completed"


class LoopA(Branch):
    a = A.step()


class LoopB(Branch):
    b = B.step()


class Looping(Saga, name="loop_parallel"):
    start = Started
    state = Flow
    begin = staticmethod(begin)

    both = Parallel(LoopA, LoopB, max_visits=2)
    again = Choice(When(lambda s: s.rounds < 2, "both"), default="done")
    done = Succeed()

    @evolve(A.done)
    def counted(state: Flow, event: Any) -> Flow:
        return Flow(id=state.id, skus=state.skus, rounds=state.rounds + 1)


def _answer_plain(test: SagaTest, family: Any, step: str) -> None:
    sent = test.expect_command(family.do, step=step)
    test.reply(sent, family.done(id=ID))


def test_a_loop_around_a_parallel_runs_its_branches_again_under_new_keys() -> None:
    test = SagaTest(Looping)
    test.start(Started(id=ID, skus=["x"]))
    _answer_plain(test, A, "a")
    _answer_plain(test, B, "b")
    assert sorted(s.step for s in test.outstanding) == ["a~2", "b~2"]
    _answer_plain(test, A, "a~2")
    _answer_plain(test, B, "b~2")
    assert test.status == "completed"
    assert Kind.BLOCK_SUCCEEDED in kinds(test.journal)
    assert test.instance.visits["both"] == 2


def test_a_builder_that_takes_the_wrong_arguments_fails_at_declaration() -> None:
    with pytest.raises(DeclarationError, match=r"step 'a2'.*build.*\(state\)"):

        class Wrong(Saga, name="wrong_arity"):
            start = Started
            state = Flow
            begin = staticmethod(begin)

            a2 = Step(A.do, success=A.done, build=lambda s, item: A.do(id=s.id))

    with pytest.raises(DeclarationError, match=r"step 'a3'.*build.*\(state, item\)"):

        class InMap(Branch):
            a3 = Step(A.do, success=A.done, build=lambda s: A.do(id=s.id))

        class WrongInMap(Saga, name="wrong_arity_map"):
            start = Started
            state = Flow
            begin = staticmethod(begin)

            m = Map(lambda s: s.skus, InMap)
