"""Running the order-fulfilment saga and measuring it: shared by ``demo.py`` and ``bench``.

This module owns the mechanics of one measured run, with no output of its own: starting the
processor(s) and the two workers as OS processes (``start_processes``), waiting until a saga can
go end to end (``wait_until_ready``), publishing planned orders, as fast as possible or at a
paced rate, and recording each one's publish time (``publish``), and comparing what the journal
says happened with what was planned (``Results``: outcomes, sagas per second, latencies).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaException
from confluent_kafka.admin import AdminClient

from examples.order_fulfillment.scenario import PlannedOrder, plan_orders
from sagas.local import LocalProcess, Outcome, journal_outcomes_from
from sagas.publisher import Publisher
from stream_processors.kafka.config import common

SAGA = "examples.order_fulfillment.saga:OrderFulfillment"
WORKERS = ("payments", "shipping")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Journal:
    """The saga's journal topic, and its end offsets before this run published anything.

    The journal is kept forever (and shared with every earlier run and test on this broker);
    this run's sagas are new, so their entries all lie after ``start``.
    """

    topic: str
    start: dict[int, int]


@dataclass(frozen=True)
class Results:
    """What the journal says happened to the planned orders, against what was expected."""

    orders: list[PlannedOrder]
    published_ms: dict[str, int]  # order id -> publish time (see ``publish``)
    outcomes: dict[str, Outcome]  # order id -> first terminal journal entry

    @property
    def seen(self) -> Counter[str]:
        return Counter(outcome.state for outcome in self.outcomes.values())

    @property
    def expected(self) -> Counter[str]:
        return Counter(order.expected for order in self.orders)

    @property
    def mismatches(self) -> list[tuple[str, str, str]]:
        """(order id, expected state, state reached) for each saga that ended differently."""
        return [
            (order.event.order_id, order.expected, outcome.state)
            for order in self.orders
            if (outcome := self.outcomes.get(order.event.order_id)) is not None
            and outcome.state != order.expected
        ]

    @property
    def missing(self) -> list[str]:
        """Orders with no terminal journal entry (including any that were never acknowledged)."""
        return [o.event.order_id for o in self.orders if o.event.order_id not in self.outcomes]

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.missing

    def latencies_ms(self) -> list[int]:
        """Terminal entry's ``at_ms`` minus publish time, for each finished, published saga."""
        return sorted(
            outcome.at_ms - self.published_ms[order_id]
            for order_id, outcome in self.outcomes.items()
            if order_id in self.published_ms
        )

    def sagas_per_second(self) -> float | None:
        """Finished sagas / (last terminal entry - first publish): orders / ... on success."""
        if not self.outcomes or not self.published_ms:
            return None
        span_ms = max(o.at_ms for o in self.outcomes.values()) - min(self.published_ms.values())
        return len(self.outcomes) / (span_ms / 1000) if span_ms > 0 else None


def wait_for_empty_group(group: str, timeout: float) -> int:
    """Wait until the consumer group has no members; returns how many it still has at timeout.

    A group that does not exist, or cannot be described, counts as empty.
    """
    # log_level 4: warnings and errors only (not the info line librdkafka prints on closing).
    admin = AdminClient(common(None, "sagalog-demo-admin") | {"log_level": 4})
    deadline = time.monotonic() + timeout
    while True:
        try:
            future = admin.describe_consumer_groups([group], request_timeout=10)[group]
            members = len(future.result().members)
        except KafkaException:
            members = 0
        if members == 0 or time.monotonic() > deadline:
            return members
        time.sleep(0.5)


def start_processes(
    base: Path, partitions: int, processors: int = 1, args: tuple[str, ...] = ()
) -> dict[str, LocalProcess]:
    """``processors`` saga processors (``processor``, ``processor-2``, ...) and both workers,
    each its own OS process with a fresh log under ``base/logs``; stores under ``base/state``.
    ``args`` are extra options for ``sagas run``."""
    logs = base / "logs"
    env = {"SAGALOG_STATE_DIR": str((base / "state").resolve())}
    run = ["run", SAGA, "--partitions", str(partitions), *args]
    commands = {f"processor{'' if n == 1 else f'-{n}'}": run for n in range(1, processors + 1)}
    commands |= {
        name: ["worker", f"examples.order_fulfillment.services:{name}"] for name in WORKERS
    }
    processes = {}
    for name, command in commands.items():
        log_path = logs / f"{name}.log"
        log_path.unlink(missing_ok=True)  # each log holds this run only
        processes[name] = LocalProcess(list(command), log_path, env=dict(env)).start()
    return processes


def wait_until_ready(
    processor: LocalProcess, journal: Journal, run_id: str, seed: int, timeout: float
) -> None:
    """Return once a saga can go end to end without waiting for any process to start.

    Two gates. First the processor's ``sagalog_restore_remaining_records`` gauge: it has no
    sample until the processor's partition-assignment callback sets it, and that callback
    leaves it at 0 once every assigned partition's store is restored from the changelog; so
    "present and 0" means the processor joined its group, owns partitions and restored them
    (and ``wait_for_metrics`` fails fast if the process exits). That says nothing about the
    workers, and the gauge also reads 0 between two partitions' restores, so the second gate is
    a warm-up saga: one order, published and followed to its terminal journal entry. It has
    passed through the processor (all of whose assigned partitions are restored inside one
    callback, before any record is consumed) and through both workers' consumer groups. The
    warm-up order has its own id and is not counted in the results.
    """
    processor.wait_for_metrics(
        lambda samples: samples.get("sagalog_restore_remaining_records") == 0,
        timeout,
        "the processor did not get its partitions and restore its store",
    )
    warmup = plan_orders(1, 0.0, 0.0, seed=seed, run_id=f"{run_id}-warmup")[0]
    with Publisher(client_id="sagalog-demo") as publisher:
        publisher.publish(warmup.event)
    outcome = journal_outcomes_from(
        journal.topic, journal.start, [warmup.event.order_id], timeout
    ).get(warmup.event.order_id)
    if outcome is None:
        raise TimeoutError(f"the warm-up saga {warmup.event.order_id} did not finish in {timeout}s")
    if outcome.state != warmup.expected:
        raise RuntimeError(f"the warm-up saga ended {outcome.state}, not {warmup.expected}")


def publish(
    orders: list[PlannedOrder],
    on_ack: Callable[[], None] = lambda: None,
    on_error: Callable[[str, Any], None] = lambda order_id, error: None,
    rate: float | None = None,
    publisher: Publisher | None = None,
) -> dict[str, int]:
    """Publish every order; returns {order id: publish time in ms} for those acknowledged.

    With ``rate`` (orders per second) the orders are spread evenly over time instead of sent
    as fast as the producer takes them. The publish time is the record's own Kafka timestamp,
    read from the delivery report: a CreateTime that librdkafka stamps from the wall clock when
    ``produce`` is called, i.e. the moment of publishing (not of the acknowledgement), on the
    same clock as the processor's journal ``at_ms``. ``time.time()`` just before ``produce`` is
    the fallback if a report has no timestamp. Orders whose delivery failed are left out (and
    reported to ``on_error``), and so end up "missing". A new publisher's first records wait
    about half a second for its producer id, which counts in their latency: pass a
    ``publisher`` that already sent something to measure latency from the first order on.
    """
    published: dict[str, int] = {}

    def delivered(order_id: str, sent_ms: int) -> Callable[[Any, Any], None]:
        def callback(error: Any, message: Any) -> None:
            if error is not None:
                on_error(order_id, error)
                return
            kind, stamp = message.timestamp()
            published[order_id] = sent_ms if kind == TIMESTAMP_NOT_AVAILABLE else stamp
            on_ack()

        return callback

    publisher = publisher or Publisher(client_id="sagalog-demo")
    began = time.monotonic()
    for number, order in enumerate(orders):
        if rate is not None and (ahead := began + number / rate - time.monotonic()) > 0:
            publisher.flush(0)  # serve delivery reports while waiting for the next slot
            time.sleep(ahead)
        order_id = order.event.order_id
        publisher.publish(order.event, on_delivery=delivered(order_id, now_ms()))
    if remaining := publisher.flush(60):
        on_error("", f"{remaining} orders were not acknowledged within 60s")
    return published
