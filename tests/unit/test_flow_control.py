"""Flow control: the pure release decision on a virtual clock, the declaration, and the
processor's durable queue on the in-memory broker (restart and crash included)."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message

from examples.order_fulfillment.messages import PaymentCompleted
from sagas import DeclarationError, Limit
from stream_processors.core.throttle import (
    RATE_GUARD_MS,
    Capacity,
    Queued,
    Throttle,
    release,
    share,
    validate_shares,
)
from stream_processors.engine.routing import COMMAND_ID, header, reply_headers
from stream_processors.engine.store import FLOW_ROWS
from tests.unit.processor_rig import PAYMENTS, SAGA, Rig

#: The tests' limits use a guard of 80 ms, so that their slots fall on round numbers.
GUARD_MS = 80
WINDOW = 1000 + GUARD_MS


def queued(n: int, at: int = 0, instance: str | None = None) -> Queued:
    return Queued(at, n, f"c{n}", instance or f"i{n}")


# -- the pure decision ---------------------------------------------------------------------------


def test_shares_add_up_to_the_limit_over_the_partitions() -> None:
    assert [share(20, p, 8) for p in range(8)] == [3, 3, 3, 3, 2, 2, 2, 2]
    assert sum(share(5, p, 3) for p in range(3)) == 5


def test_a_limit_smaller_than_the_partition_count_is_refused() -> None:
    throttle = Throttle({"payments": Limit(in_flight=5)})
    validate_shares(throttle, 5)
    with pytest.raises(DeclarationError, match="less than the inbox's 8 partitions"):
        validate_shares(throttle, 8)


def test_in_flight_bound_releases_only_into_free_places() -> None:
    capacity = Capacity(None, WINDOW, 2, guard_ms=GUARD_MS)
    queue = [queued(n) for n in range(5)]
    decided = release(queue, capacity, in_flight=1, sent_ms=[], now_ms=0)
    assert [q.command_id for q in decided.send] == ["c0"]
    assert decided.wake_ms is None  # only a reply frees a place
    assert release(queue, capacity, in_flight=2, sent_ms=[], now_ms=0).send == []


def test_a_rate_sends_one_at_a_time_in_its_slots() -> None:
    # slots at 0, 360 and 720 of every 1,080 ms
    capacity = Capacity(3, WINDOW, None, guard_ms=GUARD_MS)
    queue = [queued(n) for n in range(10)]
    first = release(queue, capacity, 0, [], now_ms=0)
    assert [q.command_id for q in first.send] == ["c0"]
    assert first.wake_ms == 360
    assert release(queue[1:], capacity, 0, [0], now_ms=359).send == []
    later = release(queue[1:], capacity, 0, [0], now_ms=360)
    assert [q.command_id for q in later.send] == ["c1"]
    # A slot is used once; the next period's first slot comes after the third.
    assert release(queue[3:], capacity, 0, [0, 360, 720], now_ms=1000).wake_ms == WINDOW


def test_a_late_wake_up_uses_its_slot_but_never_exceeds_the_share_in_a_window() -> None:
    capacity = Capacity(3, WINDOW, None, guard_ms=GUARD_MS)
    queue = [queued(n) for n in range(3)]
    assert len(release(queue, capacity, 0, [0], now_ms=400).send) == 1  # slot 360, 40 ms late
    # The first slot of the next period (1,080) would make four in the 1,000 ms from 100.
    decided = release(queue, capacity, 0, [100, 360, 720], now_ms=1080)
    assert decided.send == [] and decided.wake_ms == 1100


def test_the_slots_of_all_partitions_make_one_even_stream() -> None:
    limit = Limit(rate=20, guard=GUARD_MS / 1000)
    slots = sorted(s for p in range(8) for s in Capacity.of(limit, p, 8).slots_ms)
    assert len(slots) == 20
    assert {b - a for a, b in itertools.pairwise(slots)} == {WINDOW // 20}
    assert [Capacity.of(limit, p, 8).rate for p in range(8)] == [share(20, p, 8) for p in range(8)]


def test_a_virtual_clock_never_sees_more_than_the_rate_in_any_window() -> None:
    capacity = Capacity(3, WINDOW, None, guard_ms=GUARD_MS)
    queue = [queued(n) for n in range(40)]
    sent: list[int] = []
    now = 0
    while queue:
        decided = release(queue, capacity, 0, sent, now)
        sent += [now] * len(decided.send)
        queue = [q for q in queue if q not in decided.send]
        assert decided.wake_ms is not None or not queue
        now = decided.wake_ms or now
    assert len(sent) == 40
    for start in sent:
        assert sum(1 for at in sent if start <= at < start + WINDOW) <= 3
    # Packed: the share in every window, so the rate delivered is the share per window.
    assert sent[-1] - sent[0] < (40 / 3) * WINDOW


@pytest.mark.parametrize(("rate", "partitions"), [(20, 8), (20, 3), (8, 8), (100, 8), (9, 8)])
def test_the_partitions_shares_of_a_rate_hold_in_total_in_any_second(
    rate: int, partitions: int
) -> None:
    """Each partition sends on its own clock, started at any moment: together they never
    exceed the limit in any one-second window."""
    limit = Limit(rate=rate)
    sent: list[int] = []
    for partition in range(partitions):
        capacity = Capacity.of(limit, partition, partitions)
        mine: list[int] = []
        now = partition * 137  # out of phase with each other
        for _ in range(50):
            decided = release([queued(0)], capacity, 0, mine, now)
            if decided.send:
                mine.append(now)
            now = decided.wake_ms or now + 1
        sent += mine
    sent.sort()
    busiest = max(sum(1 for at in sent if start <= at < start + 1000) for start in sent)
    assert 0 < busiest <= rate


def test_higher_priority_first_then_oldest_then_first_come() -> None:
    capacity = Capacity(None, WINDOW, 10, guard_ms=GUARD_MS)
    queue = [queued(0, at=5, instance="low-old"), queued(1, at=9, instance="high")]
    queue += [queued(2, at=1, instance="low-older"), queued(3, at=1, instance="low-older-2")]
    priorities = {"high": 5}
    decided = release(queue, capacity, 0, [], 10, lambda i: priorities.get(i, 0))
    assert [q.instance for q in decided.send] == ["high", "low-older", "low-older-2", "low-old"]


def test_ageing_bounds_how_long_a_low_priority_command_waits() -> None:
    capacity = Capacity(None, WINDOW, 1, guard_ms=GUARD_MS)
    old_low = queued(0, at=0, instance="low")
    new_high = queued(1, at=9_000, instance="high")
    priorities = {"high": 3}.get

    def first(aging_ms: int | None) -> str:
        decided = release(
            [old_low, new_high], capacity, 0, [], 10_000, lambda i: priorities(i, 0), aging_ms
        )
        return decided.send[0].instance

    assert first(None) == "high"
    # Ten seconds queued at one level per 2 s: 0 + 5 beats 3 + 0.
    assert first(2_000) == "low"


# -- the declaration -----------------------------------------------------------------------------


def test_a_step_naming_an_unknown_limit_fails_at_import() -> None:
    from examples.order_fulfillment import messages as m
    from sagas import Saga, Step

    with pytest.raises(DeclarationError, match="names limit 'nope'"):

        class _Bad(Saga, name="bad_limits", limits={"payments": Limit(rate=10)}):
            start = m.OrderPlaced
            state = SAGA.state

            @staticmethod
            def begin(event: m.OrderPlaced) -> object:
                return SAGA.begin(event)

            pay = Step(m.MakePayment, success=m.PaymentCompleted, limit="nope")


def test_a_service_limit_applies_to_its_command_topics_and_a_step_limit_to_its_step() -> None:
    throttle = Throttle({"payments": Limit(rate=5), "slow": Limit(in_flight=2)}, {"ship": "slow"})
    assert throttle.limit_of("payment", "payments.commands") == "payments"
    assert throttle.limit_of("ship", "shipping.commands") == "slow"
    assert throttle.limit_of("other", "shipping.commands") is None


# -- the processor, on the in-memory broker ------------------------------------------------------


def rig(state_dir: Path, limit: Limit, broker: object | None = None) -> Rig:
    saga = dataclasses.replace(SAGA, throttle=Throttle({"payments": limit}))
    if broker is None:
        return Rig(state_dir, saga=saga)
    return Rig(state_dir, saga=saga, broker=broker)  # type: ignore[arg-type]


def payments(r: Rig) -> list[Message]:
    return r.visible(PAYMENTS)


def pay(r: Rig, command: Message) -> None:
    command_id = header(command.headers(), COMMAND_ID)
    assert command_id is not None
    key = command.key()
    assert key is not None
    reply = PaymentCompleted(order_id=key.decode(), payment_id="p").encode()
    r.broker.publish(r.topics.inbox, key, reply, reply_headers(command_id))


def orders(r: Rig, count: int) -> None:
    for n in range(count):
        r.place(f"o-{n}")
    r.steps(4)


def in_flight_by_partition(r: Rig, answered: set[bytes]) -> Counter[int]:
    return Counter(m.partition() for m in payments(r) if m.key() not in answered)


def test_commands_over_the_in_flight_share_wait_and_go_as_replies_come(tmp_path: Path) -> None:
    r = rig(tmp_path, Limit(in_flight=2))  # two partitions: one place each
    r.start()
    orders(r, 6)
    sent = payments(r)
    assert len(sent) == 2 and {m.partition() for m in sent} == {0, 1}
    answered: set[bytes] = set()
    while len(answered) < 6:
        waiting = [m for m in payments(r) if m.key() not in answered]
        assert max(in_flight_by_partition(r, answered).values()) <= 1
        for command in waiting:
            pay(r, command)
            answered.add(command.key() or b"")
        r.steps(4)
    ids = [header(m.headers(), COMMAND_ID) for m in payments(r)]
    assert len(ids) == 6 == len(set(ids))
    r.processor.close()


def test_queued_commands_survive_a_crash_and_are_sent_once(tmp_path: Path) -> None:
    first = rig(tmp_path / "a", Limit(in_flight=2))
    first.start()
    orders(first, 6)
    assert len(payments(first)) == 2
    queued_rows = [
        m
        for m in first.visible(first.topics.snapshots)
        if (m.key() or b"").startswith(FLOW_ROWS.encode())
    ]
    assert queued_rows, "the queue is in the changelog"
    # A crash: the process is gone without closing; another takes over from the changelog.
    second = rig(tmp_path / "b", Limit(in_flight=2), first.broker)
    second.start()
    answered: set[bytes] = set()
    while len(answered) < 6:
        waiting = [m for m in payments(second) if m.key() not in answered]
        assert waiting, "nothing was lost"
        for command in waiting:
            pay(second, command)
            answered.add(command.key() or b"")
        second.steps(4)
        second.clock.now += 2  # past the restored rate window, had there been one
        second.steps(2)
    ids = [header(m.headers(), COMMAND_ID) for m in payments(second)]
    assert len(ids) == 6 == len(set(ids)), ids
    second.processor.close()


def test_a_rate_limit_spreads_commands_over_windows(tmp_path: Path) -> None:
    r = rig(tmp_path, Limit(rate=2, guard=GUARD_MS / 1000))  # one per window per partition
    r.start()
    r.clock.now += 2  # past the window a restored partition starts with
    orders(r, 6)
    seen = [len(payments(r))]
    for _ in range(8):
        r.clock.now += WINDOW / 2000  # each partition has one slot a period: half, then half
        r.steps(3)
        seen.append(len(payments(r)))
    assert seen[0] >= 1  # each partition in its own slot: one at once, or both
    assert all(b - a <= 1 for a, b in itertools.pairwise(seen))
    assert seen[-1] == 6
    r.processor.close()


def test_a_queued_steps_timeout_runs_from_when_it_is_sent(tmp_path: Path) -> None:
    payment = SAGA.tasks["payment"]
    timed = dataclasses.replace(
        payment, action=dataclasses.replace(payment.action, timeout_ms=5000)
    )
    saga = dataclasses.replace(
        SAGA,
        tasks={**SAGA.tasks, "payment": timed},
        throttle=Throttle({"payments": Limit(in_flight=2)}),
    )
    r = Rig(tmp_path, saga=saga)
    r.start()
    # Two orders in one partition: one place in flight there, so the second waits.
    same = [n for n in range(40) if r.broker.partition_of(f"o-{n}".encode()) == 0][:2]
    for n in same:
        r.place(f"o-{n}")
    r.steps(4)
    first, second = (f"o-{n}" for n in same)
    assert [m.key() for m in payments(r)] == [first.encode()]
    queued_at = r.clock.now
    r.clock.now += 3
    pay(r, payments(r)[0])
    r.steps(4)
    assert [m.key() for m in payments(r)][-1] == second.encode()
    stored = r.stored(second)
    assert stored is not None
    from stream_processors.core.instance import decode_snapshot

    timer = decode_snapshot(stored).timers["timeout:payment"]
    assert timer.due_ms == int((queued_at + 3) * 1000) + 5000  # from the send, not the queueing
    r.processor.close()


def test_an_operators_priority_reorders_the_queue(tmp_path: Path) -> None:
    from stream_processors.core.model import OperatorAction
    from stream_processors.core.throttle import PRIORITIZE, prioritize_reason

    r = rig(tmp_path, Limit(in_flight=2))
    r.start()
    same = [f"o-{n}" for n in range(60) if r.broker.partition_of(f"o-{n}".encode()) == 0][:3]
    for order_id in same:
        r.place(order_id)
        r.steps(2)
    first, _second, third = same
    assert [m.key() for m in payments(r)] == [first.encode()]
    action = OperatorAction(action=PRIORITIZE, by="ops", reason=prioritize_reason(5, "vip"))
    r.broker.publish(r.topics.inbox, third.encode(), action.encode())
    r.steps(2)
    pay(r, payments(r)[0])
    r.steps(4)
    assert [m.key() for m in payments(r)] == [first.encode(), third.encode()]
    r.processor.close()


def test_a_prioritize_reason_carries_the_priority() -> None:
    from stream_processors.core.throttle import prioritize_reason, priority_in

    assert priority_in(prioritize_reason(-3, "later: much later")) == -3
    assert priority_in("because") is None


# -- through the test kit --------------------------------------------------------------------------


def _limited_saga(**options: object) -> type:
    from examples.order_fulfillment import messages as m
    from sagas import Saga, Step

    class Limited(Saga, name="limited_orders", **options):  # type: ignore[call-arg]
        start = m.OrderPlaced
        state = SAGA.state

        @staticmethod
        def begin(event: m.OrderPlaced) -> object:
            return SAGA.begin(event)

        payment = Step(m.MakePayment, success=m.PaymentCompleted)

    return Limited


def test_the_kit_releases_by_priority_from_the_start_event_then_oldest() -> None:
    from examples.order_fulfillment.messages import OrderPlaced
    from sagas.testing import LimitQueue

    saga = _limited_saga(
        limits={"payments": Limit(in_flight=1)},
        priority=lambda event: 1 if event.amount_cents >= 1000 else 0,
    )
    queue = LimitQueue(saga, "payments")
    big, small = (
        OrderPlaced(order_id="o", customer_id="c", amount_cents=cents, card_token="t", postcode="1")
        for cents in (5000, 100)
    )
    assert queue.offer("first", start=small)
    assert not queue.offer("small-1", start=small)
    assert not queue.offer("big", start=big)
    assert not queue.offer("small-2", start=small)
    for instance in ("first", "big", "small-1"):
        queue.reply(instance)
    assert queue.sent_order == ["first", "big", "small-1", "small-2"]


def test_the_kit_ages_low_priorities_so_they_are_not_starved() -> None:
    from sagas.testing import LimitQueue

    saga = _limited_saga(limits={"payments": Limit(in_flight=1)}, aging=10)
    queue = LimitQueue(saga, "payments")
    queue.offer("busy")
    queue.offer("low", priority=0)
    queue.advance(seconds=35)  # 3 levels of ageing
    queue.offer("high", priority=2)
    queue.reply("busy")
    queue.reply("low")
    assert queue.sent_order == ["busy", "low", "high"]


def test_the_kit_spaces_a_rate_over_virtual_time() -> None:
    from sagas.testing import LimitQueue

    saga = _limited_saga(limits={"payments": Limit(rate=4, guard=GUARD_MS / 1000)})
    queue = LimitQueue(saga, "payments")
    for n in range(8):
        queue.offer(f"i{n}")
    queue.advance(seconds=3)
    times = [at for at, _ in queue.sent]
    slot = WINDOW // 4
    assert [b - a for a, b in itertools.pairwise(times)][1:] == [slot] * 6  # in every slot
    assert len(queue.queued) == 0


def test_the_index_lists_instances_waiting_on_a_limit(tmp_path: Path) -> None:
    import json

    from confluent_kafka import Message as Record

    from sagas.testing import SagaTest
    from stream_processors.core.instance import encode_snapshot
    from stream_processors.engine.store import QUEUE_ROWS
    from stream_processors.tools.index import Filters, Index, Page
    from stream_processors.tools.index_feed import change_of
    from tests.unit.processor_rig import order

    test = SagaTest(SAGA)
    test.start(order("o-1"))
    snapshot = Record(
        topic="s", partition=0, offset=0, key=b"o-1", value=encode_snapshot(test.instance)
    )
    queued_key = (QUEUE_ROWS + "order_fulfillment/o-1/payment/1").encode()
    row = json.dumps({"instance": "o-1", "limit": "payments"}).encode()
    queued = Record(topic="s", partition=0, offset=1, key=queued_key, value=row)
    left = Record(topic="s", partition=0, offset=2, key=queued_key, value=None)
    index = Index(tmp_path / "index.sqlite3")
    changes = [change_of(m) for m in (snapshot, queued)]
    index.apply([c for c in changes if c is not None])

    def waiting(on: str) -> list[str]:
        return [r.instance for r in index.page(Filters(waiting_on=on), Page())]

    assert waiting("*") == ["o-1"] == waiting("payments")
    assert waiting("other") == []
    gone = change_of(left)
    assert gone is not None
    index.apply([gone])
    assert waiting("*") == []
    assert index.total() == 1
    index.close()


def test_a_place_held_for_an_instance_that_is_gone_is_freed_on_restore(tmp_path: Path) -> None:
    import json

    r = rig(tmp_path, Limit(in_flight=2))  # one place per partition
    ghost = (FLOW_ROWS + "i\x00order_fulfillment/ghost/payment/1").encode()
    row = json.dumps({"limit": "payments", "instance": "ghost", "sent_ms": 0}).encode()
    r.broker.append(r.topics.snapshots, 0, None, key=ghost, value=row)
    r.start()
    order_id = next(f"o-{n}" for n in range(40) if r.broker.partition_of(f"o-{n}".encode()) == 0)
    r.place(order_id)
    r.steps(4)
    assert [m.key() for m in payments(r)] == [order_id.encode()]
    r.processor.close()


def _flow_rows(r: Rig) -> dict[tuple[int, str], dict[str, Any]]:
    """The flow rows the changelog holds now: the latest of each key, tombstones dropped."""
    import json

    rows: dict[tuple[int, str], bytes | None] = {}
    for message in r.visible(r.topics.snapshots):
        key = (message.key() or b"").decode()
        if key.startswith(FLOW_ROWS):
            rows[(message.partition() or 0, key)] = message.value()
    return {where: json.loads(value) for where, value in rows.items() if value is not None}


def _rebuilt_rows(r: Rig, left: dict[str, int]) -> dict[tuple[int, str], dict[str, Any]]:
    """The flow rows ``QueueRebuild`` makes of the journal, partition by partition."""
    import json

    from stream_processors.core.fold import apply
    from stream_processors.core.instance import Instance
    from stream_processors.core.journal import JournalEntry, stateless
    from stream_processors.engine.flow import QueueRebuild

    definition, rows = r.processor.definition, {}
    assert definition.throttle is not None
    for partition in range(r.topics.partitions):
        rebuild, instances = QueueRebuild(definition, definition.throttle), {}
        folded: dict[str, Instance] = instances
        for message in r.visible(r.topics.journal):
            if message.partition() == partition:
                entry = JournalEntry.decode(message.value() or b"")
                rebuild.see(entry)
                if not stateless(entry):
                    folded[entry.instance] = apply(definition, folded.get(entry.instance), entry)
        for key, value in rebuild.rows(folded, left):
            rows[(partition, key)] = json.loads(value)
    return rows


def test_a_replay_rebuilds_the_queue_the_in_flight_places_and_the_priorities(
    tmp_path: Path,
) -> None:
    """``sagas replay``'s rebuild: the rows made from the journal and the command topic are
    the processor's own, but for the send times (the command topic's, not the processor's) and
    the queue's arrival counters (the same order, counted over the journal's commands)."""
    from stream_processors.core.model import OperatorAction
    from stream_processors.core.throttle import PRIORITIZE, prioritize_reason

    r = rig(tmp_path, Limit(in_flight=2))
    r.start()
    orders(r, 6)
    pay(r, payments(r)[0])  # one answered: its place goes to the oldest queued
    queued_id = next(
        key for _, key in _flow_rows(r) if key.startswith(FLOW_ROWS + "q")
    ).removeprefix(FLOW_ROWS + "q\x00")
    instance = queued_id.split("/")[1]
    action = OperatorAction(action=PRIORITIZE, by="ops", reason=prioritize_reason(4, "vip"))
    r.broker.publish(r.topics.inbox, instance.encode(), action.encode())
    r.steps(4)
    live = _flow_rows(r)
    kinds = Counter(key[len(FLOW_ROWS)] for _, key in live)
    assert kinds == {"q": 3, "i": 2, "p": 1}, live
    left = {header(m.headers(), COMMAND_ID) or "": 0 for m in payments(r)}
    rebuilt = _rebuilt_rows(r, left)

    def order(rows: dict[tuple[int, str], dict[str, Any]]) -> list[tuple[int, str]]:
        queued = [where for where, row in rows.items() if "seq" in row]
        return sorted(queued, key=lambda where: (where[0], int(rows[where]["seq"])))

    assert order(rebuilt) == order(live)  # the same order of arrival (the counts may differ)
    for row in (*live.values(), *rebuilt.values()):
        row.pop("sent_ms", None)
        row.pop("seq", None)
    assert rebuilt == live
    r.processor.close()


def test_a_restored_partitions_flow_rows_are_not_counted_as_instances(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = rig(tmp_path / "a", Limit(in_flight=2))
    first.start()
    orders(first, 6)
    second = rig(tmp_path / "b", Limit(in_flight=2), first.broker)
    with caplog.at_level("WARNING"):
        second.start()  # restores the queue rows with the snapshots, and counts the snapshots
        second.steps(2)
    assert not [r for r in caplog.records if "unreadable for metrics" in r.getMessage()]
    assert second.processor._measures.counts.by_status()["running"] == 6
    first.processor.close()
    second.processor.close()


def test_the_default_guard_sends_a_rate_of_20_as_16_per_second() -> None:
    slots = sorted(s for p in range(8) for s in Capacity.of(Limit(rate=20), p, 8).slots_ms)
    assert RATE_GUARD_MS == 250
    assert {b - a for a, b in itertools.pairwise(slots)} == {62, 63}  # 1,250 ms / 20
    assert Capacity.of(Limit(rate=20), 0, 8).per_ms == 1000


def test_a_negative_guard_is_refused() -> None:
    with pytest.raises(DeclarationError, match="guard must be >= 0"):
        Limit(rate=20, guard=-0.1)
