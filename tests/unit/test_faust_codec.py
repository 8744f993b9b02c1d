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
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from faust.serializers import codecs
from intervaltree import IntervalTree

import sagas.faust
from examples.order_fulfillment.messages import OrderPlaced
from stream_processors.codecs.avro import encode, parse
from stream_processors.codecs.records import CATALOG
from stream_processors.tools.history import partition_for

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
