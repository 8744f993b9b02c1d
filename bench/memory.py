"""Memory: resident set size of a processor holding 10,000, 100,000 and 1,000,000 instances.

Each case restores its instances from the changelog (``recovery.restore``): the processor then
owns every one of them, in its RocksDB store, and its RSS (``psutil``) is read once it is idle:
restored, and done counting its instances by status for its metrics (``count_seconds``).
"Flat" means the largest case's RSS stays close to the smallest's: instances live in RocksDB,
whose block cache and write buffers are bounded by configuration (``store.MemoryBounds``, the
bounds in force are reported), and in a bounded decoded cache, not in Python objects.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bench.recovery import restore, rss_bytes
from sagas.local import LocalProcess
from stream_processors.engine.store import MemoryBounds


def _counted(process: LocalProcess, count: int) -> float:
    """Seconds from the restore's end until the processor has counted its ``count`` instances
    by status (its metrics): then it is idle."""
    began = time.monotonic()
    process.wait_for_metrics(
        lambda m: m.get("sagalog_instances", 0) >= count,
        timeout=900,
        what=f"the processor did not count its {count} instances",
    )
    return round(time.monotonic() - began, 1)


def measure(counts: Sequence[int]) -> dict[str, Any]:
    """RSS with each of ``counts`` instances, smallest first; each case's restore rate too."""
    figures: dict[str, Any] = {}
    for count in sorted(counts):  # small first: a store dropped for a new changelog is cheap
        restored, process = restore(count)
        try:
            counted = _counted(process, count)
            figures[str(count)] = {"rss_mb": round(rss_bytes(process) / 2**20, 1)} | restored
            figures[str(count)]["count_seconds"] = counted
        finally:
            process.stop()
    few, many = figures[str(min(counts))]["rss_mb"], figures[str(max(counts))]["rss_mb"]
    return {
        "cases": figures,
        "smallest": min(counts),
        "largest": max(counts),
        "ratio": round(many / few, 2) if few else None,
        "rocksdb_bounds": vars(MemoryBounds.from_environment()),
    }
