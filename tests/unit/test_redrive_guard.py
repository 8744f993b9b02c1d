"""A dead letter cut to fit its topic is evidence, not a record: redrive refuses to send it.

``sagas.operator.redrive`` checks what it was given before it talks to Kafka, so this needs no
broker; the CLI leaves such records out of ``--reason`` and ``--all`` selections itself.
"""

from __future__ import annotations

import pytest

from sagas.operator import DeadLetter, redrive


def _letter(offset: int, truncated: bool) -> DeadLetter:
    return DeadLetter(
        topic="order_fulfillment.dlq",
        partition=0,
        offset=offset,
        key=b"o-1",
        value=b"\x01" * 10,
        reason="not-avro",
        detail=None,
        origin_topic="orders.events",
        origin_partition=0,
        origin_offset=7,
        timestamp=None,
        truncated=truncated,
    )


def test_a_truncated_dead_letter_is_not_redriven() -> None:
    with pytest.raises(ValueError, match=r"cut to fit order_fulfillment\.dlq") as caught:
        redrive("order_fulfillment.dlq", [_letter(3, False), _letter(4, True)], "127.0.0.1:1")
    assert "0:4" in str(caught.value) and "0:3" not in str(caught.value)
