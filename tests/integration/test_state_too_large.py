"""A state that outgrows its topic parks the instance, and an operator can resolve it (issue 11).

A real ``sagas run`` of ``GrowingLists`` (``tests.integration.growing_lists``) whose snapshots
topic allows 20,000-byte messages gets a list and then kilobyte items, more than fit. The
instance ends ``needs_attention`` with reason ``state-too-large: ...`` (its snapshot is the one
from before the item that did not fit), the item that did not fit and every later one are on
the dead-letter topic as ``outputs-too-large``, nothing crash-loops, ``sagas resolve`` ends the
instance resolved, and the processor serves a new list afterwards.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Message

from sagas.publisher import Publisher
from stream_processors.core.journal import JournalEntry, Kind
from stream_processors.core.limits import BATCH_OVERHEAD
from stream_processors.engine.routing import DLQ_DETAIL, DLQ_REASON
from stream_processors.kafka.topics import SagaTopics, ensure_plain_topics, ensure_topics
from tests.conftest import KafkaCluster
from tests.integration.growing_lists import (
    EVENTS,
    GrowingLists,
    ItemAdded,
    ListClosed,
    ListOpened,
)
from tests.integration.saga_harness import (
    CommittedReader,
    JournalFollower,
    SagaProcesses,
    header_of,
    run_sagas,
    set_topic_limit,
)

pytestmark = pytest.mark.kafka

TARGET = "tests.integration.growing_lists:GrowingLists"
TOPICS = SagaTopics.for_saga(GrowingLists.definition, 4)
TOPIC_LIMIT = 20_000  # the snapshots topic's max.message.bytes
ITEMS, ITEM_BYTES = 30, 1000


@dataclass
class Lists:
    kafka: KafkaCluster
    processes: SagaProcesses
    journal: JournalFollower
    dlq: CommittedReader
    run: str

    def publish(self, *events: ListOpened | ItemAdded | ListClosed) -> None:
        with Publisher(self.kafka.bootstrap) as publisher:
            for event in events:
                publisher.publish(event)

    def wait_for(self, list_id: str, kind: Kind, timeout: float = 60) -> JournalEntry:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.journal.entries.get(list_id, []) if e.kind == kind.value]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                kinds = [e.kind for e in self.journal.entries.get(list_id, [])]
                raise AssertionError(
                    f"{list_id}: no {kind.value} after {timeout:.0f} s; journal: {kinds}\n"
                    f"{self.processes.log_tails()}"
                )
            self.journal._take(self.journal.reader.poll(0.3))

    def state(self, list_id: str) -> dict[str, object]:
        """``sagas state``: the instance folded from its journal, as an operator sees it."""
        done = run_sagas(self.kafka.bootstrap, "state", TARGET, list_id)
        assert done.returncode == 0, done.stderr
        folded: dict[str, object] = json.loads(done.stdout)
        return folded


@pytest.fixture
def lists(kafka: KafkaCluster, tmp_path: Path) -> Iterator[Lists]:
    ensure_topics(TOPICS, kafka.bootstrap)
    ensure_plain_topics([EVENTS], kafka.bootstrap)
    set_topic_limit(kafka, TOPICS.snapshots, TOPIC_LIMIT)  # before the processor reads it
    run = uuid.uuid4().hex[:8]
    processes = SagaProcesses(
        kafka.bootstrap, tmp_path / "logs", saga_target=TARGET, worker_targets={}
    )
    journal = JournalFollower(kafka.bootstrap, f"list-{run}", journal=TOPICS.journal)
    dlq = CommittedReader(kafka.bootstrap, TOPICS.dlq, from_end=True)
    try:
        yield Lists(kafka, processes, journal, dlq, run)
    finally:
        processes.stop_all()
        journal.close()
        dlq.close()


def test_a_state_too_large_parks_the_instance_and_sagas_resolve_ends_it(lists: Lists) -> None:
    processor = lists.processes.processor(lists.processes.logs.parent / "state")
    list_id = f"list-{lists.run}-big"
    began = time.monotonic()
    lists.publish(
        ListOpened(list_id=list_id),
        *(ItemAdded(list_id=list_id, item=f"{n:04d}" * (ITEM_BYTES // 4)) for n in range(ITEMS)),
    )

    parked = lists.wait_for(list_id, Kind.SAGA_PARKED)
    parked_after = time.monotonic() - began
    limit = TOPIC_LIMIT - BATCH_OVERHEAD
    found = re.fullmatch(
        rf"state-too-large: the snapshot would be (\d+) bytes, the limit is {limit}",
        parked.reason or "",
    )
    assert found is not None, parked.reason
    accepted = [e for e in lists.journal.entries[list_id] if e.kind == Kind.INPUT_ACCEPTED.value]
    assert 0 < len(accepted) < ITEMS
    state = lists.state(list_id)
    assert state["status"] == "needs_attention" and state["reason"] == parked.reason
    data = state["data"]
    assert isinstance(data, dict) and len(data["items"]) == len(accepted)

    # The item that did not fit and every later one: dead-lettered, none lost, none looping.
    rejected = ITEMS - len(accepted)
    letters: list[Message] = []
    deadline = time.monotonic() + 60
    while len(letters) < rejected:
        assert time.monotonic() < deadline, f"{len(letters)} of {rejected} dead letters"
        letters += [m for m in lists.dlq.poll(0.5) if m.key() == list_id.encode()]
    assert {header_of(m, DLQ_REASON) for m in letters} == {"outputs-too-large"}
    details = [header_of(m, DLQ_DETAIL) or "" for m in letters]
    assert details[0].startswith("snapshot for growing_lists.snapshots: ")
    assert details[0].endswith("; the instance is parked")
    assert all(
        d.endswith("not parked: the instance is needs_attention already") for d in details[1:]
    )
    time.sleep(2)
    assert [m for m in lists.dlq.poll(0.5) if m.key() == list_id.encode()] == []
    assert processor.running

    done = run_sagas(
        lists.kafka.bootstrap, "resolve", TARGET, list_id, "--by", "ops", "--reason", "too big"
    )
    assert done.returncode == 0, done.stderr
    resolved = lists.wait_for(list_id, Kind.SAGA_RESOLVED)
    assert "too big" in (resolved.reason or "")
    assert lists.state(list_id)["status"] == "resolved"

    # The processor goes on with other instances.
    small = f"list-{lists.run}-small"
    lists.publish(ListOpened(list_id=small), ListClosed(list_id=small))
    lists.wait_for(small, Kind.SAGA_COMPLETED)
    print(
        f"parked after {len(accepted)} of {ITEMS} items, {parked_after:.1f} s; "
        f"snapshot would be {found[1]} bytes, limit {limit}; {len(letters)} dead letters"
    )
