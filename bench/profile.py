"""Where the processor's time goes: pyinstrument on ``sagas run`` working through a backlog.

The processor runs as in ``bench.engine`` (fresh topics, N OrderPlaced inputs in the inbox),
but under ``python -m pyinstrument``; when the backlog is done it gets SIGTERM, returns from its
loop, and pyinstrument writes its text report. Profiling slows the process down: the rate seen
here is not the engine's figure, only the shares of time are of interest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import (
    PROCESSOR_GROUP,
    TOPICS,
    fill,
    follow_drain,
    fresh_saga_topics,
    order_records,
    processor,
)


def measure(records: int, output: Path) -> dict[str, Any]:
    fresh_saga_topics()
    fill(TOPICS.inbox, order_records(records, "profile"))
    output.parent.mkdir(parents=True, exist_ok=True)
    process = processor("processor-profiled")
    process.python_args = ["-m", "pyinstrument", "-r", "text", "-o", str(output.resolve())]
    process.start()
    try:
        drain = follow_drain(PROCESSOR_GROUP, TOPICS.inbox, records, 600, lambda: process.running)
    finally:
        code = process.stop(60)
    text = output.read_text() if output.exists() else ""
    return {
        "records": records,
        "inputs_per_second_under_profiler": round(drain.per_second, 1),
        "report": str(output),
        "exit_code": code,
        "lines": len(text.splitlines()),
    }
