"""Timers and retention: firing due timers and expiring finished instances, in the transaction.

The store's indexes (``Due.TIMER``, ``Due.EXPIRY``) say where to look; the instance says whether
a timer is still set (a reply may have cancelled it) or whether it is still finished and old
enough. Index entries dealt with are recorded in the open transaction and deleted from the store
with its commit, so if the transaction aborts (or the partition is lost) they are dealt with
again. What a timer decides is staged like any input's decision, through the ``Stager`` (the
processor): this module decides *what* is due, not how it is written. A timer's decision that
would not fit parks the instance with the timer still set (``stream_processors.core.oversize``):
it fires again after an operator's retry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from stream_processors.core import limits
from stream_processors.core.decide import Decision, decide_timer
from stream_processors.core.instance import Instance
from stream_processors.core.model import SagaDefinition
from stream_processors.core.oversize import code_failed
from stream_processors.engine import metrics
from stream_processors.engine.outputs import Unstaged
from stream_processors.engine.store import Due, SnapshotStore
from stream_processors.engine.transaction import OpenTransaction

#: How often (seconds) to look for due timers: the resolution of every timer.
DUE_CHECK_INTERVAL = 0.05


log = logging.getLogger(__name__)


class Stager(Protocol):
    """What firing and expiring need of the processor."""

    def load(self, partition: int, instance_id: str) -> Instance | None: ...
    def begin(self) -> None: ...
    def emit(
        self, decision: Decision, partition: int, key: bytes, before: Instance | None, now_ms: int
    ) -> Unstaged | None: ...
    def dead_letter_timer(self, key: bytes, timer: str, oversize: limits.Oversize) -> None: ...
    def park(
        self, partition: int, key: bytes, before: Instance | None, reason: str, now_ms: int
    ) -> bool: ...


class DueWork:
    def __init__(
        self, definition: SagaDefinition, store: SnapshotStore, retention_ms: int | None
    ) -> None:
        self.definition = definition
        self.store = store
        self.retention_ms = retention_ms
        self._checked = 0.0
        self._expired = metrics.EXPIRED.labels(saga=definition.name)

    def run(
        self,
        partitions: Iterable[int],
        transaction: OpenTransaction,
        stager: Stager,
        now: float,
    ) -> None:
        """Fire what is due and expire what is old in ``partitions``, at most every
        ``DUE_CHECK_INTERVAL`` seconds."""
        if now - self._checked < DUE_CHECK_INTERVAL:
            return
        self._checked = now
        now_ms = int(now * 1000)
        for partition in sorted(partitions):
            for index in Due:
                for ref in self.store.due(index, partition, now_ms):
                    if transaction.deal_with(ref):
                        if index is Due.TIMER:
                            self._fire(stager, partition, ref[3], now_ms)
                        else:
                            self._expire(stager, transaction, partition, ref[3], now_ms)

    def _fire(self, stager: Stager, partition: int, instance_id: str, now_ms: int) -> None:
        instance = stager.load(partition, instance_id)
        if instance is None:
            return
        due = sorted((t.due_ms, name) for name, t in instance.timers.items() if t.due_ms <= now_ms)
        for _, name in due:
            before = stager.load(partition, instance_id)  # the timer before may have changed it
            try:
                decision = decide_timer(self.definition, before, name, now_ms)
            except Exception as error:  # the saga's code raised: park, keeping the timer
                reason = code_failed(error)
                log.error("instance %s: timer %s: %s", instance_id, name, reason, exc_info=error)
                stager.begin()
                stager.park(partition, instance_id.encode(), before, reason, now_ms)
                return
            if decision.entries:
                stager.begin()
                key = instance_id.encode()
                unstaged = stager.emit(decision, partition, key, before, now_ms)
                # Parked, the instance keeps the timer: it fires again once an operator retries.
                # Not parked, there is no input to dead-letter: a record saying so instead.
                if unstaged is not None and not unstaged.parked:
                    stager.dead_letter_timer(key, name, unstaged.too_large.oversize)

    def _expire(
        self,
        stager: Stager,
        transaction: OpenTransaction,
        partition: int,
        instance_id: str,
        now_ms: int,
    ) -> None:
        """Tombstone a finished instance's snapshot: its history stays in the journal."""
        retention = self.retention_ms
        instance = stager.load(partition, instance_id)
        if instance is None or retention is None or not instance.status.finished:
            return
        if instance.updated_at_ms + retention <= now_ms:
            stager.begin()
            transaction.tombstone((partition, instance_id))
            self._expired.inc()
