"""The snapshots changelog carries each snapshot's schedule in a header, which restores read.

A restore indexes each instance's due timers and its expiry; decoding every snapshot for that
was most of its time. The processor (and ``sagas replay``) put the schedule in the record's
``sagalog.schedule`` header; a restore reads it there, and only records without it (written by
an earlier release) are decoded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from examples.order_fulfillment.saga import OrderFulfillment
from sagas.testing import SagaTest
from stream_processors.codecs.avro import DecodeError
from stream_processors.core.instance import (
    encode_snapshot,
    parse_schedule,
    schedule,
    schedule_text,
    snapshot_schedule,
)
from stream_processors.core.model import CommandFailed
from stream_processors.engine.restore import _schedule
from stream_processors.engine.routing import SCHEDULE, header
from tests.unit.processor_rig import Rig, order


@pytest.mark.parametrize(
    ("due", "finished"), [([], None), ([5], None), ([1, 2, 3], None), ([], 17), ([9], 1)]
)
def test_a_schedule_text_reads_back(due: list[int], finished: int | None) -> None:
    assert parse_schedule(schedule_text(due, finished)) == (due, finished)


def test_the_header_gives_what_decoding_gives() -> None:
    test = SagaTest(OrderFulfillment)
    test.start(order())
    test.fail_transiently(test.outstanding[0], "ConnectionError")  # a retry timer is due
    value = encode_snapshot(test.instance)
    text = schedule_text(*schedule(test.instance))
    assert _schedule(value, [(SCHEDULE, text)]) == snapshot_schedule(value)
    assert snapshot_schedule(value)[0]  # there is a timer to index
    finished = dataclasses.replace(test.instance, status=type(test.instance.status)("completed"))
    done = encode_snapshot(finished)
    assert _schedule(done, [(SCHEDULE, schedule_text(*schedule(finished)))])[1] is not None


def test_a_header_on_a_record_that_is_not_a_snapshot_is_not_believed() -> None:
    not_a_snapshot = CommandFailed(error="x", message="y").encode()
    with pytest.raises(DecodeError):
        _schedule(not_a_snapshot, [(SCHEDULE, b";1,2")])


def test_the_processor_writes_the_header_on_every_snapshot(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.start()
    rig.place("o-1")
    rig.steps(3)
    records = rig.visible(rig.topics.snapshots)
    assert records
    for record in records:
        text = header(record.headers(), SCHEDULE)
        assert text is not None
        assert parse_schedule(text.encode()) == snapshot_schedule(record.value())
    rig.processor.close()
