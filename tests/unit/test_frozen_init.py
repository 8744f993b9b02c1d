"""``fast_init``: a frozen dataclass's direct-storing ``__init__`` acts as dataclasses' own."""

from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass, field
from typing import Any

import pytest

from examples.order_fulfillment.messages import OrderPlaced
from stream_processors.codecs.frozen import fast_init
from stream_processors.core.instance import Instance, StepState, StepStatus
from stream_processors.core.journal import JournalEntry


def _classes(slots: bool) -> tuple[Any, Any]:
    def make() -> Any:
        class Point:
            x: int
            y: int = 2
            tags: dict[str, int] = field(default_factory=dict)
            label: str | None = None

        return dataclass(frozen=True, slots=slots)(Point)

    return make(), fast_init(make())


@pytest.mark.parametrize("slots", [False, True])
def test_the_same_objects_as_the_dataclass_init(slots: bool) -> None:
    plain, fast = _classes(slots)
    assert fast.__init__.__code__.co_filename == "<string>"
    assert fast.__init__ is not plain.__init__
    cases: list[tuple[tuple[int, ...], dict[str, Any]]] = [
        ((1,), {}),
        ((1, 3), {"label": "a"}),
        ((), {"x": 5, "tags": {"a": 1}}),
    ]
    for args, kwargs in cases:
        a, b = plain(*args, **kwargs), fast(*args, **kwargs)
        assert dataclasses.asdict(a) == dataclasses.asdict(b)
        assert repr(a).split("(", 1)[1] == repr(b).split("(", 1)[1]
    one, two = fast(1), fast(1)
    assert one == two and one is not two
    assert one.tags is not two.tags  # a fresh default per object, as the factory gives
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.x = 3
    with pytest.raises(TypeError):
        fast()
    with pytest.raises(TypeError):
        fast(1, nope=2)


def test_what_it_cannot_reproduce_is_left_alone() -> None:
    @dataclass(frozen=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            if self.x < 0:
                raise ValueError(self.x)

    @dataclass(frozen=True)
    class WithInitVar:
        x: int
        scale: InitVar[int] = 1

    @dataclass(frozen=True, kw_only=True)
    class KeywordOnly:
        x: int

    for cls in (Checked, WithInitVar, KeywordOnly):
        before = cls.__init__
        assert fast_init(cls).__init__ is before
    with pytest.raises(ValueError):
        Checked(-1)


def test_a_frozen_slotted_instance_hashes_as_before() -> None:
    step = StepState(StepStatus.PENDING, "c/1", 1, 5, "payment", "", 0)
    again = StepState(StepStatus.PENDING, "c/1", 1, 5, "payment", "", 0)
    assert step == again and hash(step) == hash(again)


def test_the_engines_records_have_it() -> None:
    for cls in (JournalEntry, OrderPlaced, Instance, StepState):
        assert "__set0" in cls.__init__.__code__.co_names or "__dict__" in (
            cls.__init__.__code__.co_names
        )
