"""The pure parts of reading history: Kafka's partitioner, and folding up to a point.

``murmur2`` must agree with the Java client's ``Utils.murmur2`` (the vectors below are the Java
client's own test vectors), or ``sagas history`` would look for an instance in the wrong
partition. ``fold_until`` gives the state as of a journal position or a time.
"""

from __future__ import annotations

import pytest

from examples.order_fulfillment.messages import OrderPlaced, PaymentCompleted
from examples.order_fulfillment.saga import OrderFulfillment
from stream_processors.core.decide import Input, decide
from stream_processors.core.instance import Status
from stream_processors.core.partitioner import murmur2, partition_for
from stream_processors.tools.history import Located, fold_until

JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "expected"), JAVA_VECTORS.items())
def test_murmur2_agrees_with_the_java_client(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_partition_is_the_positive_hash_modulo_the_partition_count() -> None:
    for data, hashed in JAVA_VECTORS.items():
        assert partition_for(data, 8) == (hashed & 0x7FFFFFFF) % 8
    assert {partition_for(f"order-{n}".encode(), 8) for n in range(200)} == set(range(8))


def _history() -> list[Located]:
    definition = OrderFulfillment.definition
    order = OrderPlaced(
        order_id="o-1", customer_id="c", amount_cents=500, card_token="tok", postcode="1"
    )
    started = decide(definition, None, Input(order, order.encode()), 1_000)
    assert started.instance is not None
    paid = PaymentCompleted(order_id="o-1", payment_id="pay-1")
    command = started.instance.steps["payment"].command_id
    replied = decide(definition, started.instance, Input(paid, paid.encode(), command), 2_000)
    entries = started.entries + replied.entries
    return [Located(offset, entry) for offset, entry in enumerate(entries)]


def test_fold_until_a_position_or_a_time() -> None:
    definition = OrderFulfillment.definition
    located = _history()

    at_start = fold_until(definition, located, position=0)
    assert at_start is not None and at_start.seq == 1 and at_start.data.payment_id is None

    before_reply = fold_until(definition, located, at_ms=1_999)
    assert before_reply is not None
    assert before_reply.steps["payment"].status.value == "pending"

    everything = fold_until(definition, located)
    assert everything is not None and everything.seq == len(located)
    assert everything.status is Status.RUNNING
    assert everything.data.payment_id == "pay-1"
    assert everything.steps["shipping"].status.value == "pending"

    assert fold_until(definition, located, at_ms=999) is None  # not started yet
