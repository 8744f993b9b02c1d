"""The instance index without Kafka: rows from snapshots, filters to SQL, paging, counts,
tombstones and stored offsets (``stream_processors.tools.index``), and ``--where`` parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.order_fulfillment.messages import OrderState
from sagas.cli.listing import describe_selection, filters_of, moment
from stream_processors.core.instance import (
    Instance,
    Status,
    StepState,
    StepStatus,
    Timer,
    decode_snapshot,
    encode_snapshot,
)
from stream_processors.tools.index import (
    Active,
    Change,
    FieldEquals,
    FilterError,
    Filters,
    Index,
    Page,
    merged,
    parse_where,
    row_of,
    select_sql,
)


def _instance(
    number: int,
    status: Status = Status.RUNNING,
    *,
    updated: int | None = None,
    customer: str = "c-1",
    amount: int = 100,
    steps: dict[str, StepState] | None = None,
    reason: str | None = None,
    version: int = 1,
    timers: dict[str, Timer] | None = None,
) -> Instance:
    return Instance(
        instance_id=f"order-{number:03d}",
        saga_version=version,
        status=status,
        seq=5,
        started_at_ms=1_000 + number,
        updated_at_ms=2_000 + number if updated is None else updated,
        reason=reason,
        steps=steps or {},
        timers=timers or {},
        completed=(),
        data=OrderState(
            order_id=f"order-{number:03d}",
            customer_id=customer,
            amount_cents=amount,
            card_token="tok",
            postcode="N1",
        ),
    )


def _change(instance: Instance, offset: int, partition: int = 0) -> Change:
    return Change(partition, offset, instance.instance_id, row_of(instance, partition))


@pytest.fixture
def index(tmp_path: Path) -> Index:
    return Index(tmp_path / "index.sqlite3")


EVERY = Filters()
FIRST = Page()


def _ids(index: Index, filters: Filters = EVERY, page: Page = FIRST) -> list[str]:
    return [row.instance for row in index.page(filters, page)]


def test_a_row_holds_what_a_snapshot_says() -> None:
    charging = StepState(StepStatus.RETRYING, "cmd-1", 2, 1_500, node="charge_payment")
    done = StepState(StepStatus.SUCCEEDED, "cmd-0", 1, 1_400, node="reserve")
    instance = _instance(7, steps={"charge_payment#2": charging, "reserve": done}, reason="x")
    row = row_of(decode_snapshot(encode_snapshot(instance)), partition=3)
    assert (row.instance, row.partition, row.status, row.position) == ("order-007", 3, "running", 4)
    assert (row.started_at_ms, row.updated_at_ms, row.reason) == (1_007, 2_007, "x")
    # Only the active step: its attempt, when it was sent, and no timer of its own to move it.
    assert row.active == (Active("charge_payment#2", "charge_payment", "cmd-1", 1_500, False),)
    assert '"customer_id":"c-1"' in row.data and '"amount_cents":100' in row.data


def test_filters_become_parameterised_sql() -> None:
    filters = Filters(
        statuses=("failed", "needs_attention"),
        step="charge_payment",
        updated_after=5,
        reason="card",
        version=2,
        fields=(FieldEquals("customer_id", "c'; DROP TABLE instances; --"),),
    )
    sql, params = select_sql(filters, Page(limit=10, offset=20))
    assert "DROP" not in sql  # values are parameters, never text of the query
    assert "status IN (?, ?)" in sql and "json_extract(data, '$.customer_id') IN (?, ?)" in sql
    assert params == [
        "failed",
        "needs_attention",
        "charge_payment",
        5,
        "card",
        2,
        "c'; DROP TABLE instances; --",
        "c'; DROP TABLE instances; --",
        10,
        20,
    ]
    assert sql.endswith("ORDER BY updated_at_ms DESC, instance DESC LIMIT ? OFFSET ?")


def test_bad_filters_are_refused() -> None:
    with pytest.raises(FilterError, match="unknown status"):
        Filters(statuses=("done",))
    with pytest.raises(FilterError, match="not a field path"):
        FieldEquals("a') OR 1=1 --", "x")
    with pytest.raises(FilterError, match="sort by"):
        Page(sort="name")
    with pytest.raises(FilterError, match="unknown filter"):
        parse_where(["colour=red"], moment)
    with pytest.raises(FilterError, match="not NAME=VALUE"):
        parse_where(["status"], moment)


def test_where_items_parse_to_filters() -> None:
    filters = parse_where(
        [
            "status=failed,needs_attention",
            "step=ship",
            "version=3",
            "updated-after=2026-01-01T00:00:00",
            "data.customer.id=42",
            "reason=card",
        ],
        moment,
    )
    assert filters.statuses == ("failed", "needs_attention")
    assert (filters.step, filters.version, filters.reason) == ("ship", 3, "card")
    assert filters.updated_after == 1_767_225_600_000
    assert filters.fields == (FieldEquals("customer.id", "42"),)
    both = merged(Filters(statuses=("running",), step="a"), filters)
    assert both.statuses == ("running", "failed", "needs_attention") and both.step == "ship"


def test_pages_sort_and_count(index: Index) -> None:
    statuses = [Status.FAILED, Status.RUNNING, Status.COMPLETED]
    changes = [_change(_instance(n, statuses[n % 3]), offset=n) for n in range(30)]
    assert index.apply(changes) == 30
    failed = Filters(statuses=("failed",))
    assert _ids(index, failed, Page(limit=3)) == ["order-027", "order-024", "order-021"]
    assert _ids(index, failed, Page(limit=3, offset=3)) == ["order-018", "order-015", "order-012"]
    assert _ids(index, failed, Page(sort="started", descending=False, limit=2)) == [
        "order-000",
        "order-003",
    ]
    assert index.counts() == {"failed": 10, "running": 10, "completed": 10}
    assert index.counts(Filters(updated_before=2_010)) == {
        "failed": 4,
        "running": 3,
        "completed": 3,
    }
    assert index.total(Filters(started_after=1_020, started_before=1_025)) == 5


def test_state_fields_step_reason_and_version(index: Index) -> None:
    charging = {"charge_payment": StepState(StepStatus.PENDING, "c", 1, 1, node="charge_payment")}
    index.apply(
        [
            _change(_instance(1, customer="c-7", amount=250), 0),
            _change(_instance(2, customer="c-8", steps=charging), 1),
            _change(_instance(3, Status.NEEDS_ATTENTION, reason="Card DECLINED", version=2), 2),
        ]
    )
    assert _ids(index, Filters(fields=(FieldEquals("customer_id", "c-7"),))) == ["order-001"]
    assert _ids(index, Filters(fields=(FieldEquals("amount_cents", "250"),))) == ["order-001"]
    assert _ids(index, Filters(step="charge_payment")) == ["order-002"]
    assert _ids(index, Filters(reason="card declined")) == ["order-003"]
    assert _ids(index, Filters(version=2)) == ["order-003"]
    listed = index.page(Filters(step="charge_payment"), Page())[0]
    assert listed.steps == ("charge_payment",) and listed.data["customer_id"] == "c-8"


def test_indexed_fields_are_used_and_survive_a_reset(index: Index) -> None:
    index.apply([_change(_instance(n, customer=f"c-{n % 3}"), n) for n in range(9)])
    by_customer = Filters(fields=(FieldEquals("customer_id", "c-1"),))
    assert any("SCAN instances" in step for step in index.explain(by_customer, FIRST))
    assert _ids(index, by_customer) == ["order-007", "order-004", "order-001"]
    index.index_fields(["customer_id"])
    assert any("field:customer_id" in step for step in index.explain(by_customer, FIRST))
    assert _ids(index, by_customer) == ["order-007", "order-004", "order-001"]
    index.reset()
    assert index.indexed_fields() == ["customer_id"]
    assert any("field:customer_id" in step for step in index.explain(by_customer, FIRST))


def test_a_batch_writes_each_instances_latest_change(index: Index) -> None:
    first, later = _instance(1), _instance(1, Status.FAILED, updated=9_000)
    assert index.apply([_change(first, 0), _change(later, 1), _change(_instance(2), 2)]) == 3
    assert index.counts() == {"failed": 1, "running": 1}
    index.apply([_change(_instance(2), 3), Change(0, 4, "order-002", None)])
    assert _ids(index) == ["order-001"] and index.offsets() == {0: 5}


def test_tombstones_updates_and_offsets(index: Index) -> None:
    index.apply([_change(_instance(1), 0), _change(_instance(2), 1), _change(_instance(3), 0, 1)])
    assert index.offsets() == {0: 2, 1: 1}
    index.apply([Change(0, 2, "order-001", None), _change(_instance(2, Status.FAILED), 3)])
    assert index.counts() == {"running": 1, "failed": 1}
    assert _ids(index) == ["order-003", "order-002"]
    # A record below the stored offset (another feeder wrote past it) is never applied again.
    assert index.apply([_change(_instance(2, Status.RUNNING), 1)]) == 0
    assert index.counts() == {"running": 1, "failed": 1}
    assert index.offsets() == {0: 4, 1: 1}


def test_rows_and_offsets_persist_and_reset(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    first = Index(path)
    first.apply([_change(_instance(1), 41)])
    first.close()
    again = Index(path)
    assert again.offsets() == {0: 42} and _ids(again) == ["order-001"]
    again.reset()
    assert again.offsets() == {} and _ids(again) == []
    again.close()


def test_moments() -> None:
    assert moment("1700000000000") == 1_700_000_000_000
    assert moment("2026-01-01T01:00:00+01:00") == 1_767_225_600_000
    with pytest.raises(FilterError):
        moment("yesterday")


def test_list_options_and_where_items_make_one_filter() -> None:
    filters = filters_of(
        ["data.customer_id=c-7", "status=running"],
        status=["failed,needs_attention"],
        step="payment",
        started_after="1700000000000",
        started_before=None,
        updated_after=None,
        updated_before=None,
        reason=None,
        version=None,
        field=["amount_cents=250"],
    )
    assert filters.statuses == ("failed", "needs_attention", "running")
    assert (filters.step, filters.started_after) == ("payment", 1_700_000_000_000)
    assert filters.fields == (FieldEquals("amount_cents", "250"), FieldEquals("customer_id", "c-7"))


def test_a_bulk_selection_names_its_first_instances() -> None:
    ids = [f"order-{n}" for n in range(25)]
    said = describe_selection("cancel", ids, dry_run=True)
    assert said.startswith("would cancel 25 instances: order-0, order-1, ")
    assert said.endswith("order-19 and 5 more")
    assert (
        describe_selection("retry", ids[:2], dry_run=False) == "retry 2 instances: order-0, order-1"
    )


def test_an_index_fed_from_another_topic_starts_again(index: Index) -> None:
    index.fed_from("topic-a")
    index.apply([_change(_instance(1), 0)])
    index.fed_from("topic-a")
    assert _ids(index) == ["order-001"] and index.source() == "topic-a"
    index.fed_from("topic-b")  # deleted and created again under the same name
    assert _ids(index) == [] and index.offsets() == {} and index.source() == "topic-b"


def _waiting(
    number: int, sent_at_ms: int, *, timed: bool = False, status: Status = Status.RUNNING
) -> Instance:
    step = StepState(StepStatus.PENDING, f"cmd-{number}", 1, sent_at_ms, node="payment")
    timers = {"timeout:payment": Timer(sent_at_ms + 60_000, "payment", 1)} if timed else None
    return _instance(number, status, steps={"payment": step}, timers=timers)


def test_stuck_instances_wait_on_a_dead_lettered_command_or_untimed_for_too_long(
    index: Index,
) -> None:
    index.apply(
        [
            _change(_waiting(1, sent_at_ms=1_000), 0),  # untimed, long ago: stuck
            _change(_waiting(2, sent_at_ms=9_000), 1),  # untimed, recent: not yet
            _change(_waiting(3, sent_at_ms=1_000, timed=True), 2),  # its timeout moves it
            _change(_waiting(4, sent_at_ms=9_000, timed=True), 3),  # dead-lettered command
            _change(_waiting(5, sent_at_ms=1_000, status=Status.NEEDS_ATTENTION), 4),  # parked
            _change(_instance(6), 5),  # no active step
        ]
    )
    index.dead_lettered({"cmd-4": "handler-error", "cmd-5": "handler-error"})
    stuck = Filters(stuck_before=5_000)
    assert sorted(_ids(index, stuck)) == ["order-001", "order-004"]
    assert index.total(merged(stuck, Filters(statuses=("running",)))) == 2
    why = index.why_stuck(["order-001", "order-004", "order-002"], 5_000, now_ms=3_601_000)
    assert why == {
        "order-001": ["payment: no answer for 1h0m, and no timeout"],
        "order-004": ["payment: cmd-4 dead-lettered (handler-error)"],
    }
    index.dead_lettered({})  # loaded again for each query: none dead-lettered now
    assert _ids(index, stuck) == ["order-001"]


def test_where_stuck_is_an_age() -> None:
    filters = parse_where(["stuck=30m"], lambda text: {"30m": 42}[text])
    assert filters.stuck_before == 42
