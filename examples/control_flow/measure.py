"""Running the control-flow example and measuring it: shared by ``demo.py`` and ``bench``.

The mechanics of one measured run, with no output of its own: both sagas' topics
(``ensure_all_topics``), both processors and the three services as OS processes
(``start_processes``), waiting until an order can go end to end (``wait_until_ready``), and a
burst of planned orders followed to their ends on the parent's journal (``run``: outcomes
against what each order's data implies, sagas per second, latencies).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from examples.control_flow.saga import Fulfilment, Invoicing
from examples.control_flow.scenario import PlannedOrder, plan_orders
from examples.order_fulfillment.measure import publish
from sagas.local import LocalProcess, Outcome, journal_end, journal_outcomes_from, percentile
from sagas.publisher import Publisher
from stream_processors.kafka.topics import SagaTopics, ensure_topics

PARTITIONS = 8
PARENT = SagaTopics.for_saga(Fulfilment.definition, PARTITIONS)
CHILD = SagaTopics.for_saga(Invoicing.definition, PARTITIONS)
#: Processes by name: the child saga's processor first (its inbox is the parent's target).
SAGAS = {"invoicing": "Invoicing", "fulfilment": "Fulfilment"}
SERVICES = ("warehouse", "payments", "invoicing")


def ensure_all_topics(bootstrap: str | None = None) -> None:
    """Both sagas' topics; the parent's do not include the child's inbox (not a command topic)."""
    for topics in (CHILD, PARENT):
        ensure_topics(topics, bootstrap, extra=[f"{topic}.dlq" for topic in topics.commands])


def start_processes(base: Path) -> dict[str, LocalProcess]:
    """Both processors and the three services; logs under ``base/logs``, stores ``base/state``."""
    env = {"SAGALOG_STATE_DIR": str((base / "state").resolve())}
    partitions = ["--partitions", str(PARTITIONS)]
    commands = {
        f"{saga}-processor": ["run", f"examples.control_flow.saga:{name}", *partitions]
        for saga, name in SAGAS.items()
    }
    commands |= {
        f"{name}-worker": ["worker", f"examples.control_flow.services:{name}"] for name in SERVICES
    }
    processes = {}
    for name, command in commands.items():
        log = base / "logs" / f"control-flow-{name}.log"
        log.unlink(missing_ok=True)
        processes[name] = LocalProcess(command, log, env=dict(env)).start()
    return processes


@dataclass(frozen=True)
class Results:
    orders: list[PlannedOrder]
    published_ms: dict[str, int]
    outcomes: dict[str, Outcome]

    @property
    def mismatches(self) -> list[PlannedOrder]:
        return [
            o
            for o in self.orders
            if (got := self.outcomes.get(o.event.order_id)) and got.state != o.expected.outcome
        ]

    @property
    def missing(self) -> list[PlannedOrder]:
        return [o for o in self.orders if o.event.order_id not in self.outcomes]

    def sagas_per_second(self) -> float | None:
        """Ended sagas / (last terminal entry - first publish)."""
        if not self.outcomes or not self.published_ms:
            return None
        last = max(o.at_ms for o in self.outcomes.values())
        span_ms = last - min(self.published_ms.values())
        return len(self.outcomes) / (span_ms / 1000) if span_ms > 0 else None

    def latencies_ms(self) -> list[int]:
        return sorted(
            outcome.at_ms - self.published_ms[order_id]
            for order_id, outcome in self.outcomes.items()
            if order_id in self.published_ms
        )

    def summary(self) -> dict[str, object]:
        latencies = self.latencies_ms()
        rate = self.sagas_per_second()
        return {
            "orders": len(self.orders),
            "finished": len(self.outcomes),
            "mismatches": len(self.mismatches),
            "missing": len(self.missing),
            "outcomes": dict(Counter(o.state for o in self.outcomes.values())),
            "commands_per_saga": round(
                sum(o.expected.commands for o in self.orders) / max(1, len(self.orders)), 2
            ),
            "child_sagas": sum(1 for o in self.orders if o.expected.child),
            "sagas_per_second": None if rate is None else round(rate, 1),
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
        }


def run(
    count: int, run_id: str, timeout: float, seed: int, publisher: Publisher | None = None
) -> Results:
    """Publish ``count`` planned orders at once and follow them to their ends."""
    orders = plan_orders(count, seed=seed, run_id=run_id)
    start = journal_end(PARENT.journal)
    published = publish(orders, publisher=publisher)  # type: ignore[arg-type]  # same .event
    ids = [order.event.order_id for order in orders]
    return Results(orders, published, journal_outcomes_from(PARENT.journal, start, ids, timeout))


def wait_until_ready(processes: dict[str, LocalProcess], run_id: str, timeout: float) -> None:
    """Both processors own and restored their partitions, and one order went end to end."""
    for name in SAGAS:
        processes[f"{name}-processor"].wait_for_metrics(
            lambda samples: samples.get("sagalog_restore_remaining_records") == 0,
            timeout,
            f"the {name} processor did not get its partitions and restore its store",
        )
    warm_up = run(1, f"{run_id}-warmup", timeout, seed=0)
    if warm_up.missing or warm_up.mismatches:
        raise RuntimeError(f"the warm-up order did not end as planned: {warm_up.summary()}")
