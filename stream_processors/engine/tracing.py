"""OpenTelemetry tracing of sagas, step attempts and worker handlers: off, and free, unless asked.

Off by default. ``configure()`` turns it on from the standard ``OTEL_*`` environment (see
``wanted``): an exporter named by ``OTEL_TRACES_EXPORTER`` (``otlp``, its default, over the
protocol ``OTEL_EXPORTER_OTLP_PROTOCOL`` names; ``console``; any installed exporter's entry
point), the resource from ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``, the sampler from
``OTEL_TRACES_SAMPLER``, batching from ``OTEL_BSP_*``. The SDK (the ``sagalog[tracing]`` extra) is
imported only then: while tracing is off the engine's cost is reading ``ENABLED``, once per input
and once per decision (and the null ``trace`` field of each journal entry and snapshot).

The trace of a saga instance is that of the event that started it: the start's ``traceparent``
header (and ``tracestate``) is journaled on its ``SagaStarted`` entry (``trace``, one string) and
kept in the instance (plain text: the pure core knows nothing of OpenTelemetry), so every process
that later owns the instance, after any restart, continues the same trace. A start without one gets
a trace id derived from the saga and instance (``saga_trace``). An instance lives across many
transactions and processes, so its spans cannot be held open: each is emitted whole, with its real
start and end times, when it ends, and span ids are derived from journaled data, so that a command
sent by one process and answered in another names the same parent:

- the saga span (``saga <name>``): from ``SagaStarted`` to the terminal entry; its id is derived
  from the trace, saga and instance; its parent, the span of the start's ``traceparent``;
- one step-attempt span per command (``step <node>``, ``compensate <node>``): from the command
  sent to the decision on its reply (or timeout); its id is derived from the command id, and it
  is the ``traceparent`` the command carries; its parent, the saga span;
- one handler span per command handled (``handle <Command>``, by the worker): a child of the
  attempt span (read from the command's headers), the parent of the user's own spans, and the
  ``traceparent`` of the reply.

The processor collects the spans a decision ends (``decision_spans``) in its open transaction and
exports them only once the transaction commits: an aborted transaction's decisions are taken
again, and would otherwise be reported twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from stream_processors.core.decision import CHILD_START, COMMAND, Decision, OutgoingCommand
from stream_processors.core.instance import Instance, Status, StepState, StepStatus
from stream_processors.core.journal import Kind
from stream_processors.engine.routing import (
    TRACEPARENT,
    TRACESTATE,
    Headers,
    ReceivedHeaders,
    header,
    trace_headers,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

#: Whether this process traces: the one check the hot path makes. Set by ``install``.
ENABLED = False
#: The longest ``tracestate`` journaled and passed on (W3C: keep at least 512 characters).
MAX_TRACESTATE = 512
#: Step statuses in which a command (or a wait) is out, its reply awaited.
_IN_FLIGHT = frozenset({StepStatus.PENDING, StepStatus.COMPENSATING, StepStatus.CANCELLED})
_FAILURES = frozenset({Kind.ATTEMPT_FAILED, Kind.STEP_FAILED, Kind.COMPENSATION_FAILED})
_SAMPLED = 0x01


class _State:
    """This process's provider and tracer, once installed."""

    provider: TracerProvider | None = None
    tracer: Tracer | None = None
    configured = False


_STATE = _State()


# -- configuration -----------------------------------------------------------------------------


def wanted(environment: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` environment asks for traces: an exporter named (other than
    ``none``) or an OTLP endpoint given, and the SDK not disabled (``OTEL_SDK_DISABLED``)."""
    if environment.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environment.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(
        environment.get(name)
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure() -> bool:
    """Turn tracing on if the environment asks for it (once per process); whether it is on.

    Without the SDK installed (``pip install 'sagalog[tracing]'``) it says so and stays off."""
    if ENABLED or _STATE.configured:
        return ENABLED
    _STATE.configured = True
    if not wanted(os.environ):
        return False
    try:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_* asks for traces, but no SDK: pip install 'sagalog[tracing]'")
        return False
    install(*(BatchSpanProcessor(exporter) for exporter in _exporters()))
    log.info("tracing on: %s", os.environ.get("OTEL_TRACES_EXPORTER") or "otlp")
    return True


def _exporters() -> list[SpanExporter]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names, from their entry points (as the SDK's own
    auto-configuration finds them): ``otlp`` by the protocol the environment names."""
    import importlib.metadata

    from opentelemetry.sdk.trace.export import SpanExporter as Exporter

    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    otlp = "otlp_proto_http" if protocol.strip() == "http/protobuf" else "otlp_proto_grpc"
    exporters = []
    for name in (os.environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(","):
        name = otlp if name.strip() == "otlp" else name.strip()
        found = importlib.metadata.entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            raise ValueError(f"OTEL_TRACES_EXPORTER: no trace exporter named {name!r} installed")
        exporter = next(iter(found)).load()()
        assert isinstance(exporter, Exporter)
        exporters.append(exporter)
    return exporters


def install(*processors: SpanProcessor) -> None:
    """Trace from now on into ``processors`` (tests pass an in-memory exporter's)."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    global ENABLED
    provider = TracerProvider(resource=Resource.create(), id_generator=_chosen_ids())
    for processor in processors:
        provider.add_span_processor(processor)
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # The user's own spans (in a handler) then join the same traces and exporters.
        trace.set_tracer_provider(provider)
    _STATE.provider, _STATE.tracer = provider, provider.get_tracer("sagalog")
    ENABLED = True


def uninstall() -> None:
    """Stop tracing (flushing what is batched): for tests, which install their own."""
    global ENABLED
    ENABLED = False
    if _STATE.provider is not None:
        _STATE.provider.shutdown()
    _STATE.provider = _STATE.tracer = None


def _tracer() -> Tracer:
    assert _STATE.tracer is not None, "tracing is not installed"
    return _STATE.tracer


def _chosen_ids() -> IdGenerator:
    """The SDK's random ids, unless a span id (and a root's trace id) is chosen for the span
    being started on this thread: how spans get the ids derived from the journal."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class ChosenIds(RandomIdGenerator):
        def generate_span_id(self) -> int:
            chosen = _CHOSEN.__dict__.pop("span_id", None)
            return super().generate_span_id() if chosen is None else int(chosen)

        def generate_trace_id(self) -> int:
            chosen = _CHOSEN.__dict__.pop("trace_id", None)
            return super().generate_trace_id() if chosen is None else int(chosen)

    return ChosenIds()


_CHOSEN = threading.local()


# -- the trace context, as plain text ----------------------------------------------------------


#: W3C Trace Context's ``traceparent``: version-trace id-parent id-flags in lower-case hex; a
#: later version may append fields (``-...``), version 00 may not, and ff is invalid.
_TRACEPARENT = re.compile(
    r"[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*"
)
_MAX_TRACEPARENT = 512
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def incoming(headers: ReceivedHeaders) -> str | None:
    """The valid W3C trace context of a received record as journaled (``JournalEntry.trace``):
    its ``traceparent`` normalised (version 00), then a space and its ``tracestate`` if it has a
    valid one; None without a valid ``traceparent``.

    Headers come from anyone: only a well-formed context may reach the journal. The
    ``traceparent`` is checked by the W3C rules (as OpenTelemetry's propagator does, without
    its per-call cost: this runs for every start); a ``tracestate`` by OpenTelemetry's parser."""
    traceparent = header(headers, TRACEPARENT)
    if traceparent is None or len(traceparent) > _MAX_TRACEPARENT:
        return None
    found = _TRACEPARENT.fullmatch(traceparent)
    if found is None:
        return None
    version, trace_hex, span_hex, flags, rest = found.groups()
    invalid = version == "ff" or (version == "00" and rest is not None)
    if invalid or trace_hex == _ZERO_TRACE or span_hex == _ZERO_SPAN:
        return None
    normalised = f"00-{trace_hex}-{span_hex}-{flags}"
    tracestate = _tracestate(header(headers, TRACESTATE))
    return normalised if tracestate is None else f"{normalised} {tracestate}"


def _tracestate(value: str | None) -> str | None:
    """A valid ``tracestate``, as OpenTelemetry re-writes it; None if absent, bad or too long."""
    if not value or len(value) > MAX_TRACESTATE:
        return None
    from opentelemetry.trace import TraceState

    return TraceState.from_header([value]).to_header() or None


def _traceparent(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def _derived_id(bits: int, *parts: str) -> int:
    """A non-zero id of ``bits`` bits derived from ``parts``: the same in every process."""
    digest = hashlib.blake2b("/".join(parts).encode(), digest_size=bits // 8).digest()
    return int.from_bytes(digest) or 1


@dataclass(frozen=True, slots=True)
class SagaTrace:
    """Where an instance's spans go: its trace, the saga span's id and parent, and flags."""

    trace_id: int
    span_id: int
    parent_id: int | None
    flags: int
    tracestate: str | None

    def attempt_id(self, command_id: str) -> int:
        """The span id of the attempt that sends ``command_id``."""
        return _derived_id(64, f"{self.trace_id:032x}", "attempt", command_id)


def saga_trace(saga: str, instance: Instance) -> SagaTrace:
    """The trace of an instance, from the context it was started with (journaled by
    ``incoming``), or, started without one, derived from the saga and instance id."""
    return _saga_trace(saga, instance.instance_id, instance.trace)


@lru_cache(maxsize=4096)  # an instance's decisions follow each other: derive its ids once
def _saga_trace(saga: str, instance_id: str, trace: str | None) -> SagaTrace:
    tracestate = None
    if trace:
        traceparent, _, tracestate = trace.partition(" ")  # a traceparent has no space
        _, trace_hex, span_hex, flags_hex = traceparent.split("-")
        trace_id, parent_id, flags = int(trace_hex, 16), int(span_hex, 16), int(flags_hex, 16)
    else:
        trace_id, parent_id, flags = _derived_id(128, saga, instance_id), None, _SAMPLED
    span_id = _derived_id(64, f"{trace_id:032x}", "saga", saga, instance_id)
    return SagaTrace(trace_id, span_id, parent_id, flags, tracestate or None)


def command_trace(trace: SagaTrace, command: OutgoingCommand) -> Headers:
    """The trace headers of a record a decision sends: a step's command (or a child's start) is
    the span of its attempt; a child's end or cancel, and a handler's fire-and-forget command
    (no step waits for it: its id names ``#<position>``, not a step), of the saga that sends it."""
    if command.kind in (COMMAND, CHILD_START) and not _unbound(command.command_id):
        span_id = trace.attempt_id(command.command_id)
    else:
        span_id = trace.span_id
    return trace_headers(_traceparent(trace.trace_id, span_id, trace.flags), trace.tracestate)


def _unbound(command_id: str) -> bool:
    """Whether a command id is a handler's command's (``Decider.send_unbound``): no attempt span
    will ever end for it, so it must not name one."""
    return command_id.rsplit("/", 2)[-2].startswith("#")


# -- spans ended by a decision -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ended:
    """A span a decision ended, as plain data until its transaction commits (``export``)."""

    name: str
    trace: SagaTrace
    span_id: int
    parent_id: int | None
    start_ms: int
    end_ms: int
    producer: bool
    attributes: dict[str, str | int]
    error: str | None = None


def decision_spans(
    saga: str, trace: SagaTrace, decision: Decision, before: Instance | None, now_ms: int
) -> list[Ended]:
    """The spans ``decision`` ends: each attempt whose reply (or timeout) it decided on, and
    the saga's if it finished the instance (``trace``: its ``saga_trace``)."""
    after = decision.instance
    assert after is not None
    if before is None and not after.status.finished:
        return []  # a start: nothing was out, nothing ended
    failures = {
        entry.step: entry.reason or entry.kind
        for entry in decision.entries
        if entry.kind in _FAILURES and entry.step
    }
    ended = [
        _attempt(saga, trace, after, key, step, now_ms, failures.get(key))
        for key, step in (before.steps.items() if before is not None else ())
        if step.status in _IN_FLIGHT and not _still_out(after.steps.get(key), step)
    ]
    if after.status.finished and (before is None or not before.status.finished):
        failed = None if after.status is Status.COMPLETED else after.reason or after.status.value
        attributes: dict[str, str | int] = {
            "sagalog.saga": saga,
            "sagalog.instance": after.instance_id,
            "sagalog.status": after.status.value,
        }
        span = Ended(
            f"saga {saga}",
            trace,
            trace.span_id,
            trace.parent_id,
            after.started_at_ms,
            now_ms,
            False,
            attributes,
            failed,
        )
        ended.append(span)
    return ended


def _still_out(now: StepState | None, was: StepState) -> bool:
    return now is not None and now.command_id == was.command_id and now.status in _IN_FLIGHT


def _attempt(
    saga: str,
    trace: SagaTrace,
    after: Instance,
    key: str,
    step: StepState,
    now_ms: int,
    error: str | None,
) -> Ended:
    now = after.steps.get(key)
    attributes: dict[str, str | int] = {
        "sagalog.saga": saga,
        "sagalog.instance": after.instance_id,
        "sagalog.step": key,
        "sagalog.node": step.node or key,
        "sagalog.attempt": step.attempt,
        "sagalog.command_id": step.command_id,
        "sagalog.outcome": now.status.value if now is not None else "ended",
    }
    verb = "compensate" if step.status.compensation else "step"
    return Ended(
        f"{verb} {step.node or key}",
        trace,
        trace.attempt_id(step.command_id),
        trace.span_id,
        step.sent_at_ms,
        max(now_ms, step.sent_at_ms),
        True,
        attributes,
        error,
    )


def export(spans: list[Ended]) -> None:
    """Emit the spans of a committed transaction, each with its derived ids and real times."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceState

    tracer = _tracer()
    for ended in spans:
        context = None
        if ended.parent_id is not None:
            state = TraceState.from_header([ended.trace.tracestate or ""])
            flags = trace.TraceFlags(ended.trace.flags)
            parent = SpanContext(ended.trace.trace_id, ended.parent_id, True, flags, state)
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        _CHOSEN.span_id, _CHOSEN.trace_id = ended.span_id, ended.trace.trace_id
        try:
            span = tracer.start_span(
                ended.name,
                context,
                SpanKind.PRODUCER if ended.producer else SpanKind.INTERNAL,
                ended.attributes,
                start_time=ended.start_ms * 1_000_000,
            )
        finally:
            _CHOSEN.__dict__.clear()
        if ended.error is not None:
            span.set_status(StatusCode.ERROR, ended.error)
        span.end(end_time=ended.end_ms * 1_000_000)


# -- a worker's handler ------------------------------------------------------------------------


class Handling:
    """The span of one handler run: ``headers`` is its context, for the reply to carry."""

    def __init__(self, span: Span, headers: Headers) -> None:
        self._span = span
        self.headers = headers

    def failed(self, why: str) -> None:
        from opentelemetry.trace import StatusCode

        self._span.set_status(StatusCode.ERROR, why)


@contextmanager
def handling(
    headers: ReceivedHeaders, command: str, attributes: dict[str, str | int]
) -> Iterator[Handling]:
    """Run a handler inside its span (``handle <command>``), the child of the attempt span the
    command's ``traceparent`` names; current, so that the handler's own spans are its children."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    carrier = {
        name: value
        for name in (TRACEPARENT, TRACESTATE)
        if (value := header(headers, name)) is not None
    }
    parent = propagator.extract(carrier)
    span = _tracer().start_span(f"handle {command}", parent, SpanKind.CONSUMER, attributes)
    with trace.use_span(span, end_on_exit=True):
        reply: dict[str, str] = {}
        propagator.inject(reply, trace.set_span_in_context(span))
        yield Handling(span, [(name, value.encode()) for name, value in reply.items()])
