"""``sagas diagram``: the Mermaid state diagram of a saga, and of where an instance is.

The diagrams are checked twice: their structure (the edges, the composite states of blocks, the
choice states and the labels the model implies), and their syntax, by Mermaid's own parser
(tools/mermaid, run with node: ``make mermaid`` installs it). Under CI=true a missing node or
parser fails that test; elsewhere it is skipped with the command to run.

Definitions are the order saga's and a handmade one with every construct, built on the order
saga's steps with ``dataclasses.replace``. Instances come from ``decide`` (the pure core), or
are a started one given the step keys a map's items and a loop's visits make.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from examples.order_fulfillment.messages import (
    OrderPlaced,
    PaymentCompleted,
    PaymentRefunded,
    ShippingFailed,
    ShippingLabelCreated,
)
from examples.order_fulfillment.saga import OrderFulfillment
from sagas.cli import app
from sagas.testing import START_MS
from stream_processors.codecs.records import Event
from stream_processors.core.decide import Input, decide
from stream_processors.core.graph import implicit_forks, unbounded_loop
from stream_processors.core.instance import (
    BlockState,
    BranchStatus,
    Instance,
    StepState,
    StepStatus,
    Timer,
)
from stream_processors.core.model import (
    COMPENSATE,
    MAP,
    PARALLEL,
    Block,
    ChildEnded,
    Choice,
    CommandSpec,
    End,
    FlowNode,
    SagaDefinition,
    Sleep,
    Task,
    When,
)
from stream_processors.core.policy import ALL
from stream_processors.tools.diagram import duration, mermaid

ROOT = Path(__file__).resolve().parents[2]
PARSER = ROOT / "tools" / "mermaid"
ORDER = OrderPlaced(
    order_id="o-1", customer_id="c-1", amount_cents=4_200, card_token="tok", postcode="N1 9GU"
)
ORDERS = OrderFulfillment.definition


def is_big(state: object) -> bool:
    return True


def restart_at(state: object) -> int:
    return 0


def every_construct() -> SagaDefinition:
    """A choice to a wait or the payment; a parallel of shipping (then a sleep) and a child
    saga; a map; a sleep until a time; a choice looping back to the payment, bounded; ends."""
    pay, ship = ORDERS.tasks["payment"], ORDERS.tasks["shipping"]
    wait = CommandSpec(None, None, None, (ShippingLabelCreated,), timeout_ms=3_600_000)
    child = CommandSpec(OrderPlaced, None, "invoicing.inbox", (ChildEnded,), child="invoicing")
    tasks = {
        "approval": Task(
            "approval", wait, next=("payment",), catch={"sagalog.Timeout": "rejected"}
        ),
        "payment": replace(pay, next=("both",), catch={"Declined": COMPENSATE}),
        "ship-it": replace(ship, name="ship-it", next=("settle",)),
        "invoice": Task("invoice", child),
        "reserve": replace(pay, name="reserve", next=()),
    }
    flow: dict[str, FlowNode] = {
        "route": Choice("route", (When(is_big, "approval"),), default="payment"),
        "rejected": End("rejected", succeed=False, reason="not approved"),
        "both": Block("both", PARALLEL, ("ship-it", "invoice"), next=("items",)),
        "settle": Sleep("settle", delay_ms=30_000),
        "items": Block(
            "items",
            MAP,
            ("reserve",),
            next=("cool",),
            items=lambda state: [],
            max_concurrency=5,
            tolerated_failures=2,
        ),
        "cool": Sleep("cool", until=restart_at, next=("again",)),
        "again": Choice("again", (When(lambda s: False, "payment"),), default="done", max_visits=3),
        "done": End("done", succeed=True, reason="all shipped"),
    }
    definition = replace(ORDERS, tasks=tasks, flow=flow, first=("route",))
    assert unbounded_loop(definition) is None and definition.placement  # a graph decide takes
    return definition


def composite(text: str, ident: str) -> list[str]:
    """The lines inside composite state ``ident`` (stripped), up to its closing brace."""
    lines = text.splitlines()
    opening = next(i for i, line in enumerate(lines) if re.search(rf" as {ident} \{{$", line))
    depth, inside = 1, list[str]()
    for line in lines[opening + 1 :]:
        depth += line.count("{") - line.count("}")
        if depth == 0:
            return inside
        inside.append(line.strip())
    raise AssertionError(f"composite {ident} is not closed")


def lines_of(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines()}


# --- the order saga ------------------------------------------------------------------------------


ORDER_DIAGRAM = mermaid(ORDERS)


def test_the_order_saga_pays_ships_and_compensates() -> None:
    lines = lines_of(ORDER_DIAGRAM)
    assert ORDER_DIAGRAM.splitlines()[:4] == [
        "---",
        'title: "order_fulfillment v1"',
        "---",
        "stateDiagram-v2",
    ]
    assert {
        'state "payment: MakePayment" as payment',
        'state "shipping: CreateShippingLabel" as shipping',
        "[*] --> payment",
        "payment --> shipping",
        "shipping --> [*]",
        "payment --> compensating : failed",
        "shipping --> compensating : failed",
        "compensating --> [*]",
    } <= lines
    assert composite(ORDER_DIAGRAM, "compensating") == [
        'state "undo payment: RefundPayment" as undo_payment'
    ]


def test_the_readme_shows_the_order_saga_as_the_command_draws_it() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = re.findall(r"^```mermaid\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)
    assert shown == [ORDER_DIAGRAM]


def test_the_title_gives_the_deadline() -> None:
    title = mermaid(replace(ORDERS, deadline_ms=86_400_000)).splitlines()[1]
    assert title == 'title: "order_fulfillment v1, deadline 1d"'


def test_a_saga_without_compensations_fails_to_a_failed_state() -> None:
    shipping = replace(ORDERS.tasks["shipping"], next=())
    definition = replace(ORDERS, tasks={"shipping": shipping}, first=("shipping",))
    lines = lines_of(mermaid(definition))
    assert {'state "failed" as failed', "shipping --> failed : failed", "failed --> [*]"} <= lines
    assert not any("compensating" in line for line in lines)


# --- every construct -----------------------------------------------------------------------------


EVERY = mermaid(every_construct())


def test_choices_are_choice_states_with_their_rules_on_the_edges() -> None:
    lines = lines_of(EVERY)
    assert {"state route <<choice>>", "state again <<choice>>"} <= lines
    assert {"[*] --> route", "route --> approval : is_big", "route --> payment : default"} <= lines
    # A lambda has no name: its rule is numbered. The edge goes back to the payment: a loop,
    # bounded by the choice's max_visits, which a note gives (a choice state has no label).
    assert {"again --> payment : rule 1 (loop)", "again --> done : default"} <= lines
    assert "note left of again : again (at most 3 visits)" in lines


def test_a_parallel_block_is_a_composite_with_a_region_per_branch() -> None:
    inside = composite(EVERY, "both")
    assert inside.count("--") == 1
    first, second = (
        inside[: inside.index("--")],
        inside[inside.index("--") + 1 :],
    )
    # "ship-it" is no Mermaid id: its id is ship_it, its label keeps its name.
    assert first == [
        'state "ship-it: CreateShippingLabel" as ship_it',
        'state "settle: sleep 30s" as settle',
        "[*] --> ship_it",
        "ship_it --> settle",
        "settle --> [*]",
    ]
    assert second == [
        'state "invoice: child saga invoicing" as invoice',
        "[*] --> invoice",
        "invoice --> [*]",
    ]
    assert 'state "both: parallel" as both {' in EVERY
    # The block continues with its next; its failure (a failed branch) compensates.
    assert {"payment --> both", "both --> items", "both --> compensating : failed"} <= lines_of(
        EVERY
    )


def test_a_map_is_a_composite_labelled_with_its_concurrency() -> None:
    assert 'state "items: map, 5 at a time, tolerates 2 failed" as items {' in EVERY
    assert composite(EVERY, "items") == [
        'state "reserve: MakePayment" as reserve',
        "[*] --> reserve",
        "reserve --> [*]",
    ]
    # The map's steps are compensated with the others when the saga fails.
    assert 'state "undo reserve: RefundPayment" as undo_reserve' in composite(EVERY, "compensating")


def test_waits_sleeps_ends_and_catches_are_labelled() -> None:
    lines = lines_of(EVERY)
    assert {
        'state "approval: wait for ShippingLabelCreated, at most 1h" as approval',
        'state "cool: sleep until restart_at" as cool',
        'state "rejected: fail (not approved)" as rejected',
        'state "done: succeed (all shipped)" as done',
        "approval --> rejected : sagalog.Timeout",
        "approval --> payment",
        "rejected --> compensating",  # a fail end fails the saga: it compensates
        "done --> [*]",
        "items --> cool",
        "cool --> again",
    } <= lines
    # Catching to compensate is what an uncaught failure does: one edge says it.
    assert [line for line in lines if line.startswith("payment --> compensating")] == [
        "payment --> compensating : failed"
    ]


def test_catching_every_error_leaves_no_failure_edge_and_shares_edges() -> None:
    pay, ship = ORDERS.tasks["payment"], ORDERS.tasks["shipping"]
    caught = replace(pay, catch={ALL: "shipping", "Declined": "shipping"})
    definition = replace(ORDERS, tasks={"payment": caught, "shipping": ship})
    lines = lines_of(mermaid(definition))
    assert "payment --> shipping : any error, Declined" in lines
    assert not any(line.startswith("payment --> compensating") for line in lines)


def test_an_implicit_fork_is_drawn_as_its_parallel_block() -> None:
    pay, ship = ORDERS.tasks["payment"], ORDERS.tasks["shipping"]
    tasks = {
        "payment": replace(pay, next=("shipping", "invoice")),
        "shipping": replace(ship, next=("notify",)),
        "invoice": replace(ship, name="invoice", next=("notify",)),
        "notify": replace(ship, name="notify"),
    }
    forked, flow = implicit_forks(tasks, {})
    blocks = {name: node for name, node in flow.items() if isinstance(node, Block)}
    text = mermaid(replace(ORDERS, tasks=forked, flow=blocks))
    assert 'state "payment.fork: parallel" as payment_fork {' in text
    assert composite(text, "payment_fork").count("--") == 1
    assert {"payment --> payment_fork", "payment_fork --> notify"} <= lines_of(text)


NAMES = ("a.b", "a_b", "end", "note", "state", "class", "2fa", "pay now", "x-y", "default")


def awkward() -> SagaDefinition:
    """Steps named what Mermaid takes for keywords, or no id at all, or the same id."""
    ship = ORDERS.tasks["shipping"]
    chain = [*NAMES[1:], None]
    tasks = {
        name: replace(ship, name=name, next=(following,) if following else ())
        for name, following in zip(NAMES, chain, strict=True)
    }
    return replace(ORDERS, tasks=tasks, first=(NAMES[0],))


def test_names_that_are_no_mermaid_ids_get_safe_unique_ids() -> None:
    text = mermaid(awkward())
    declared = dict(re.findall(r'state "([^:"]+): [^"]*" as (\S+)', text))
    assert sorted(declared) == sorted(NAMES)
    ids = list(declared.values())
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", ident) for ident in ids)
    assert declared["a.b"] == "a_b" and declared["a_b"] == "a_b_2"
    assert declared["end"] == "n_end" and declared["2fa"] == "n_2fa"
    assert f"{declared['pay now']} --> {declared['x-y']}" in text


def test_durations() -> None:
    assert [duration(ms) for ms in (250, 1000, 90_000, 3_600_000, 86_400_000, 1500)] == [
        "250ms",
        "1s",
        "90s",
        "1h",
        "1d",
        "1500ms",
    ]


# --- an instance ---------------------------------------------------------------------------------


def started() -> Instance:
    """The order saga's instance o-1, just started: its payment is in flight."""
    decision = decide(ORDERS, None, Input(ORDER, ORDER.encode()), START_MS)
    assert decision.instance is not None
    return decision.instance


def replied(instance: Instance, step: str, reply: Event) -> Instance:
    """``instance`` after ``reply`` to the command in flight of ``step`` (or its compensation)."""
    command_id = instance.steps[step].command_id
    decision = decide(ORDERS, instance, Input(reply, reply.encode(), command_id), START_MS)
    assert decision.instance is not None and decision.entries, "the reply was not applied"
    return decision.instance


def classes(text: str) -> dict[str, str]:
    """Each highlighted state id and its class."""
    found: dict[str, str] = {}
    for members, kind in re.findall(r"^\s*class (\S+) (\w+)$", text, re.MULTILINE):
        found.update(dict.fromkeys(members.split(","), kind))
    return found


def test_an_instance_in_flight_shows_what_succeeded_and_what_is_active() -> None:
    instance = replied(started(), "payment", PaymentCompleted(order_id="o-1", payment_id="p"))
    text = mermaid(ORDERS, instance)
    assert 'title: "order_fulfillment v1 · o-1 is running"' in text
    assert classes(text) == {"payment": "succeeded", "shipping": "active"}
    assert {"note right of payment : succeeded", "note right of shipping : pending"} <= lines_of(
        text
    )
    assert {"classDef succeeded", "classDef active"} <= {
        " ".join(line.split()[:2]) for line in text.splitlines()
    }


def test_a_compensated_instance_shows_the_undo_and_the_failure() -> None:
    instance = replied(started(), "payment", PaymentCompleted(order_id="o-1", payment_id="p"))
    instance = replied(instance, "shipping", ShippingFailed(order_id="o-1", reason="x"))
    instance = replied(instance, "payment", PaymentRefunded(order_id="o-1", payment_id="p"))
    text = mermaid(ORDERS, instance)
    assert classes(text) == {
        "payment": "compensated",
        "undo_payment": "compensated",
        "shipping": "failed",
        "compensating": "compensated",
    }
    assert "o-1 is compensated" in text.splitlines()[1]


def in_flight_everywhere() -> Instance:
    """The construct saga's instance on its second visit of the payment, half through its map,
    asleep: the step keys a loop (``~2``) and a map's items (``items[1]/``) give."""
    base = started()

    def step(status: StepStatus, node: str, block: str = "", branch: int = 0) -> StepState:
        return StepState(status, f"id-{node}-{branch}", 1, 0, node, block, branch)

    succeeded, pending = StepStatus.SUCCEEDED, StepStatus.PENDING
    return replace(
        base,
        steps={
            "approval": step(succeeded, "approval"),
            "payment": step(succeeded, "payment"),
            "ship-it": step(succeeded, "ship-it", "both", 0),
            "invoice": step(succeeded, "invoice", "both", 1),
            "items[0]/reserve": step(succeeded, "reserve", "items", 0),
            "items[1]/reserve": replace(
                step(StepStatus.RETRYING, "reserve", "items", 1), attempt=2
            ),
            "payment~2": step(pending, "payment"),
        },
        blocks={
            "both": BlockState(
                "both", PARALLEL, "", 0, BranchStatus.SUCCEEDED, (BranchStatus.SUCCEEDED,) * 2
            ),
            "items": BlockState(
                "items",
                MAP,
                "",
                0,
                BranchStatus.RUNNING,
                (BranchStatus.SUCCEEDED, BranchStatus.RUNNING, BranchStatus.QUEUED),
            ),
        },
        visits={"route": 1, "approval": 1, "payment": 2, "settle": 1, "cool": 1, "again": 1},
        timers={"sleep:cool": Timer(10_000, "cool", 1)},
    )


def test_map_items_and_visits_are_drawn_on_their_nodes() -> None:
    text = mermaid(every_construct(), in_flight_everywhere())
    assert classes(text) == {
        "approval": "succeeded",
        "payment": "active",  # its second visit is in flight
        "ship_it": "succeeded",
        "invoice": "succeeded",
        "both": "succeeded",
        "reserve": "active",  # one item done, one retrying
        "items": "active",
        "settle": "succeeded",
        "cool": "active",  # its timer is set: asleep
    }
    lines = lines_of(text)
    assert {
        "note right of payment : succeeded, pending",
        "note right of reserve : succeeded, retrying (attempt 2)",
        "note right of items : branches 1 succeeded, 1 running, 1 queued",
        "note right of cool : sleeping",
        "note right of settle : passed",
    } <= lines


# --- the command ---------------------------------------------------------------------------------


TARGET = "examples.order_fulfillment.saga:OrderFulfillment"


def test_the_command_prints_the_diagram() -> None:
    result = CliRunner().invoke(app, ["diagram", TARGET])
    assert result.exit_code == 0, result.output
    assert result.stdout == ORDER_DIAGRAM


def test_at_without_an_instance_is_refused() -> None:
    result = CliRunner().invoke(app, ["diagram", TARGET, "--at", "3"])
    assert result.exit_code == 2
    assert "--at needs --instance" in result.output


# --- Mermaid's own parser ------------------------------------------------------------------------


def mermaid_errors(diagrams: list[str]) -> list[str | None]:
    """Mermaid's parse error of each diagram (None: it parses), from tools/mermaid/parse.mjs."""
    node = shutil.which("node")
    installed = (PARSER / "node_modules" / "mermaid").is_dir()
    if node is None or not installed:
        missing = "node is not installed" if node is None else "run `make mermaid`"
        if os.environ.get("CI") == "true":
            pytest.fail(f"Mermaid's parser is not available: {missing}", pytrace=False)
        pytest.skip(f"Mermaid's parser is not available: {missing}")
    done = subprocess.run(
        [node, str(PARSER / "parse.mjs")],
        input=json.dumps(diagrams),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    errors: list[str | None] = json.loads(done.stdout)
    return errors


def test_every_diagram_parses_with_mermaid() -> None:
    diagrams = {
        "order": ORDER_DIAGRAM,
        "every construct": EVERY,
        "awkward names": mermaid(awkward()),
        "order, running": mermaid(ORDERS, started()),
        "every construct, in flight": mermaid(every_construct(), in_flight_everywhere()),
    }
    errors = mermaid_errors(list(diagrams.values()))
    assert dict(zip(diagrams, errors, strict=True)) == dict.fromkeys(diagrams)


def test_the_parser_rejects_a_broken_diagram() -> None:
    # The check above means something only if the parser refuses what Mermaid cannot draw.
    # A colon in a one-line note ends it early: what ``note`` guards against.
    broken = ORDER_DIAGRAM + "    note right of payment : undo: RefundPayment\n"
    [error] = mermaid_errors([broken])
    assert error is not None and "Parse error" in error
