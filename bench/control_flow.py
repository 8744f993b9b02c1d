"""The construct-heavy saga end to end, beside the order saga's end-to-end figure.

The fulfilment example (``examples/control_flow``: a Choice, a 1 s Sleep on standard orders, a
Parallel of two compensable branches, a Map over the order's lines, an ``invoicing`` child saga)
with the child's processor and the three services, each its own OS process, on fresh topics
(the example's ``measure`` module). Saturation as for the order saga (``bench.end_to_end``): a
burst of orders published at once, the mix of paths of the integration test
(``scenario.plan_orders``), completed sagas per second from the first publish to the last
terminal entry of the parent's journal. Every order must end as its data implies.
``report.derived`` puts it next to the order saga's saturation as a ratio: what the constructs
cost in throughput, in the same run on the same broker.
"""

from __future__ import annotations

import uuid
from typing import Any

from bench.common import BASE, delete_topics, ready_publisher, saga_topic_names
from examples.control_flow.measure import (
    CHILD,
    PARENT,
    ensure_all_topics,
    run,
    start_processes,
    wait_until_ready,
)

SEED = 11


def measure(orders: int) -> dict[str, Any]:
    delete_topics([*saga_topic_names(CHILD), *saga_topic_names(PARENT)])
    ensure_all_topics()
    processes = start_processes(BASE)
    run_id = uuid.uuid4().hex[:8]
    try:
        wait_until_ready(processes, run_id, 120)
        saturation = run(orders, f"{run_id}-sat", 300, SEED, ready_publisher()).summary()
    finally:
        codes = {name: process.stop() for name, process in processes.items()}
    if saturation["mismatches"] or saturation["missing"]:
        raise RuntimeError(f"orders did not end as their data implies: {saturation}")
    return {"saturation": saturation, "exit_codes": codes}
