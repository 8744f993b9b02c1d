"""Flow control, the pure part: limits, each partition's share of them, and what to release.

A saga declares ``Limit``s by name (a service's, or its own for one step): at most ``rate``
commands per ``per`` seconds and at most ``in_flight`` commands sent and not yet answered.
``Throttle`` is that declaration compiled (``SagaDefinition.throttle``): which limit a step's
command counts against (its step's own, else its service's: the command topic's first part,
``payments`` for ``payments.commands``, or the whole topic name), the instance's priority from
its start event, and the optional aging rule. ``compile_throttle`` builds it from a declaration
and checks it, for a Python saga (``sagas.saga``) and a definition (``declarative.flow_control``)
alike.

Several processors share a limit without talking to each other: each *inbox partition* owns an
equal share of it, and a partition is owned by one processor at a time, so the shares add up to
the limit across processes whatever the assignment. Both bounds are split into whole shares
(``share``: the first ``total % partitions`` partitions get one more), which add up to the limit
exactly.

A rate is also spread evenly over time, across partitions and processes, by a grid of *slots* on
the wall clock that every processor computes alike (``Capacity.of``): a limit of ``rate`` per
``per`` seconds has ``rate`` slots every period of ``per`` plus the limit's ``guard``, evenly
spaced, dealt to the partitions in turn (slot ``k`` of a period is partition ``k % partitions``'s,
so each gets its share). A partition sends only in its own slots (at the slot, or late by less than
the slots' spacing: a late wake-up), one command per slot, and never more than its share in any
``per`` seconds (a sliding log of its send times). So the limit's commands leave as one steady
stream, whichever processes own the partitions: at most ``rate`` in any ``per`` seconds at the
sending end, one every ``(per + guard) / rate``; at the receiving end too, as long as delivery
delays (plus how late in its slot each command left, and the skew between the processors' clocks:
keep them synchronized) differ by less than the guard (less one slot's spacing). The guard
(``Limit.guard``, 0.25 s by default) costs ``per / (per + guard)`` of the rate (20 per second is
sent as 16 per second). The consequence for uneven load: a slot whose partition has nothing queued
is lost, since a busy partition cannot borrow an idle partition's share, so with few instances (or
hot keys) the total reached is below the limit. A limit must give every partition something (``rate
>= partitions`` and ``in_flight >= partitions``): ``validate_shares`` says so at start-up.

``release`` decides, for one limit in one partition, which queued commands go now and when to
look again: given the queue, the number in flight, the recent send times and the time. It is a
pure function of its arguments (a virtual clock in tests). Order: highest effective priority
first (the instance's priority, plus one per ``aging_ms`` spent queued when aging is on), then
oldest first, then the order of arrival.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream_processors.codecs.records import DeclarationError

#: The default of ``Limit.guard``, in ms: a rate's period of slots is this much longer than
#: declared. Commands are produced in a transaction and reach the worker after the processor's
#: commit, the worker's own fetch and its previous batch's commit, so sends may arrive closer
#: together than they left. The guard keeps the limit true at the receiving end for delivery
#: delays that differ by up to about the guard less one slot's spacing (measured: a worker's
#: batch and commit held commands back for up to 243 ms on a loaded machine); it costs
#: ``per / (per + guard)`` of the declared rate: 20 per second is sent as 16 per second. A
#: worker that must never see more, whatever the delays, paces itself too (``Worker(rate=...)``).
RATE_GUARD_MS = 250


@dataclass(frozen=True)
class Limit:
    """At most ``rate`` commands per ``per`` seconds, and at most ``in_flight`` sent and not
    yet answered (None: no such bound)."""

    rate: int | None = None
    in_flight: int | None = None
    per: float = 1.0
    #: Seconds added to each period of ``per`` for delivery jitter (see ``RATE_GUARD_MS``):
    #: larger holds the limit at the service through longer stalls, smaller sends closer to it.
    guard: float = RATE_GUARD_MS / 1000

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
        if self.guard < 0:
            raise DeclarationError(f"Limit guard must be >= 0 seconds, not {self.guard}")


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


class FlowControlError(DeclarationError):
    """A flow-control declaration's problem: the ``option`` it is in (``limits``, ``limit``,
    ``aging``) and, for a step's ``limit``, the ``step``; each front end (a Python saga's
    keywords, a definition's fields) says where that is in its own terms."""

    def __init__(self, message: str, option: str, step: str | None = None) -> None:
        super().__init__(message)
        self.option = option
        self.step = step


def compile_throttle(
    limits: Mapping[str, Limit] | None,
    step_limits: Mapping[str, str | Limit],
    priority: PrioritySource | None,
    aging: float | None,
) -> Throttle | None:
    """A saga's flow control from its declaration: named ``limits``, each step's limit (one of
    ``limits`` by name, or a ``Limit`` of its own, named after the step), the ``priority`` rule
    and ``aging`` in seconds. None when nothing is limited or prioritized. Raises
    ``FlowControlError``."""
    if not limits and not step_limits and priority is None:
        return None
    named = dict(limits or {})
    for name, limit in named.items():
        if not isinstance(limit, Limit):
            raise FlowControlError(f"limits[{name!r}] must be a Limit, got {limit!r}", "limits")
    steps: dict[str, str] = {}
    for step, given in step_limits.items():
        if isinstance(given, Limit):
            named[step] = given  # a step's own limit is named after the step
            steps[step] = step
        elif given in named:
            steps[step] = given
        else:
            raise FlowControlError(
                f"step {step!r} names limit {given!r}, which is not one of the saga's limits "
                f"({', '.join(sorted(named)) or 'none declared'})",
                "limit",
                step,
            )
    if aging is not None and (isinstance(aging, bool) or aging <= 0):
        raise FlowControlError("aging must be a positive number of seconds", "aging")
    aging_ms = None if aging is None else round(aging * 1000)
    return Throttle(named, steps, priority, aging_ms)


#: An operator's change of an instance's priority: an ``OperatorAction`` with this action and
#: the new priority at the start of its reason (``prioritize_reason``). ``decide`` journals it
#: (or refuses it) as any operator action; the processor then applies it to the partition's
#: flow state (``stream_processors.engine.flow``): a priority orders a partition's queue, it is
#: not the instance's state, and a replay reads it back from the journal.
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
    """One limit's share in one partition: its rate slots, and in flight at once."""

    #: The partition's share of the rate: at most this many sends in any ``per_ms``.
    rate: int | None
    #: The period of the slots: the declared window plus the limit's guard.
    window_ms: int
    in_flight: int | None
    #: The partition's slots: offsets in the period (default: ``rate`` evenly spaced).
    slots_ms: tuple[int, ...] = ()
    #: How late a slot may still be used: the spacing of all the limit's slots (default: of
    #: this partition's).
    grace_ms: int = 0
    guard_ms: int = RATE_GUARD_MS

    @property
    def per_ms(self) -> int:
        """The declared window, in which the share is never exceeded."""
        return self.window_ms - self.guard_ms

    def offsets(self) -> tuple[int, ...]:
        if self.slots_ms or self.rate is None:
            return self.slots_ms
        return tuple(k * self.window_ms // self.rate for k in range(self.rate))

    def grace(self) -> int:
        if self.grace_ms or self.rate is None:
            return self.grace_ms
        return self.window_ms // self.rate

    @classmethod
    def of(cls, limit: Limit, partition: int, partitions: int) -> Capacity:
        guard = round(limit.guard * 1000)
        window = round(limit.per * 1000) + guard
        in_flight = (
            None if limit.in_flight is None else share(limit.in_flight, partition, partitions)
        )
        if limit.rate is None:
            return cls(None, window, in_flight, guard_ms=guard)
        slots = tuple(
            k * window // limit.rate for k in range(limit.rate) if k % partitions == partition
        )
        return cls(len(slots), window, in_flight, slots, window // limit.rate, guard)


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
    """How many more commands may be sent now: under a rate, one at most, in a slot."""
    free = 1 << 30
    if capacity.in_flight is not None:
        free = capacity.in_flight - in_flight
    if capacity.rate is not None:
        if next_slot_ms(capacity, sent_ms, now_ms) is not None:
            return 0
        free = min(free, 1)
    return max(0, free)


def next_slot_ms(capacity: Capacity, sent_ms: Sequence[int], now_ms: int) -> int | None:
    """When the rate next allows a send, if not now (None: now, or no rate bound): in the
    first of the partition's slots not used yet and not past its grace, once fewer than the
    share were sent in the ``per_ms`` before."""
    if capacity.rate is None:
        return None
    earliest = now_ms
    recent = sorted(at for at in sent_ms if at > now_ms - capacity.per_ms)
    if len(recent) >= capacity.rate:
        # The oldest send that must leave the window before another may enter it.
        earliest = recent[len(recent) - capacity.rate] + capacity.per_ms
    lower = earliest - capacity.grace()
    if sent_ms:
        lower = max(lower, max(sent_ms))  # a slot is used once: by a send at or after it
    due = max(earliest, _slot_after(capacity, lower))
    return due if due > now_ms else None


def _slot_after(capacity: Capacity, after_ms: int) -> int:
    """The first of the partition's slots later than ``after_ms`` on the wall clock's grid."""
    period = capacity.window_ms
    first = after_ms // period
    for n in (first, first + 1):
        for offset in capacity.offsets():
            if n * period + offset > after_ms:
                return n * period + offset
    raise AssertionError("a partition with a rate share has a slot in every period")


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
