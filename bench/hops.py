"""Where a saga's time goes: its hops, read from the timestamps of the records it left on Kafka.

Nothing inside the engine is instrumented. After a measured run, every record of the run's
sagas is read back (read_committed) from each topic it crosses, with a time taken from the
record itself:

- ``published``: the source event's Kafka timestamp (the publisher's CreateTime);
- ``routed``: the copy the processor wrote to the inbox (CreateTime, stamped when produced),
  if it routed the event: one decided without the inbox hop (docs/direct-sources.md) has none,
  and its first hop is ``published → decided``;
- ``decided``: journal entries, by their own ``at_ms`` (a decision's entries are grouped);
- ``command X``: the command record's CreateTime (stamped when the processor produced it);
- ``reply X``: the worker's reply in the inbox (CreateTime, when the worker produced it).

A record is stamped when it is produced, but can be read only once its transaction commits: so
a hop *into* a record includes the previous writer's commit wait and the reader's poll, e.g.
``command MakePayment → reply PaymentCompleted`` is the processor's commit, the worker's
consume, handling, and producing the reply. Each saga's events are put in time order (ties
broken in causal order) and consecutive events make its hops; the breakdown is over the sagas
whose hops follow the most common path (the happy path at 3 % failures), p50 and p99 per hop.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Message

from bench.common import TOPICS, read_topic, topic_ends
from sagas.local import percentile
from stream_processors.codecs.records import decode_record
from stream_processors.core.journal import JournalEntry
from stream_processors.engine.routing import COMMAND_ID, INSTANCE, header

#: Ties at one millisecond are broken in the order things can happen.
PUBLISHED, ROUTED, REPLY, DECIDED, COMMAND = range(5)
#: (ms, rank, label)
Event = tuple[int, int, str]


def topics() -> list[str]:
    return [*TOPICS.sources, TOPICS.inbox, TOPICS.journal, *TOPICS.commands]


def starts() -> dict[str, dict[int, int]]:
    """Every crossed topic's end offsets now: taken before a run, where its records begin."""
    return {topic: topic_ends(topic) for topic in topics()}


def _type_name(value: bytes | None) -> str:
    try:
        return type(decode_record(value)).__name__
    except Exception:  # not a framed record of ours: still an event, by its topic alone
        return "record"


def _classify(topic: str, message: Message) -> tuple[str, Event] | None:
    """(instance id, event) for one record, or None if it is not part of a saga."""
    key = (message.key() or b"").decode(errors="replace")
    stamp = message.timestamp()[1]
    if topic == TOPICS.journal:
        entry = JournalEntry.decode(message.value() or b"")
        return entry.instance, (entry.at_ms, DECIDED, str(entry.kind))
    if topic == TOPICS.inbox:
        if header(message.headers(), COMMAND_ID) is not None:
            return key, (stamp, REPLY, f"reply {_type_name(message.value())}")
        return key, (stamp, ROUTED, "routed")
    if topic in TOPICS.commands:
        instance = header(message.headers(), INSTANCE) or key
        return instance, (stamp, COMMAND, f"command {_type_name(message.value())}")
    return key, (stamp, PUBLISHED, "published")


def _timeline(events: Iterable[Event]) -> list[tuple[int, str]]:
    """Events in order, each run of journal entries (a decision) made one ``decided`` event."""
    out: list[tuple[int, str]] = []
    previous_rank = -1
    for ms, rank, label in sorted(events):
        if rank == DECIDED and previous_rank == DECIDED:
            continue
        out.append((ms, "decided" if rank == DECIDED else label))
        previous_rank = rank
    return out


def breakdown(start: dict[str, dict[int, int]], instances: set[str]) -> dict[str, Any]:
    """The hops of ``instances``' sagas, from records after ``start`` (see ``starts``)."""
    events: dict[str, list[Event]] = defaultdict(list)
    for topic in topics():
        for message in read_topic(topic, start.get(topic)):
            found = _classify(topic, message)
            if found is not None and found[0] in instances:
                events[found[0]].append(found[1])
    return statistics(events)


def statistics(events: dict[str, list[Event]]) -> dict[str, Any]:
    """p50 and p99 of each hop over the sagas that took the most common path."""
    paths: dict[str, list[tuple[int, str]]] = {i: _timeline(e) for i, e in events.items()}
    shapes = Counter(tuple(label for _, label in path) for path in paths.values())
    if not shapes:
        return {"sagas": 0, "of": 0, "hops": []}
    common, count = shapes.most_common(1)[0]
    durations: list[list[int]] = [[] for _ in common[1:]]
    totals: list[int] = []
    for path in paths.values():
        if tuple(label for _, label in path) != common:
            continue
        for hop, (before, after) in enumerate(itertools.pairwise(path)):
            durations[hop].append(after[0] - before[0])
        totals.append(path[-1][0] - path[0][0])
    hops = []
    for hop, values in enumerate(durations):
        values.sort()
        hops.append(
            {
                "hop": f"{common[hop]} → {common[hop + 1]}",
                "p50_ms": percentile(values, 50),
                "p99_ms": percentile(values, 99),
                "mean_ms": round(sum(values) / len(values), 1),
            }
        )
    totals.sort()
    return {
        "sagas": count,
        "of": len(paths),
        "path": " → ".join(common),
        "hops": hops,
        "total_p50_ms": percentile(totals, 50),
        "total_p99_ms": percentile(totals, 99),
    }
