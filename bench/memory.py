"""Memory: resident set size of a processor holding many live instances, against few.

Each case restores its instances from the changelog (``recovery.restore``): the processor then
owns every one of them, in its RocksDB store, and its RSS (``psutil``) is read once it is idle.
"Flat" means the many-instance RSS stays close to the few-instance one: instances live in
RocksDB on disk and a bounded decoded cache, not in Python objects.
"""

from __future__ import annotations

from typing import Any

from bench.recovery import restore, rss_bytes


def measure(small: int, large: int) -> dict[str, Any]:
    """RSS with ``small`` then ``large`` instances; the large case's restore rate comes too."""
    figures: dict[str, Any] = {}
    for count in (small, large):  # small first: a store dropped for a new changelog is cheap
        restored, process = restore(count)
        try:
            figures[str(count)] = {"rss_mb": round(rss_bytes(process) / 2**20, 1)} | restored
        finally:
            process.stop()
    few, many = figures[str(small)]["rss_mb"], figures[str(large)]["rss_mb"]
    return {"cases": figures, "ratio": round(many / few, 2) if few else None}
