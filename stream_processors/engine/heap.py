"""Giving the memory a restore freed back to the operating system.

A restore reads every snapshot of its partitions through Python and the Kafka client (a million
at a restart) and writes them to RocksDB, and the instances are then counted from the store
(``metrics``). All of that is freed once done, but glibc's allocator keeps freed memory in its
heaps for reuse, and the pages between the few allocations that stay alive are never returned:
at a million instances that was about 55 MB of resident memory held for nothing, the whole of
what still grew with the number of instances (docs/benchmarks.md). ``malloc_trim`` hands the free
pages back. Elsewhere (musl, macOS) there is no such call and nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # the C library's, if glibc
    except (OSError, AttributeError):
        return None
    return trim


def release_freed() -> bool:
    """Return the allocator's free pages to the operating system; False where it cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)  # 0: keep no free space at the heap's top either
    return True
