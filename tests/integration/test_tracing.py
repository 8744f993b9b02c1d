"""OpenTelemetry on the real broker: one trace per saga, across the processor and both workers.

The processor and the two workers run in this process, in threads, so that one in-memory
exporter (the SDK's ``InMemorySpanExporter``) sees every span they emit. Two orders are
published to the source topic, each with its own ``traceparent`` (a publisher's span): one
completes at once, the other's payment fails transiently on its first attempt and is retried.
Each trace must then hold exactly its saga's spans, linked parent to child from the publisher's
span through the saga span, each step attempt and each handler run.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from examples.order_fulfillment import services
from examples.order_fulfillment.messages import (
    CreateShippingLabel,
    MakePayment,
    OrderPlaced,
    PaymentCompleted,
)
from examples.order_fulfillment.saga import OrderFulfillment
from sagas.publisher import Publisher
from sagas.worker import CommandContext, TransientError, Worker
from stream_processors.engine.processor import ProcessorConfig, SagaProcessor
from stream_processors.kafka.config import consumer_config
from stream_processors.kafka.reading import watermarks
from stream_processors.kafka.topics import ensure_topics
from tests.conftest import KafkaCluster
from tests.integration.saga_harness import TOPICS

pytestmark = pytest.mark.kafka

SAGA = OrderFulfillment.definition.name


def _workers(run: str, flaky: str) -> list[Worker]:
    """The example's payment and shipping services, under this run's own groups; the payment
    of order ``flaky`` fails transiently on its first attempt."""
    payments = Worker("payments", group=f"tracing.payments.{run}")
    shipping = Worker("shipping", group=f"tracing.shipping.{run}")

    @payments.handles(MakePayment)
    def pay(command: MakePayment, context: CommandContext) -> PaymentCompleted:
        if command.order_id == flaky and context.attempt == 1:
            raise TransientError("the payment provider is busy")
        return services.pay(command, context)

    payments.handles(services.RefundPayment)(services.refund)
    shipping.handles(CreateShippingLabel)(services.label)
    return [payments, shipping]


def _from_the_end(bootstrap: str, worker: Worker) -> None:
    """Commit the worker's new group at the end of its command topics: it serves this test's
    commands only, not those earlier runs on the broker left there."""
    consumer = Consumer(consumer_config(bootstrap, "tracing-test", worker.group))
    try:
        ends = []
        for topic in worker.topics:
            for partition in consumer.list_topics(topic, timeout=15).topics[topic].partitions:
                tp = TopicPartition(topic, partition)
                ends.append(TopicPartition(topic, partition, watermarks(consumer, tp)[1]))
        consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()


def _in_threads(*runs: tuple[Callable[[], None], Callable[[], None]]) -> Callable[[], None]:
    """Start each ``run`` in a thread; returns what stops and joins them all."""
    threads = [threading.Thread(target=run, daemon=True) for run, _ in runs]
    for thread in threads:
        thread.start()

    def stop() -> None:
        for _, stop_one in runs:
            stop_one()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a processor or worker did not stop"

    return stop


def _order(order_id: str) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id, customer_id="c-1", amount_cents=1200, card_token="tok", postcode="7500"
    )


def _wait_for_saga_spans(
    exporter: InMemorySpanExporter, orders: list[str], timeout: float
) -> list[ReadableSpan]:
    deadline = time.monotonic() + timeout
    while True:
        spans = list(exporter.get_finished_spans())
        ended = {
            s.attributes.get("sagalog.instance")
            for s in spans
            if s.name == f"saga {SAGA}" and s.attributes
        }
        if set(orders) <= ended:
            return spans
        assert time.monotonic() < deadline, f"sagas not ended after {timeout} s: {ended}"
        time.sleep(0.2)


def test_each_saga_is_one_trace_across_the_processor_and_both_workers_with_a_retry(
    kafka: KafkaCluster, tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    run = uuid.uuid4().hex[:8]
    flaky, plain = f"trace-{run}-flaky", f"trace-{run}-plain"
    publisher_spans = {flaky: (uuid.uuid4().int, 0x1111), plain: (uuid.uuid4().int, 0x2222)}
    ensure_topics(TOPICS, kafka.bootstrap)  # the command topics too: workers start at their ends
    config = ProcessorConfig(
        bootstrap=kafka.bootstrap, partitions=TOPICS.partitions, state_dir=tmp_path / "processor"
    )
    processor = SagaProcessor(OrderFulfillment.definition, config)
    workers = _workers(run, flaky)
    for worker in workers:
        _from_the_end(kafka.bootstrap, worker)
    stop = _in_threads(
        (processor.run, processor.stop),
        *(
            (lambda w=w: w.run(kafka.bootstrap, state_dir=tmp_path / w.name), w.stop)
            for w in workers
        ),
    )
    try:
        with Publisher(kafka.bootstrap) as publisher:
            for order_id, (trace_id, span_id) in publisher_spans.items():
                traceparent = f"00-{trace_id:032x}-{span_id:016x}-01"
                publisher.publish(_order(order_id), headers=[("traceparent", traceparent.encode())])
        spans = _wait_for_saga_spans(exporter, [flaky, plain], timeout=90)
    finally:
        stop()

    for order_id, (trace_id, publisher_span) in publisher_spans.items():
        trace = [s for s in spans if s.context is not None and s.context.trace_id == trace_id]
        # Every span about this order is in its trace, and nothing else is.
        about = [s for s in spans if order_id in str(dict(s.attributes or {}))]
        assert sorted(map(id, about)) == sorted(map(id, trace)), order_id
        _assert_trace_shape(trace, publisher_span, retried=order_id == flaky)


def _assert_trace_shape(trace: list[ReadableSpan], publisher_span: int, retried: bool) -> None:
    """saga -> step attempts -> handlers, parent to child, with the retry's failure marked."""
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in trace:
        by_name.setdefault(span.name, []).append(span)
    payments = 2 if retried else 1
    assert {name: len(found) for name, found in by_name.items()} == {
        f"saga {SAGA}": 1,
        "step payment": payments,
        "step shipping": 1,
        "handle MakePayment": payments,
        "handle CreateShippingLabel": 1,
    }
    (saga,) = by_name[f"saga {SAGA}"]
    assert saga.parent is not None and saga.parent.span_id == publisher_span
    assert saga.status.status_code is not StatusCode.ERROR
    assert saga.attributes is not None and saga.attributes["sagalog.status"] == "completed"
    attempts = by_name["step payment"] + by_name["step shipping"]
    by_command = {}
    for attempt in attempts:
        assert attempt.parent is not None and saga.context is not None
        assert attempt.parent.span_id == saga.context.span_id
        assert attempt.attributes is not None
        by_command[attempt.attributes["sagalog.command_id"]] = attempt
        assert saga.start_time is not None and attempt.start_time is not None
        assert saga.start_time <= attempt.start_time
    handlers = by_name["handle MakePayment"] + by_name["handle CreateShippingLabel"]
    for handler in handlers:  # each handler run is a child of the attempt it answered
        assert handler.attributes is not None and handler.parent is not None
        attempt = by_command[handler.attributes["sagalog.command_id"]]
        assert attempt.context is not None
        assert handler.parent.span_id == attempt.context.span_id
        assert handler.attributes["sagalog.worker"] in ("payments", "shipping")
    first, *again = sorted(by_name["step payment"], key=lambda s: s.start_time or 0)
    first_handler = min(by_name["handle MakePayment"], key=lambda s: s.start_time or 0)
    if retried:
        # The transient failure: the handler run and its attempt are errors; the retry is not.
        assert first.status.status_code is StatusCode.ERROR
        assert first.attributes is not None and first.attributes["sagalog.attempt"] == 1
        assert first_handler.status.status_code is StatusCode.ERROR
        (second,) = again
        assert second.attributes is not None and second.attributes["sagalog.attempt"] == 2
        assert second.status.status_code is not StatusCode.ERROR
    else:
        assert first.status.status_code is not StatusCode.ERROR
