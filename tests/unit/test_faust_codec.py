"""Unit tests for ``sagas.faust`` without a broker: the ``sagalog`` codec and the partitioner.

Covers: the codec is registered under its documented name and round-trips a Sagalog record
through Faust's codec registry; a record written with an older writer schema (one the history
knows) decodes as the current class; something not a Sagalog record is refused; undecodable
bytes raise; and aiokafka's default partitioner (what Faust's producer uses) puts a key on the
same partition as ``stream_processors.tools.history.partition_for`` (Java's and librdkafka's
``murmur2_random``), so ``sagas.faust.publish`` partitions as ``Publisher`` does. And the
worker agent's stall check (faust-streaming #596) tells a partition whose acknowledged offsets
start beyond a hole nothing fills from one whose holes are transaction markers Faust tracks as
gaps, reading the consumer's bookkeeping as Faust keeps it (offset lists, interval trees).
And the agent's wrap of ``Recovery.on_recovery_completed`` resumes the stream partitions only
after ``flow_control.resume()`` has cleared the stream queues (with mode's real queue and flow
control event), so no record fetched in between is dropped.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from faust.serializers import codecs
from faust.types import TP
from intervaltree import IntervalTree

import sagas.faust
from examples.order_fulfillment.messages import OrderPlaced
from stream_processors.codecs.avro import encode, parse
from stream_processors.codecs.records import CATALOG
from stream_processors.core.partitioner import partition_for

ORDER = OrderPlaced("order-1", "customer-7", 1250, "tok_ok", "10115")


def test_codec_round_trips_a_record_by_name() -> None:
    data = codecs.dumps(sagas.faust.CODEC_NAME, ORDER)
    assert data == ORDER.encode()
    assert codecs.loads("sagalog", data) == ORDER


def test_codec_reads_an_old_writer_schema() -> None:
    definition: dict[str, Any] = dict(OrderPlaced.__avro__.definition)
    definition["fields"] = [*definition["fields"], {"name": "note", "type": "string"}]
    writer = parse(definition)  # a version with a field the current one dropped
    CATALOG.add_writer(writer)
    datum = {**ORDER.to_avro(), "note": "left at the door"}
    assert codecs.loads("sagalog", encode(writer, datum)) == ORDER


def test_codec_refuses_what_is_not_a_record() -> None:
    with pytest.raises(TypeError):
        codecs.dumps("sagalog", {"order_id": "x"})
    with pytest.raises(Exception, match=r"."):
        codecs.loads("sagalog", b"not avro")


@pytest.mark.parametrize("partitions", [1, 3, 8, 12])
def test_aiokafka_partitions_keys_as_the_publisher(partitions: int) -> None:
    every = list(range(partitions))
    for n in range(500):
        key = f"order-{n}".encode()
        assert DefaultPartitioner()(key, every, every) == partition_for(key, partitions)


def consumer_state(committed: int | None, acked: list[int], gaps: list[tuple[int, int]]) -> Any:
    """One partition's bookkeeping, shaped as ``faust.transport.consumer.Consumer`` keeps it."""
    tree = IntervalTree()
    for begin, end in gaps:
        tree.addi(begin, end)
    return SimpleNamespace(
        _committed_offset={"tp": committed}, _acked={"tp": acked}, _gap={"tp": tree}
    )


@pytest.mark.parametrize(
    ("committed", "acked", "gaps", "stuck"),
    [
        (371, [383, 384], [], 371),  # 372..382 dropped unacknowledged: never committed again
        (371, [372, 373], [], None),  # consecutive
        (371, [374, 375], [(372, 375)], None),  # a marker's hole, tracked as a gap
        (371, [], [], None),  # nothing acknowledged
        (None, [5, 6], [], None),  # nothing committed yet
    ],
)
def test_stall_check_finds_a_hole_no_gap_fills(
    committed: int | None, acked: list[int], gaps: list[tuple[int, int]], stuck: int | None
) -> None:
    assert sagas.faust._stalled_at(consumer_state(committed, acked, gaps), "tp") == stuck


class _Consumer:
    """The part of Faust's consumer ``on_recovery_completed`` uses: paused/active partitions,
    and a fetcher that delivers a record of each active partition when its position is set."""

    def __init__(self, queue: Any) -> None:
        self.active: set[TP] = set()
        self.queue = queue

    def resume_partitions(self, tps: Any) -> None:
        self.active.update(tps)

    async def perform_seek(self) -> None:
        for tp in sorted(self.active):  # what the running fetcher delivers after the seek
            self.queue.force_put_nowait(f"{tp.topic}[{tp.partition}]@committed")


class _App:
    consumer: _Consumer
    flow_control: Any
    tables: Any


def test_stream_partitions_resume_only_after_the_queues_are_cleared() -> None:
    """faust-streaming #596: ``Recovery.on_recovery_completed`` resumes the stream partitions,
    seeks, then ``flow_control.resume()`` clears the queues. With the agent's wrap, nothing of
    theirs is fetched before the clearing, so nothing is dropped; they are resumed after it."""
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    flow = FlowControlEvent()
    queue: FlowControlQueue[str] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    consumer = _Consumer(queue)
    dropped: list[str] = []

    async def completed(generation_id: int = 0) -> None:  # Faust's order of steps
        app.consumer.resume_partitions({TP("commands", 0), TP("commands", 1)})
        await app.consumer.perform_seek()
        dropped.extend(queue._queue)  # type: ignore[attr-defined]  # what resume() clears
        app.flow_control.resume()

    app = _App()  # weakly referenced, as a Faust app is
    app.consumer, app.flow_control = consumer, flow
    app.tables = SimpleNamespace(recovery=SimpleNamespace(on_recovery_completed=completed))
    sagas.faust._resume_streams_after_clearing(app)
    asyncio.run(app.tables.recovery.on_recovery_completed(3))
    assert dropped == []
    assert consumer.active == {TP("commands", 0), TP("commands", 1)}
    assert "resume_partitions" not in vars(consumer) and "resume" not in vars(flow)
    consumer.resume_partitions({TP("commands", 2)})  # the class's method again
    assert TP("commands", 2) in consumer.active
