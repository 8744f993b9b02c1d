"""What each control-flow construct costs one instance: journal entries and snapshot bytes.

    .venv/bin/python tools/construct_costs.py

Each saga runs its happy path in memory with the test kit (``sagas.testing.SagaTest``, every
command answered with its success at once, sleeps fired by the virtual clock). For each, the
table shows the journal entries the instance wrote (and their encoded bytes), and its
snapshot (``encode_snapshot``) in bytes when it completed and at its largest while it ran.

The order saga is the real example; the others are a two-step saga (``a``, ``d``, records in
``tests/unit/flow_records.py``) with one construct between its steps, so that Δ against the
base is what the construct adds, the steps inside it included ("+1 plain step" shows what one
step costs on its own). A child step's row is the parent's; the child instance it starts is a
row of its own. Snapshot sizes grow with the instance id and the saga's name (in its command
ids): here ``i-1``, and names of six characters, so that command ids weigh the same in every
row.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from examples.order_fulfillment import services  # noqa: E402
from examples.order_fulfillment.messages import OrderPlaced  # noqa: E402
from examples.order_fulfillment.saga import OrderFulfillment  # noqa: E402
from sagas import Saga, Step  # noqa: E402
from sagas.flow import Branch, Child, Choice, Map, Parallel, Sleep, When  # noqa: E402
from sagas.testing import SagaTest  # noqa: E402
from stream_processors.core.instance import encode_snapshot  # noqa: E402
from tests.unit.flow_records import (  # noqa: E402
    ID,
    A,
    B,
    C,
    D,
    E,
    Flow,
    H,
    Job,
    Letter,
    Pack,
    Packed,
    Started,
    begin,
    begin_job,
)

ITEMS = 10


class _Base(Saga, name="base__"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    d = D.step()


class _OneMore(Saga, name="step__"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    b = B.step()
    d = D.step()


class _Choice(Saga, name="choice"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    route = Choice(When(lambda s: s.express, "d"), default="d")
    d = D.step()


class _Left(Branch):
    b = B.step()


class _Right(Branch):
    c = C.step()


class _Parallel(Saga, name="paral_"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    both = Parallel(_Left, _Right)
    d = D.step()


class _Each(Branch):
    pack = Step(Pack, success=Packed)


class _Map(Saga, name="map___"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    lines = Map(lambda s: [{"sku": sku, "qty": 1} for sku in s.skus], _Each)
    d = D.step()


class _Sleep(Saga, name="sleep_"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    nap = Sleep(seconds=60)
    d = D.step()


class _Kid(Saga, name="kid"):
    start, state, begin = Job, Flow, staticmethod(begin_job)
    e = E.step()


class _Parent(Saga, name="parent"):
    start, state, begin = Started, Flow, staticmethod(begin)
    a = A.step()
    kid = Child(_Kid, lambda s: Job(id=f"{s.id}-kid"))
    d = D.step()


_FAMILIES: dict[type, Letter] = {f.do: f for f in (A, B, C, D, E, H)}


def _answer(test: SagaTest, sent: Any) -> None:
    """Answer one outstanding command with its success."""
    family = _FAMILIES.get(type(sent.command))
    if family is not None:
        test.reply(sent, family.done(id=ID))
    elif isinstance(sent.command, Pack):
        test.reply(sent, Packed(sku=sent.command.sku, box="box"))
    elif sent.kind == "child-start":
        test.child_ended(sent)
    else:
        test.handle(sent, _ORDER_WORKERS[type(sent.command).__name__])


_ORDER_WORKERS = {
    "MakePayment": services.payments,
    "CreateShippingLabel": services.shipping,
}


def run(saga: type[Saga], start: Any, on_sent: Callable[[Any], None] | None = None) -> SagaTest:
    """Run ``saga``'s happy path; returns the test, with ``peak`` snapshot bytes set on it."""
    test = SagaTest(saga)
    test.start(start)
    peak = len(encode_snapshot(test.instance))
    while test.status == "running":
        if test.outstanding:
            sent = test.outstanding[0]
            if on_sent is not None:
                on_sent(sent)
            _answer(test, sent)
        else:
            due = min(t.due_ms for t in test.timers.values())
            test.advance((due - test.now_ms) / 1000)
        peak = max(peak, len(encode_snapshot(test.instance)))
    assert test.status == "completed", test.status
    test.peak = peak  # type: ignore[attr-defined]
    return test


def rows() -> list[tuple[str, SagaTest]]:
    order = OrderPlaced(
        order_id=ID, customer_id="c-1", amount_cents=4_200, card_token="tok", postcode="N1 9GU"
    )
    children: list[SagaTest] = []

    def start_child(sent: Any) -> None:
        if sent.kind == "child-start":
            children.append(run(_Kid, sent.command))

    started = Started(id=ID, skus=[f"sku-{i}" for i in range(ITEMS)])
    measured = [
        ("order saga, happy path", run(OrderFulfillment, order)),
        ("two steps (base)", run(_Base, started)),
        ("+1 plain step", run(_OneMore, started)),
        ("+ Choice", run(_Choice, started)),
        ("+ Parallel, 2 branches of 1 step", run(_Parallel, started)),
        (f"+ Map of {ITEMS} items, 1 step each", run(_Map, started)),
        ("+ Sleep", run(_Sleep, started)),
        ("+ child step (parent)", run(_Parent, started, start_child)),
    ]
    return [*measured, ("  the child instance (1 step)", children[0])]


def main() -> None:
    measured = rows()
    base = dict(measured)["two steps (base)"]
    base_entries, base_bytes = len(base.journal), len(encode_snapshot(base.instance))
    header = (
        "construct",
        "entries",
        "Δ entries",
        "journal B",
        "snapshot B",
        "Δ B",
        "peak snapshot B",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for name, test in measured:
        entries, size = len(test.journal), len(encode_snapshot(test.instance))
        delta = name.startswith("+")
        cells = (
            name,
            str(entries),
            f"{entries - base_entries:+d}" if delta else "",
            str(sum(len(entry.encode()) for entry in test.journal)),
            str(size),
            f"{size - base_bytes:+d}" if delta else "",
            str(test.peak),  # type: ignore[attr-defined]
        )
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
