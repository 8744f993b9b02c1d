"""A broker-free micro-benchmark of the engine's pure per-input path, with an optional profile.

    .venv/bin/python tools/profile_core.py                      # inputs/s, best of 3 runs
    .venv/bin/python tools/profile_core.py --shape saga -n 30000
    .venv/bin/python tools/profile_core.py --profile            # cProfile top 25 (tottime)
    .venv/bin/python tools/profile_core.py --pyinstrument       # pyinstrument's call tree
    .venv/bin/python tools/profile_core.py -n 20000 --json      # one JSON line (the bench's)

It runs, for every input, what ``SagaProcessor`` does between ``consume`` and ``produce``
(``_decoded``, ``_process``, ``_emit``) minus the Kafka calls, the store and the metrics: the
size check of the received record, ``decode_record``, the key checks, ``decide``, encoding the
journal entries, the command's headers, the snapshot, and the limit checks of everything staged.
The processor's own code is mirrored here (not imported: it needs a Kafka client) so the
profile shows the pure and codec parts alone.

Shapes (the order saga of ``examples/order_fulfillment``):

- ``start`` (default): N OrderPlaced inputs, each starting an instance, as ``bench --only
  engine`` feeds the processor (the same records: ``plan_orders(seed=1)``);
- ``saga``: N/3 sagas, each OrderPlaced, PaymentCompleted, ShippingLabelCreated, the replies
  carrying the headers a worker's reply has; the instance comes from the snapshot staged by the
  previous input, decoded (``--cached``: the folded instance itself, as the processor's cache
  gives it).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from examples.order_fulfillment.messages import PaymentCompleted, ShippingLabelCreated  # noqa: E402
from examples.order_fulfillment.saga import OrderFulfillment  # noqa: E402
from examples.order_fulfillment.scenario import plan_orders  # noqa: E402
from stream_processors.codecs.records import decode_record  # noqa: E402
from stream_processors.core import limits  # noqa: E402
from stream_processors.core.decide import Decision, Input, decide  # noqa: E402
from stream_processors.core.instance import Instance, decode_snapshot, encode_snapshot  # noqa: E402
from stream_processors.core.keys import key_mismatch  # noqa: E402
from stream_processors.engine.routing import (  # noqa: E402
    COMMAND_ID,
    INSTANCE,
    NOTE,
    Headers,
    command_headers,
    header,
    reply_headers,
)

DEFINITION = OrderFulfillment.definition
INBOX, JOURNAL, SNAPSHOTS = "order_fulfillment.inbox", "sagalog.journal", "sagalog.snapshots"
#: What the processor's ``BrokerLimits`` answers for a topic on a default broker.
LIMITS = limits.Limits(topic_max_bytes=1_048_588)
NOW_MS = 1_767_225_600_000


@dataclass(frozen=True, slots=True)
class Message:
    """An inbox record as consumed: what the processor reads of a ``confluent_kafka.Message``."""

    key: bytes
    value: bytes
    headers: Headers


def _start_messages(count: int) -> list[Message]:
    orders = plan_orders(count, 0.0, 0.0, seed=1, run_id="engine")
    return [Message(o.event.order_id.encode(), o.event.encode(), []) for o in orders]


def _reply(order_id: str, step: str, record: bytes) -> Message:
    """A worker's reply to attempt 1 of ``step``: its command id and instance headers."""
    cid = f"{DEFINITION.name}/{order_id}/{step}/1"
    return Message(order_id.encode(), record, [*reply_headers(cid), (INSTANCE, order_id.encode())])


def _saga_messages(count: int) -> list[Message]:
    messages = []
    for start in _start_messages(max(1, count // 3)):
        order_id = start.key.decode()
        paid = PaymentCompleted(order_id=order_id, payment_id=f"pay-{order_id}")
        shipped = ShippingLabelCreated(order_id=order_id, tracking_number=f"trk-{order_id}")
        messages += [
            start,
            _reply(order_id, "payment", paid.encode()),
            _reply(order_id, "shipping", shipped.encode()),
        ]
    return messages


class PurePath:
    """The processor's per-input work without Kafka: ``process`` returns what it would produce."""

    def __init__(self, cached: bool) -> None:
        self.cached = cached
        self.instances: dict[str, Instance] = {}
        self.snapshots: dict[str, bytes] = {}
        self.produced = 0

    def load(self, instance_id: str) -> Instance | None:
        if self.cached:
            return self.instances.get(instance_id)
        snapshot = self.snapshots.get(instance_id)
        return None if snapshot is None else decode_snapshot(snapshot)

    def process(self, message: Message) -> None:
        # SagaProcessor._decoded: the received record's size, then its decoding
        if limits.record_size(message.key, message.value, message.headers) > 1_000_000:
            raise AssertionError("too large")
        record = decode_record(message.value)
        # SagaProcessor._process: key checks, load, decide
        instance_id = message.key.decode()
        assert limits.instance_id_too_long(message.key, 256) is None
        headers = message.headers
        command_id, note = header(headers, COMMAND_ID), header(headers, NOTE)
        mismatch = key_mismatch(
            DEFINITION, record, instance_id, command_id, header(headers, INSTANCE)
        )
        assert mismatch is None, mismatch
        instance = self.load(instance_id)
        decision = decide(
            DEFINITION, instance, Input(record, message.value, command_id, note), NOW_MS
        )
        assert decision.rejected is None and decision.ignored is None, decision
        self.emit(decision, message.key)

    def emit(self, decision: Decision, key: bytes) -> None:
        # SagaProcessor._emit: encode, check against the limits, stage
        after = decision.instance
        assert after is not None
        outgoing = [
            limits.Outgoing(f"journal entry {entry.kind}", JOURNAL, key, entry.encode())
            for entry in decision.entries
        ]
        for command in decision.commands:
            headers = command_headers(command.command_id, INBOX, command.key, DEFINITION.name)
            what = f"command {command.command_id[:200]}"
            record = limits.Outgoing(
                what, command.topic, command.key.encode(), command.value, headers
            )
            outgoing.append(record)
        snapshot = encode_snapshot(after)
        outgoing.append(limits.Outgoing("snapshot", SNAPSHOTS, key, snapshot))
        assert limits.first_oversize((record, LIMITS) for record in outgoing) is None
        self.produced += len(outgoing)
        self.instances[after.instance_id] = after
        self.snapshots[after.instance_id] = snapshot


def run(messages: Sequence[Message], cached: bool) -> tuple[float, int]:
    """CPU seconds to process ``messages`` through a fresh ``PurePath``, and records produced.

    CPU time, not wall time: the machine's cores are shared, and a run preempted by another
    process would otherwise count the other's time as its own.
    """
    path = PurePath(cached)
    started = time.process_time()
    for message in messages:
        path.process(message)
    return time.process_time() - started, path.produced


def profiled(work: Callable[[], object], pyinstrument: bool, top: int = 25) -> None:
    """Run ``work`` under pyinstrument (its call tree) or cProfile (``top`` by own time)."""
    if pyinstrument:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
        work()
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False, show_all=False))
        return
    profile = cProfile.Profile()
    profile.runcall(work)
    stats = pstats.Stats(profile).strip_dirs().sort_stats("tottime")
    stats.print_stats(top)


def _rates(messages: Sequence[Message], cached: bool, repeat: int) -> Iterator[float]:
    for _ in range(repeat):
        seconds, _produced = run(messages, cached)
        yield len(messages) / seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--inputs", type=int, default=100_000)
    parser.add_argument("--shape", choices=("start", "saga"), default="start")
    parser.add_argument("--cached", action="store_true", help="saga shape: no snapshot decode")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile, top 25 by own time")
    parser.add_argument("--pyinstrument", action="store_true", help="pyinstrument call tree")
    parser.add_argument("--json", action="store_true", help="the rates as one line of JSON")
    args = parser.parse_args(argv)
    build = _saga_messages if args.shape == "saga" else _start_messages
    messages = build(args.inputs)
    run(messages[:1000], args.cached)  # warm up: schema caches, first-call paths
    if args.profile or args.pyinstrument:
        profiled(lambda: run(messages, args.cached), args.pyinstrument)
        return 0
    rates = sorted(_rates(messages, args.cached, args.repeat))
    if args.json:
        shape = args.shape + (" cached" if args.cached else "")
        runs = [round(rate) for rate in rates]
        print(json.dumps({"shape": shape, "inputs": len(messages), "inputs_per_second": runs}))
        return 0
    shown = ", ".join(f"{r:,.0f}" for r in rates)
    print(
        f"{args.shape}{' cached' if args.cached else ''}: {len(messages):,} inputs; "
        f"best {rates[-1]:,.0f} inputs/s of CPU time (runs: {shown})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
