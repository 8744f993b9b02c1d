"""A worker's concurrency and pace: up to K handlers at once, one key at a time, at most N/s.

``run_by_key`` runs one batch of commands on up to ``concurrency`` threads: the commands of one
key (an instance: commands are keyed by the saga instance) run one after the other, in their
order in the batch, and different keys side by side. It returns when the whole batch is done
(or raises the first error, once every running one has ended), so the worker's transaction
commits the batch's offsets only when every command of the batch has its answer: an offset is
never committed past an unfinished command. The batch is also the worker's back-pressure: the
next is consumed only once this one is done, so memory holds at most one batch however slow the
handlers are.

``Pace`` spaces the handlers' starts, across threads, to at most ``rate`` per second: a limit at
the receiving end, for a service that several sagas (or processors) call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Pace:
    """At most ``rate`` starts per second, evenly spaced (None: no limit)."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.gap = 0.0 if rate is None else 1.0 / rate
        self._clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, stopping: threading.Event) -> None:
        """Wait for this start's turn (or until ``stopping`` is set)."""
        if not self.gap:
            return
        with self._lock:
            now = self._clock()
            turn = max(now, self._next)
            self._next = turn + self.gap
        if turn > now:
            stopping.wait(turn - now)


def run_by_key(
    items: Sequence[T],
    key_of: Callable[[T], Hashable],
    run: Callable[[T], None],
    concurrency: int,
) -> None:
    """``run`` every item: one key's items in order, up to ``concurrency`` keys at once."""
    if concurrency <= 1 or len(items) <= 1:
        for item in items:
            run(item)
        return
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key_of(item), []).append(item)

    def run_group(group: list[T]) -> None:
        for item in group:
            run(item)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="handler") as pool:
        futures = [pool.submit(run_group, group) for group in groups.values()]
    for future in futures:  # all done here (the pool's exit waited): the first error, if any
        error = future.exception()
        if error is not None:
            raise error
