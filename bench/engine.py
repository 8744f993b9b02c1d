"""The engine: inputs per second of one processor, and of two, working through a filled inbox.

The inbox gets the same N OrderPlaced records (same keys, same bytes) as the limit pipe's
source. Each one starts a saga: the processor decodes it, decides, journals, sends MakePayment
and stages the instance's snapshot, committing one transaction per 100 ms with the offsets.
The rate is read from the processor group's committed offsets, the same way as the pipe's, and
checked against the processors' own ``sagalog_inputs_processed_total``.

The processors are started first, on an empty inbox, and the inbox is filled once each has its
partitions, so that one and two processes are measured the same way (two processes started on a
backlog would spend the first of it rebalancing). The filler is far faster than the engine.

Between the one-process and two-process runs the engine of the issue's day runs the same N
inputs (``bench.baseline``): the baseline of the per-processor target.

After the one-process run, ``shape`` reads what the engine wrote for each input (journal
entries, commands, snapshots: how many per input, their sizes) and keeps one input's records as
the template the same-shape pipe reproduces (``bench.same_shape``).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Message

from bench import baseline
from bench.common import (
    BASE,
    PARTITIONS,
    PROCESSOR_GROUP,
    TOPICS,
    fill,
    follow_drain,
    fresh_saga_topics,
    order_records,
    owned_partitions,
    processor,
    read_topic,
    stop_all,
)
from bench.limit import Output, save_shape
from sagas.local import LocalProcess

SHAPE = BASE / "engine.shape.json"
#: Records of each partition read to learn the engine's output shape.
SAMPLE_PER_PARTITION = 2_000


def _wait_for_partitions(processes: list[LocalProcess], timeout: float = 120) -> None:
    """Until each process restored its store and together they own every partition, once."""
    for process in processes:
        process.wait_for_metrics(
            lambda m: m.get("sagalog_restore_remaining_records") == 0, timeout, "no partitions"
        )
    deadline = time.monotonic() + timeout
    while True:
        owned = [owned_partitions(process) for process in processes]
        if all(owned) and sorted(p for o in owned for p in o) == list(range(PARTITIONS)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"partitions not shared out among the processors: {owned}")
        time.sleep(0.5)


def run(
    records: int,
    processes: int,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    headers: Callable[[int], list[tuple[str, bytes]]] | None = None,
    code: Path | None = None,
) -> dict[str, Any]:
    """``processes`` processors (with ``env``, running the project tree ``code``: the current
    one by default) draining ``records`` inputs (the ``n``th with ``headers(n)``), filled once
    they are ready."""
    fresh_saga_topics()
    names = ["processor", *(f"processor-{n}" for n in range(2, processes + 1))]
    running = [processor(name, env=env, code=code).start() for name in names]
    try:
        _wait_for_partitions(running)
        cpu = _cpu_seconds(running)
        fill(TOPICS.inbox, order_records(records, "engine"), headers)
        drain = follow_drain(
            PROCESSOR_GROUP,
            TOPICS.inbox,
            records,
            timeout,
            lambda: all(process.running for process in running),
        )
        cpu = _cpu_seconds(running) - cpu
        counted = sum(p.metric("sagalog_inputs_processed_total") for p in running)
    finally:
        stop_all(running)
    return {
        "processes": processes,
        "records": records,
        "measured_records": drain.records,
        "seconds": round(drain.seconds, 3),
        "inputs_per_second": round(drain.per_second, 1),
        "inputs_processed_metric": counted,
        # Less disturbed than the rate by other processes on a shared machine.
        "cpu_us_per_input": round(cpu / records * 1e6, 1),
    }


def _cpu_seconds(processes: list[LocalProcess]) -> float:
    """CPU time (user and system, all threads) the processes have used so far."""
    import psutil  # type: ignore[import-untyped]  # the bench extra's; imported where used

    times = [psutil.Process(p.popen.pid).cpu_times() for p in processes if p.popen is not None]
    return sum(t.user + t.system for t in times)


def _headers(message: Message) -> list[tuple[str, bytes]]:
    pairs = message.headers() or []
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return [(k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in items]


def _header_bytes(message: Message) -> int:
    return sum(len(k) + len(v) for k, v in _headers(message))


def shape() -> dict[str, Any]:
    """What the engine wrote per input, from a sample of each output topic's partitions.

    Every input started its own instance, so records per input = records per key. The template
    is the records of one instance whose record counts are the most common ones.
    """
    topics = {"journal": TOPICS.journal, "snapshot": TOPICS.snapshots}
    topics |= {f"command {topic}": topic for topic in TOPICS.commands}
    by_key: dict[str, dict[bytes, list[Message]]] = {}
    figures: dict[str, Any] = {}
    for name, topic in topics.items():
        keyed: dict[bytes, list[Message]] = defaultdict(list)
        for message in read_topic(topic, per_partition=SAMPLE_PER_PARTITION):
            keyed[message.key() or b""].append(message)
        by_key[name] = keyed
        sampled = [m for ms in keyed.values() for m in ms]
        if not sampled:
            continue
        figures[name] = {
            "topic": topic,
            "records_per_key": round(len(sampled) / len(keyed), 3),
            "mean_value_bytes": round(statistics.fmean(len(m.value() or b"") for m in sampled), 1),
            "mean_key_bytes": round(statistics.fmean(len(m.key() or b"") for m in sampled), 1),
            "mean_header_bytes": round(statistics.fmean(_header_bytes(m) for m in sampled), 1),
        }
    journal = by_key["journal"]
    usual = Counter(len(ms) for ms in journal.values()).most_common(1)[0][0]
    key = next(
        k
        for k, ms in journal.items()
        if len(ms) == usual and all(k in by_key[name] for name in figures)
    )
    template = [
        Output(
            message.topic() or "",
            message.value(),
            _headers(message),
            same_partition=not name.startswith("command"),
        )
        for name in figures
        for message in by_key[name][key]
    ]
    save_shape(template, SHAPE)
    return {
        "per_topic": figures,
        "template_records": len(template),
        "template_bytes": sum(len(o.value or b"") for o in template),
    }


#: Tracing on, the standard way: OTLP, to a collector that need not be there. The engine alone
#: ends no span (no worker answers its commands), so this measures what tracing costs every
#: input: the start's ``traceparent`` read, checked and journaled, and each command's made.
TRACING_ENV = {
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
    "OTEL_SERVICE_NAME": "bench-processor",
}


def traceparent(n: int) -> list[tuple[str, bytes]]:
    """The ``n``th input's trace context: a publisher's span of its own trace."""
    return [("traceparent", f"00-{n + 1:032x}-{n + 1:016x}-01".encode())]


def tracing_cost(records: int, rounds: int = 3, timeout: float = 600) -> dict[str, Any]:
    """One processor's inputs/s with tracing off and on (inputs with a ``traceparent``),
    alternating, ``rounds`` times each: the medians, and on over off."""
    off: list[dict[str, Any]] = []
    on: list[dict[str, Any]] = []
    for _ in range(rounds):
        off.append(run(records, 1, timeout))
        on.append(run(records, 1, timeout, env=TRACING_ENV, headers=traceparent))

    def median(runs: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    median_off, median_on = median(off, "inputs_per_second"), median(on, "inputs_per_second")
    return {
        "records": records,
        "off_inputs_per_second": [r["inputs_per_second"] for r in off],
        "on_inputs_per_second": [r["inputs_per_second"] for r in on],
        "median_off": median_off,
        "median_on": median_on,
        "on_over_off": round(median_on / median_off, 3) if median_off else None,
        "median_off_cpu_us_per_input": median(off, "cpu_us_per_input"),
        "median_on_cpu_us_per_input": median(on, "cpu_us_per_input"),
    }


def measure(records: int, timeout: float = 600) -> dict[str, Any]:
    """One processor, its output shape, the issue's engine (``bench.baseline``), then two
    processors, on the same N inputs."""
    SHAPE.unlink(missing_ok=True)  # never a shape of an earlier run
    one = run(records, 1, timeout)
    outputs = shape()
    issue_era = issue_era_run(records, timeout)
    two = run(records, 2, timeout)
    return one | {
        "shape": outputs,
        "issue_era": issue_era,
        "over_issue_era": _ratio(one, issue_era),
        "two_processes": two,
        "two_over_one": _ratio(two, one),
    }


def issue_era_run(records: int, timeout: float = 600) -> dict[str, Any]:
    """One processor of the engine issue 14 measured (``bench.baseline.ISSUE_ERA``), or why
    it could not run."""
    try:
        code = baseline.source_tree()
    except baseline.Unavailable as missing:
        return {"commit": baseline.ISSUE_ERA, "error": str(missing)}
    state = baseline.fresh_state(BASE / "baseline" / "state")
    env = {"SAGALOG_STATE_DIR": str(state.resolve())}
    try:
        return {"commit": baseline.ISSUE_ERA} | run(records, 1, timeout, env=env, code=code)
    except (TimeoutError, RuntimeError) as failed:  # its log says more
        return {"commit": baseline.ISSUE_ERA, "error": f"{type(failed).__name__}: {failed}"}


def _ratio(faster: dict[str, Any], slower: dict[str, Any]) -> float | None:
    """Inputs/s of one run over another's (None when either has none)."""
    a, b = faster.get("inputs_per_second"), slower.get("inputs_per_second")
    return round(a / b, 3) if a and b else None
