"""A saga whose state grows with every event, for the limits integration test.

``GrowingLists`` starts on ``ListOpened`` and waits for ``ListClosed``; each ``ItemAdded`` in
between is appended to the list in its state (``ItemAdded`` has a handler that does nothing
else). With items of a kilobyte, the snapshot outgrows a 20 kB ``max.message.bytes`` after
about twenty of them.

Run with ``sagas run tests.integration.growing_lists:GrowingLists``.
"""

from __future__ import annotations

from dataclasses import replace

from sagas import Command, Event, Saga, State, Wait, evolve, on

NS = "tests.growing"
EVENTS = "growing.events"


class ListOpened(Event, schema=f"{NS}.ListOpened", topic=EVENTS, key="list_id", derive=True):
    list_id: str


class ItemAdded(Event, schema=f"{NS}.ItemAdded", topic=EVENTS, key="list_id", derive=True):
    list_id: str
    item: str


class ListClosed(Event, schema=f"{NS}.ListClosed", topic=EVENTS, key="list_id", derive=True):
    list_id: str


class ListState(State, schema=f"{NS}.ListState", derive=True):
    list_id: str
    items: list[str]


class GrowingLists(Saga, name="growing_lists"):
    start = ListOpened
    state = ListState

    @staticmethod
    def begin(event: ListOpened) -> ListState:
        return ListState(list_id=event.list_id, items=[])

    closed = Wait(success=ListClosed, timeout=3600)

    @evolve(ItemAdded)
    @staticmethod
    def added(state: ListState, event: ItemAdded) -> ListState:
        return replace(state, items=[*state.items, event.item])

    @on(ItemAdded)
    @staticmethod
    def noted(state: ListState, event: ItemAdded, now_ms: int) -> list[Command]:
        return []
