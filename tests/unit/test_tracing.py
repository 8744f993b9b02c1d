"""Tracing's plumbing: trace headers, the start's context journaled and kept, spans after commit.

The processor path runs on in-memory Kafka (``processor_rig``) with the SDK's in-memory exporter;
the end-to-end trace across processes is tests/integration/test_tracing.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Message
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from examples.order_fulfillment import messages as m
from examples.order_fulfillment import services
from examples.order_fulfillment.saga import OrderFulfillment
from sagas import Child, Event, Saga, Step
from stream_processors.core.decide import Input, decide
from stream_processors.core.decision import CHILD_END, CHILD_START, COMMAND, OutgoingCommand
from stream_processors.core.instance import decode_snapshot, encode_snapshot
from stream_processors.core.journal import JournalEntry
from stream_processors.engine import tracing
from stream_processors.engine.inputs import InboxInput, inbox_input
from stream_processors.engine.routing import (
    COMMAND_ID,
    TRACEPARENT,
    TRACESTATE,
    Headers,
    header,
    outgoing_headers,
    reply_headers,
    trace_headers,
)
from tests.unit.processor_rig import PAYMENTS, SOURCE, Rig, order

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT = 0xB7AD6B7169203331
TRACEPARENT_VALUE = f"00-{TRACE_ID:032x}-{PARENT:016x}-01"
ABORTABLE = KafkaError(KafkaError._STATE, "abortable", txn_requires_abort=True)


# -- headers -----------------------------------------------------------------------------------


def test_trace_headers_follow_sagalogs_own_on_commands_and_replies() -> None:
    trace = trace_headers(TRACEPARENT_VALUE, "vendor=1")
    assert trace == [(TRACEPARENT, TRACEPARENT_VALUE.encode()), (TRACESTATE, b"vendor=1")]
    assert trace_headers(None, "vendor=1") == []
    assert trace_headers(TRACEPARENT_VALUE, None) == trace[:1]
    assert reply_headers("s/o-1/payment/1", trace) == [(COMMAND_ID, b"s/o-1/payment/1"), *trace]
    assert reply_headers("s/o-1/payment/1") == [(COMMAND_ID, b"s/o-1/payment/1")]


def test_an_incoming_context_is_normalised_or_dropped() -> None:
    assert tracing.incoming(None) is None
    valid = [(TRACEPARENT, TRACEPARENT_VALUE.encode())]
    assert tracing.incoming([(TRACEPARENT, TRACEPARENT_VALUE.encode())]) == TRACEPARENT_VALUE
    with_state = tracing.incoming([*valid, (TRACESTATE, b"a=1, b=x y")])
    assert with_state == f"{TRACEPARENT_VALUE} a=1,b=x y"  # OpenTelemetry's form of it
    upper = TRACEPARENT_VALUE.upper()  # W3C: lower-case hex only
    zero_span = f"00-{TRACE_ID:032x}-{0:016x}-01"
    extra = f"{TRACEPARENT_VALUE}-more"  # version 00 has no more fields
    for bad in (
        zero_span,
        extra,
        upper,
        "garbage",
        f"00-{0:032x}-{PARENT:016x}-01",
        f"ff-{TRACE_ID:032x}-{PARENT:016x}-01",
    ):
        assert tracing.incoming([(TRACEPARENT, bad.encode())]) is None, bad
    later = f"01-{TRACE_ID:032x}-{PARENT:016x}-01-more"  # a later version: its first fields
    assert tracing.incoming([(TRACEPARENT, later.encode())]) == TRACEPARENT_VALUE
    assert tracing.incoming([*valid, (TRACESTATE, b"not a tracestate!")]) == TRACEPARENT_VALUE
    long_state = ",".join(f"k{n}={'v' * 60}" for n in range(20)).encode()  # > MAX_TRACESTATE
    assert tracing.incoming([*valid, (TRACESTATE, long_state)]) == TRACEPARENT_VALUE


@pytest.mark.parametrize(
    ("environment", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "orders"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_wanted_only_when_the_otel_environment_asks(
    environment: dict[str, str], wanted: bool
) -> None:
    assert tracing.wanted(environment) is wanted


def _without_otel() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def test_off_the_engine_and_worker_never_import_the_sdk(tmp_path: Path) -> None:
    """Off, processing an order end to end on in-memory Kafka loads no OpenTelemetry at all."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tests.unit.processor_rig import Rig\n"
        "import sagas.worker\n"
        f"rig = Rig(Path({str(tmp_path)!r}))\n"
        "rig.start(); rig.place()\n"
        "for _ in range(4):\n"
        "    rig.age_transaction(); rig.steps()\n"
        "assert len(rig.visible('payments.commands')) == 1\n"
        "rig.processor.close()\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=_without_otel(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_configure_builds_the_exporter_the_environment_names() -> None:
    script = (
        "from stream_processors.engine import tracing\n"
        "assert tracing.configure() and tracing.ENABLED\n"
        "provider = tracing._STATE.provider\n"
        "print(provider.resource.attributes['service.name'])\n"
    )
    environment = _without_otel() | {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "orders-processor",
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "orders-processor"


# -- the context, journaled and kept -----------------------------------------------------------


def test_the_starts_context_is_journaled_kept_in_the_instance_and_its_snapshot() -> None:
    definition = OrderFulfillment.definition
    event = order()
    received = Input(event, event.encode(), trace=f"{TRACEPARENT_VALUE} v=1")
    decision = decide(definition, None, received, 1_000)
    started = decision.entries[0]
    assert started.trace == f"{TRACEPARENT_VALUE} v=1"
    assert all(entry.trace is None for entry in decision.entries[1:])
    again = JournalEntry.decode(started.encode())
    assert again.trace == started.trace
    instance = decision.instance
    assert instance is not None and instance.trace == started.trace
    kept = decode_snapshot(encode_snapshot(instance))
    assert kept.trace == started.trace
    trace = tracing.saga_trace(definition.name, kept)
    assert (trace.trace_id, trace.parent_id, trace.tracestate) == (TRACE_ID, PARENT, "v=1")


def test_span_ids_are_derived_from_the_journal_the_same_in_every_process() -> None:
    definition = OrderFulfillment.definition
    event = order()
    with_context = decide(
        definition, None, Input(event, event.encode(), trace=TRACEPARENT_VALUE), 1_000
    ).instance
    without = decide(definition, None, Input(event, event.encode()), 1_000).instance
    assert with_context is not None and without is not None
    trace = tracing.saga_trace(definition.name, with_context)
    assert (trace.trace_id, trace.parent_id, trace.flags) == (TRACE_ID, PARENT, 1)
    assert trace == tracing.saga_trace(definition.name, with_context)
    derived = tracing.saga_trace(definition.name, without)
    assert derived.parent_id is None and derived == tracing.saga_trace(definition.name, without)
    assert derived.trace_id != TRACE_ID
    command = OutgoingCommand(PAYMENTS, "o-1", "order_fulfillment/o-1/payment/1", b"")
    (parent, *_), attempt = (
        tracing.command_trace(trace, command),
        trace.attempt_id(command.command_id),
    )
    assert parent == (TRACEPARENT, f"00-{TRACE_ID:032x}-{attempt:016x}-01".encode())
    unbound = OutgoingCommand(PAYMENTS, "o-1", "order_fulfillment/o-1/#3/1", b"")  # a handler's
    assert (
        tracing.command_trace(trace, unbound)[0][1].split(b"-")[2]
        == f"{trace.span_id:016x}".encode()
    )
    end = OutgoingCommand("parent.inbox", "p-1", "x/p-1/child/1", b"", CHILD_END)
    assert (
        tracing.command_trace(trace, end)[0][1].split(b"-")[2] == f"{trace.span_id:016x}".encode()
    )


# -- the processor: headers out, spans after commit --------------------------------------------


def _place_traced(rig: Rig) -> None:
    headers = [(TRACEPARENT, TRACEPARENT_VALUE.encode()), (TRACESTATE, b"v=1")]
    rig.broker.publish(SOURCE, b"o-1", order().encode(), headers)


def _run(rig: Rig, steps: int = 4) -> None:
    for _ in range(steps):
        rig.age_transaction()
        rig.steps()


def test_the_processor_carries_the_context_through_routing_to_the_command(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    rig = Rig(tmp_path)
    rig.start()
    _place_traced(rig)
    _run(rig)
    (routed,) = rig.visible(rig.topics.inbox)
    assert header(routed.headers(), TRACEPARENT) == TRACEPARENT_VALUE
    (command,) = rig.visible(PAYMENTS)
    trace = tracing.saga_trace(OrderFulfillment.definition.name, decode_snapshot(rig.stored()))
    command_id = header(command.headers(), COMMAND_ID)
    assert command_id is not None
    expected = f"00-{TRACE_ID:032x}-{trace.attempt_id(command_id):016x}-01"
    assert header(command.headers(), TRACEPARENT) == expected
    assert header(command.headers(), TRACESTATE) == "v=1"
    (started, *_) = [JournalEntry.decode(m.value()) for m in rig.visible(rig.topics.journal)]
    assert started.trace == f"{TRACEPARENT_VALUE} v=1"
    assert exporter.get_finished_spans() == ()  # nothing ended yet: the attempt is out
    rig.processor.close()


def test_an_attempts_span_is_exported_once_its_transaction_commits_never_if_it_aborts(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    rig = Rig(tmp_path)
    rig.start()
    _place_traced(rig)
    _run(rig)
    (command,) = rig.visible(PAYMENTS)
    rig.fail_command(command)
    rig.producer.fail("commit_transaction", ABORTABLE)
    _run(rig, 1)  # decided, but the commit fails: nothing happened
    assert exporter.get_finished_spans() == ()
    _run(rig, 2)  # read again, decided again, committed
    (span,) = exporter.get_finished_spans()
    assert span.name == "step payment"
    assert span.context is not None and span.parent is not None
    assert span.context.trace_id == TRACE_ID
    assert f"{span.context.span_id:016x}" in (header(command.headers(), TRACEPARENT) or "")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["sagalog.outcome"] == "retrying"
    rig.processor.close()


# -- a child saga's trace is its parent's ------------------------------------------------------


class Invoice(Event, schema="tests.unit.tracing.Invoice", derive=True, key="order_id"):
    order_id: str
    customer_id: str
    amount_cents: int
    card_token: str


class Invoicing(Saga, name="tracing_invoicing"):
    start = Invoice
    state = m.OrderState

    @staticmethod
    def begin(event: Invoice) -> m.OrderState:
        return m.OrderState(event.order_id, event.customer_id, event.amount_cents, "t", "1")

    payment = Step(m.MakePayment, success=m.PaymentCompleted)


class Billed(Saga, name="tracing_billed"):
    start = m.OrderPlaced
    state = m.OrderState

    @staticmethod
    def begin(event: m.OrderPlaced) -> m.OrderState:
        return m.OrderState(
            event.order_id, event.customer_id, event.amount_cents, event.card_token, event.postcode
        )

    bill = Child(
        Invoicing,
        input=lambda s: Invoice(s.order_id, s.customer_id, s.amount_cents, s.card_token),
    )


def test_a_child_sagas_start_carries_its_parents_attempt_and_the_child_joins_that_trace(
    exporter: InMemorySpanExporter,
) -> None:
    parent, child = Billed.definition, Invoicing.definition
    event = order()
    started = decide(parent, None, Input(event, event.encode(), trace=TRACEPARENT_VALUE), 1)
    assert started.instance is not None
    (start,) = [c for c in started.commands if c.kind == CHILD_START]
    parent_trace = tracing.saga_trace(parent.name, started.instance)
    inbox = f"{parent.name}.inbox"
    headers = outgoing_headers(start, inbox, parent.name)
    headers += tracing.command_trace(parent_trace, start)
    message = Message(
        topic=start.topic,
        partition=0,
        offset=0,
        key=start.key.encode(),
        value=start.value,
        headers=headers,
    )
    checked = inbox_input(message, child, start.topic, None, 1_000_000, 256)
    assert isinstance(checked, InboxInput)
    begun = decide(child, None, checked.input, 2).instance
    assert begun is not None
    child_trace = tracing.saga_trace(child.name, begun)
    assert child_trace.trace_id == TRACE_ID
    assert child_trace.parent_id == parent_trace.attempt_id(start.command_id)


# -- the worker: the handler's span, and its context on the reply ------------------------------


def _command_message(trace: Headers) -> Message:
    """The order saga's first command to o-1, with ``trace`` headers, as a worker reads it."""
    command = m.MakePayment(order_id="o-1", customer_id="c", amount_cents=100, card_token="t")
    command_id = "order_fulfillment/o-1/payment/1"
    sent = OutgoingCommand(PAYMENTS, "o-1", command_id, command.encode(), COMMAND)
    headers = outgoing_headers(sent, "order_fulfillment.inbox", "order_fulfillment") + trace
    return Message(
        topic=PAYMENTS, partition=0, offset=7, key=b"o-1", value=sent.value, headers=headers
    )


def test_a_worker_runs_the_handler_in_a_child_span_of_the_attempt_and_replies_with_its_context(
    exporter: InMemorySpanExporter,
) -> None:
    attempt = f"00-{TRACE_ID:032x}-{PARENT:016x}-01"
    answer = services.payments.handle(_command_message(trace_headers(attempt, "v=1")), _unknown)
    (span,) = exporter.get_finished_spans()
    assert span.name == "handle MakePayment" and span.context is not None
    assert span.parent is not None and span.parent.span_id == PARENT
    assert span.context.trace_id == TRACE_ID
    assert span.attributes is not None and span.attributes["sagalog.worker"] == "payments"
    _, _, _, reply_headers_ = answer.outgoing
    expected = f"00-{TRACE_ID:032x}-{span.context.span_id:016x}-01"
    assert header(reply_headers_, TRACEPARENT) == expected
    assert header(reply_headers_, TRACESTATE) == "v=1"
    assert header(reply_headers_, COMMAND_ID) == "order_fulfillment/o-1/payment/1"


def test_a_worker_without_tracing_adds_no_trace_to_its_reply() -> None:
    attempt = f"00-{TRACE_ID:032x}-{PARENT:016x}-01"
    answer = services.payments.handle(_command_message(trace_headers(attempt, None)), _unknown)
    _, _, _, headers = answer.outgoing
    assert [name for name, _ in headers] == [COMMAND_ID]


def _unknown(context: object) -> None:
    return None  # no command was handled before
