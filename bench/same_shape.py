"""The same-shape pipe: the limit for the engine's own work, without its logic.

A plain transactional pipe (``bench.limit.pipe``) that consumes the same inbox records as the
engine benchmark (same N, keys and bytes, on the saga's own inbox) and produces, per input, the
very records the engine wrote for one input: its journal entries, its command (with headers) and
its snapshot, byte for byte, to the saga's own topics (same partition counts and policies), the
journal and snapshot to the input's partition as the engine does, committing every 100 ms like
the engine under load. The template is what ``bench.engine.shape`` read from the engine's output
in the same run; the engine's inputs per second are reported as a share of this pipe's.
"""

from __future__ import annotations

from typing import Any

from bench.common import TOPICS, fill, fresh_saga_topics, order_records
from bench.engine import SHAPE
from bench.limit import load_shape, run_pipe

GROUP = "bench.same_shape"


def measure(records: int, timeout: float = 600) -> dict[str, Any]:
    if not SHAPE.exists():
        raise RuntimeError(f"no engine output shape at {SHAPE}: run the engine phase first")
    outputs = load_shape(SHAPE)
    fresh_saga_topics()
    fill(TOPICS.inbox, order_records(records, "engine"))
    drain = run_pipe(TOPICS.inbox, GROUP, outputs, records, timeout)
    return {
        "records": records,
        "measured_records": drain.records,
        "seconds": round(drain.seconds, 3),
        "inputs_per_second": round(drain.per_second, 1),
        "records_out_per_input": len(outputs),
        "bytes_out_per_input": sum(len(o.value or b"") for o in outputs),
        "outputs": [o.topic for o in outputs],
    }
