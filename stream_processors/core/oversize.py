"""What happens to an instance whose decision would not fit in Kafka: it is parked. Pure.

A decision is staged whole or not at all (``stream_processors.engine.outputs``): when one of its
records (a journal entry, a command, the new snapshot) is larger than its topic allows, none of
it is written and the input is dead-lettered as ``outputs-too-large``. Left there, the instance
would wait for an input that is gone, with nothing to say so. ``park`` is the decision taken
instead: the instance *as it was before the input* (or the timer) journals ``SagaParked`` with a
reason that names the record, so it shows as ``needs_attention`` and an operator can act on it
(``sagas retry`` once the limit is raised or the saga fixed, then redrive the dead letter; or
``sagas resolve``):

- ``state-too-large: the snapshot would be N bytes, the limit is M``;
- ``record-too-large: command <Type> for step <step> would be N bytes, the limit is M`` (or
  ``journal entry <Kind> for step <step> ...``; without ``for step`` when no step is concerned).

There is nothing to park when there is no instance yet (a start event whose first decision does
not fit), or when it is already parked or finished: ``park`` returns None, and the input is only
dead-lettered. The park decision is a decision like any other: the engine checks it against the
limits too, and if even it does not fit (the instance's snapshot was already at the limit), it
falls back to the dead letter alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream_processors.core.decide import Decision
from stream_processors.core.fold import apply
from stream_processors.core.instance import Instance, Status
from stream_processors.core.journal import VALUE_OF_KIND, JournalEntry, Kind
from stream_processors.core.limits import Oversize
from stream_processors.core.model import SagaDefinition

#: The reasons a parked instance's ``reason`` starts with.
STATE_TOO_LARGE = "state-too-large"
RECORD_TOO_LARGE = "record-too-large"

#: ``TooLarge.record`` of the snapshot.
SNAPSHOT = "snapshot"


@dataclass(frozen=True)
class TooLarge:
    """A record of a decision that would not fit: ``oversize`` (sizes, topic; its ``detail`` is
    the dead letter's) and ``record``, what the park reason calls it (``SNAPSHOT``, ``command
    MakePayment for step payment``, ``journal entry CommandSent for step payment``)."""

    oversize: Oversize
    record: str

    @property
    def reason(self) -> str:
        size, limit = self.oversize.size, self.oversize.limit
        if self.record == SNAPSHOT:
            return f"{STATE_TOO_LARGE}: the snapshot would be {size} bytes, the limit is {limit}"
        return f"{RECORD_TOO_LARGE}: {self.record} would be {size} bytes, the limit is {limit}"


def described(kind: str, name: str | None, step: str | None) -> str:
    """``TooLarge.record`` of a command (``kind`` "command", ``name`` its type) or a journal
    entry (``kind`` "journal entry", ``name`` the entry's kind)."""
    what = kind if name is None else f"{kind} {name}"
    return what if step is None else f"{what} for step {step}"


def park(
    definition: SagaDefinition, before: Instance | None, too_large: TooLarge, now_ms: int
) -> Decision | None:
    """The decision that parks ``before`` (the instance as it was before the decision that did
    not fit) for ``too_large``; None when there is nothing to park (see the module's doc)."""
    return park_for(definition, before, too_large.reason, now_ms)


def park_for(
    definition: SagaDefinition, before: Instance | None, reason: str, now_ms: int
) -> Decision | None:
    """The decision that parks ``before`` with ``reason``; None when there is nothing to park.

    Also what the engine does when the saga's own code raises while deciding (a builder, a
    condition, ``items``): ``saga-code-failed: <error>`` (see ``code_failed``)."""
    if before is None or before.status is Status.NEEDS_ATTENTION or before.status.finished:
        return None
    # As ``decide`` emits an entry: numbered after the instance's last, folded at once.
    entry = JournalEntry(
        instance=before.instance_id,
        seq=before.seq,
        kind=VALUE_OF_KIND[Kind.SAGA_PARKED],
        at_ms=now_ms,
        saga_version=definition.version,
        reason=reason,
    )
    return Decision(apply(definition, before, entry), entries=[entry])


#: The dead-letter reason of an input (and the park reason's start) when the saga's code raised.
SAGA_CODE_FAILED = "saga-code-failed"


def code_failed(error: Exception) -> str:
    """The park reason for an exception the saga's own code raised while deciding."""
    return f"{SAGA_CODE_FAILED}: {type(error).__name__}: {str(error)[:500]}"


__all__ = [
    "RECORD_TOO_LARGE",
    "SAGA_CODE_FAILED",
    "SNAPSHOT",
    "STATE_TOO_LARGE",
    "TooLarge",
    "code_failed",
    "described",
    "park",
    "park_for",
]
