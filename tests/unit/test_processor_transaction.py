"""The processor's bookkeeping of its open transaction, without a broker.

Whatever ends a transaction (a commit, an abort, the partitions being lost to another process)
must leave none of its staged work behind. The Kafka paths that lead there are exercised end to
end in the integration tests; here the processor is built without connecting anywhere and its
producer is a stand-in that only records the abort it is asked for.
"""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import TopicPartition

from examples.order_fulfillment.saga import OrderFulfillment
from stream_processors.engine.processor import ProcessorConfig, SagaProcessor
from stream_processors.engine.store import Due


class _AbortingProducer:
    def __init__(self) -> None:
        self.aborted = 0

    def abort_transaction(self, timeout: float) -> None:
        self.aborted += 1


def test_losing_partitions_forgets_everything_the_aborted_transaction_staged(
    tmp_path: Path,
) -> None:
    processor = SagaProcessor(OrderFulfillment.definition, ProcessorConfig(state_dir=tmp_path))
    producer = _AbortingProducer()
    processor.producer = producer  # type: ignore[assignment]
    inbox = processor.topics.inbox
    processor._owned = {0, 1}
    processor._txn_open = True
    processor._staged[(0, "o-1")] = None
    processor._offsets[(inbox, 0)] = 5
    # A timer dealt with in the transaction: once it is aborted, the timer must fire again.
    processor._done.add((Due.TIMER, 0, 1_000, "o-1"))

    processor._on_lost(None, [TopicPartition(inbox, 0)])  # type: ignore[arg-type]

    assert producer.aborted == 1
    assert not processor._txn_open
    assert processor._staged == {} and processor._offsets == {}
    assert processor._done == set()
    assert processor._owned == {1}
    processor.store.close()
