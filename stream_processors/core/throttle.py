"""Flow control, the pure part: limits, each partition's share of them, and what to release.

A saga declares ``Limit``s by name (a service's, or its own for one step): at most ``rate``
commands per ``per`` seconds and at most ``in_flight`` commands sent and not yet answered.
``Throttle`` is that declaration compiled (``SagaDefinition.throttle``): which limit a step's
command counts against (its step's own, else its service's: the command topic's first part,
``payments`` for ``payments.commands``, or the whole topic name), the instance's priority from
its start event, and the optional aging rule.

Several processors share a limit without talking to each other: each *inbox partition* owns an
equal share of it, and a partition is owned by one processor at a time, so the shares add up to
the limit across processes whatever the assignment. Both bounds are split into whole shares
(``share``: the first ``total % partitions`` partitions get one more), which add up to the limit
exactly. Under a rate a partition sends at most its share in any window of ``per`` seconds plus
``RATE_GUARD_MS`` (a sliding log of its send times), one at a time, at least ``gap_ms`` apart
(three quarters of the window over the share: a steady flow, never a burst, that can catch up
a late wake-up). So at the sending end the limit holds in any window of ``per`` seconds (in
total, at most the sum of the shares), and at the receiving end too as long as delivery delays
differ by less than the guard; the guard costs ``per / (per + guard)`` of the rate (20 per
second is sent as 18.5). The consequence for uneven load: a busy partition cannot borrow an idle
partition's share, so with few instances (or hot keys) the total reached is below the limit. A
limit must give every partition something (``rate >= partitions`` and ``in_flight >=
partitions``): ``validate_shares`` says so at start-up.

``release`` decides, for one limit in one partition, which queued commands go now and when to
look again: given the queue, the number in flight, the recent send times and the time. It is a
pure function of its arguments (a virtual clock in tests). Order: highest effective priority
first (the instance's priority, plus one per ``aging_ms`` spent queued when aging is on), then
oldest first, then the order of arrival.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream_processors.codecs.records import DeclarationError

#: A rate window is this much longer than declared: commands are produced in a transaction
#: and reach the worker after the processor's commit and the worker's own fetch, so sends may
#: arrive closer together than they left. The guard keeps the limit true at the receiving end
#: for delivery delays that differ by up to this much (a worker that must never see more, even
#: with larger delays, paces itself too: ``Worker(rate=...)``); it costs ``per / (per + guard)``
#: of the declared rate: 20 per second is sent as 18.5.
RATE_GUARD_MS = 80
#: Under a rate, sends are at least this fraction of ``window / share`` apart: less than the
#: even spacing, so that a send made late (the loop woke late) is caught up on, within the
#: window's bound.
SPACING = 0.75


@dataclass(frozen=True)
class Limit:
    """At most ``rate`` commands per ``per`` seconds, and at most ``in_flight`` sent and not
    yet answered (None: no such bound)."""

    rate: int | None = None
    in_flight: int | None = None
    per: float = 1.0

    def __post_init__(self) -> None:
        if self.rate is None and self.in_flight is None:
            raise DeclarationError("a Limit needs rate= or in_flight= (or both)")
        for what, value in (("rate", self.rate), ("in_flight", self.in_flight)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise DeclarationError(f"Limit {what} must be a whole number >= 1, not {value!r}")
        if self.per <= 0:
            raise DeclarationError(
                f"Limit per must be a positive number of seconds, not {self.per}"
            )


#: The instance's priority from its start event: a field's name, or a function of the event.
PrioritySource = str | Callable[[Any], int]


@dataclass(frozen=True)
class Throttle:
    """A saga's flow control: limits by name, each step's limit, priority and aging."""

    limits: Mapping[str, Limit] = field(default_factory=dict)
    #: A step (node name) to the limit it counts against, when not its service's.
    steps: Mapping[str, str] = field(default_factory=dict)
    priority: PrioritySource | None = None
    #: Queued commands gain one priority per this many ms queued (None: no aging).
    aging_ms: int | None = None

    def limit_of(self, node: str, topic: str) -> str | None:
        """The limit a command of ``node`` to ``topic`` counts against, if any."""
        named = self.steps.get(node)
        if named is not None:
            return named
        for name in (topic, service_of(topic)):
            if name in self.limits:
                return name
        return None

    def priority_of(self, start: Any) -> int:
        """The priority an instance starts with (0 without a priority rule)."""
        source = self.priority
        if source is None:
            return 0
        value = getattr(start, source) if isinstance(source, str) else source(start)
        return int(value or 0)


#: An operator's change of an instance's priority: an ``OperatorAction`` with this action and
#: the new priority at the start of its reason (``prioritize_reason``). Applied by the processor
#: to the partition's flow state (``stream_processors.engine.flow``), not by ``decide``: a
#: priority orders a partition's queue, it is not the instance's state.
PRIORITIZE = "prioritize"
_PRIORITY_PREFIX = "priority "


def prioritize_reason(priority: int, why: str) -> str:
    """The ``OperatorAction.reason`` of a ``prioritize``: the priority, then why."""
    return f"{_PRIORITY_PREFIX}{priority}: {why}"


def priority_in(reason: str) -> int | None:
    """The priority a ``prioritize`` action's reason sets, or None if it names none."""
    head = reason.removeprefix(_PRIORITY_PREFIX).split(":", 1)[0]
    if not reason.startswith(_PRIORITY_PREFIX) or not head.lstrip("-").isdigit():
        return None
    return int(head)


def service_of(topic: str) -> str:
    """The service a command topic belongs to: its name up to the first dot."""
    return topic.split(".", 1)[0]


def share(total: int, partition: int, partitions: int) -> int:
    """Partition ``partition``'s whole share of ``total`` split over ``partitions``."""
    base, extra = divmod(total, partitions)
    return base + (1 if partition < extra else 0)


def validate_shares(throttle: Throttle, partitions: int) -> None:
    """Raise ``DeclarationError`` for a limit too small to give every partition a share."""
    for name, limit in throttle.limits.items():
        for what, value in (("rate", limit.rate), ("in_flight", limit.in_flight)):
            if value is not None and value < partitions:
                raise DeclarationError(
                    f"limit {name!r}: {what}={value} is less than the inbox's {partitions} "
                    "partitions; each partition owns an equal share, so every one needs at "
                    "least 1: raise the limit or use fewer partitions"
                )


@dataclass(frozen=True)
class Capacity:
    """One limit's share in one partition: sends per window, and in flight at once."""

    #: The partition's share of the rate: at most this many sends in any window.
    rate: int | None
    window_ms: int
    in_flight: int | None

    @property
    def gap_ms(self) -> int:
        """The least time between two sends under the rate (``SPACING``)."""
        return 0 if self.rate is None else math.ceil(self.window_ms * SPACING / self.rate)

    @classmethod
    def of(cls, limit: Limit, partition: int, partitions: int) -> Capacity:
        return cls(
            None if limit.rate is None else share(limit.rate, partition, partitions),
            round(limit.per * 1000) + RATE_GUARD_MS,
            None if limit.in_flight is None else share(limit.in_flight, partition, partitions),
        )


@dataclass(frozen=True, order=True)
class Queued:
    """A command waiting for its limit: what it is (``command_id``), its instance and when and
    in which order (``seq``) it was queued."""

    queued_ms: int
    seq: int
    command_id: str
    instance: str


@dataclass(frozen=True)
class Release:
    """What ``release`` decided: the commands to send now, in order, and when to look again
    (None: only when a reply frees a place, or a new command comes)."""

    send: list[Queued]
    wake_ms: int | None


def effective(priority: int, queued_ms: int, now_ms: int, aging_ms: int | None) -> int:
    """A queued command's priority now: its instance's, plus one per ``aging_ms`` waited."""
    if aging_ms is None or aging_ms <= 0:
        return priority
    return priority + max(0, now_ms - queued_ms) // aging_ms


def ordered(
    queue: Sequence[Queued],
    priority: Callable[[str], int],
    now_ms: int,
    aging_ms: int | None = None,
) -> list[Queued]:
    """The queue in release order: highest effective priority, then oldest, then first come."""
    return sorted(
        queue,
        key=lambda q: (-effective(priority(q.instance), q.queued_ms, now_ms, aging_ms), q),
    )


def room(capacity: Capacity, in_flight: int, sent_ms: Sequence[int], now_ms: int) -> int:
    """How many more commands may be sent now: under a rate, one at most, and only while the
    window holds fewer than the share and the last send is ``gap_ms`` old."""
    free = 1 << 30
    if capacity.in_flight is not None:
        free = capacity.in_flight - in_flight
    if capacity.rate is not None:
        if next_slot_ms(capacity, sent_ms, now_ms) is not None:
            return 0
        free = min(free, 1)
    return max(0, free)


def next_slot_ms(capacity: Capacity, sent_ms: Sequence[int], now_ms: int) -> int | None:
    """When the rate next allows a send, if not now (None: now, or no rate bound): once the
    last send is ``gap_ms`` old and the window (ending then) holds fewer than the share."""
    if capacity.rate is None or not sent_ms:
        return None
    recent = sorted(at for at in sent_ms if at > now_ms - capacity.window_ms)
    due = max(sent_ms) + capacity.gap_ms
    if len(recent) >= capacity.rate:
        # The oldest send that must leave the window before another may enter it.
        due = max(due, recent[len(recent) - capacity.rate] + capacity.window_ms)
    return due if due > now_ms else None


def release(
    queue: Sequence[Queued],
    capacity: Capacity,
    in_flight: int,
    sent_ms: Sequence[int],
    now_ms: int,
    priority: Callable[[str], int] = lambda _: 0,
    aging_ms: int | None = None,
) -> Release:
    """Which of ``queue`` to send at ``now_ms``, and when to look again."""
    free = room(capacity, in_flight, sent_ms, now_ms)
    order = ordered(queue, priority, now_ms, aging_ms)
    send = order[:free]
    if len(send) == len(order):
        return Release(send, None)
    after = [*sent_ms, *(now_ms for _ in send)]
    # Ageing changes the order, never the room: only the rate is a reason to wake.
    return Release(send, next_slot_ms(capacity, after, now_ms))
