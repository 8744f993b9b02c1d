"""The processor's per-input cost on in-memory Kafka: CPU per input, a profile, or instructions.

    .venv/bin/python tools/profile_engine.py                    # inputs/s of CPU, best of 3
    .venv/bin/python tools/profile_engine.py --shape saga -n 30000
    .venv/bin/python tools/profile_engine.py --profile          # cProfile top 30 (tottime)
    .venv/bin/python tools/profile_engine.py --pyinstrument     # pyinstrument's call tree
    .venv/bin/python tools/profile_engine.py --valgrind         # instructions per input

Unlike ``tools/profile_core.py`` (the pure path mirrored), this runs ``SagaProcessor`` itself, on
``stream_processors.kafka.fake`` with a RocksDB store in a temporary directory: its loop, the
checks, ``decide``, the outputs, the open transaction, the commit, the store write, the cache and
the metrics; everything but librdkafka. The fake broker's own work is counted too (it is the
same before and after a change, and small next to the processor's).

``--valgrind`` runs the script twice under valgrind (callgrind, no cache simulation), with
``--base`` inputs and with ``--base`` + ``-n``, and prints the difference in instructions
divided by ``-n``: start-up and imports cancel out, and the count does not depend on what else
the machine runs, unlike CPU time on a shared machine.

Shapes (the order saga of ``examples/order_fulfillment``):

- ``start`` (default): N OrderPlaced inputs in the inbox, each starting an instance, as
  ``bench --only engine`` fills it (the same records: ``plan_orders(seed=1)``);
- ``saga``: N/3 sagas: the OrderPlaced inputs, then a PaymentCompleted reply to each MakePayment
  command sent, then a ShippingLabelCreated reply to each CreateShippingLabel, each reply with
  the headers a worker's reply has. Replies are published between the phases (not timed).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from confluent_kafka import TopicPartition  # noqa: E402

from examples.order_fulfillment.messages import PaymentCompleted, ShippingLabelCreated  # noqa: E402
from examples.order_fulfillment.saga import OrderFulfillment  # noqa: E402
from examples.order_fulfillment.scenario import plan_orders  # noqa: E402
from stream_processors.codecs.records import Record  # noqa: E402
from stream_processors.engine.processor import ProcessorConfig, SagaProcessor, tune_gc  # noqa: E402
from stream_processors.engine.routing import COMMAND_ID, INSTANCE, header, reply_headers  # noqa: E402
from stream_processors.kafka.fake import FakeBroker, FakeClients  # noqa: E402
from tools.profile_core import profiled  # noqa: E402

DEFINITION = OrderFulfillment.definition
PARTITIONS = 8
#: Inputs per consume, and per transaction: ``commit_interval_ms`` 0 commits after every batch,
#: so that the number of commits does not depend on the speed of the run (about what the engine
#: commits per 100 ms at 5,000 inputs/s).
BATCH = 500


class Engine:
    """A started processor that owns every partition of a fake broker, and its CPU time."""

    def __init__(self, state_dir: Path) -> None:
        self.broker = FakeBroker(partitions=PARTITIONS)
        self.clients = FakeClients(self.broker)
        config = ProcessorConfig(
            partitions=PARTITIONS,
            state_dir=state_dir,
            signing=None,
            batch_size=BATCH,
            commit_interval_ms=0,
        )
        self.processor = SagaProcessor(DEFINITION, config, clients=self.clients)
        self.topics = self.processor.topics
        self.cpu = 0.0
        self.answered: dict[str, int] = {}
        assert self.processor.start()
        consumer = self.clients.consumers[-1]
        consumer.assign_next(
            [
                TopicPartition(topic, p)
                for topic in (self.topics.inbox, *self.topics.sources)
                for p in range(PARTITIONS)
            ]
        )
        for _ in range(3):  # assigned, restored (nothing to restore)
            self.processor.step()
        tune_gc()  # as SagaProcessor.run does once started

    def drain(self, expected: int) -> None:
        """Step until ``expected`` more inputs are committed (CPU time counted)."""
        group = f"sagalog.{DEFINITION.name}"
        target = sum(self.broker.committed[group].values()) + expected
        started = time.process_time()
        while sum(self.broker.committed[group].values()) < target:
            self.processor.step()
        self.cpu += time.process_time() - started

    def reply(self, topic: str, make: Callable[[str], Record]) -> int:
        """A worker's reply to every command on ``topic`` not answered yet; how many."""
        commands = self.broker.records(topic)
        for command in commands[self.answered.get(topic, 0) :]:
            command_id = header(command.headers(), COMMAND_ID)
            instance_id = header(command.headers(), INSTANCE)
            assert command_id is not None and instance_id is not None
            headers = [*reply_headers(command_id), (INSTANCE, instance_id.encode())]
            value = make(instance_id).encode()
            self.broker.publish(self.topics.inbox, instance_id.encode(), value, headers)
        answered, self.answered[topic] = self.answered.get(topic, 0), len(commands)
        return len(commands) - answered

    def close(self) -> None:
        self.processor.close()


def run(count: int, shape: str) -> tuple[int, float]:
    """Inputs processed and the CPU seconds they took, through a fresh processor."""
    with tempfile.TemporaryDirectory(prefix="profile-engine-") as state_dir:
        engine = Engine(Path(state_dir))
        orders = plan_orders(count // 3 if shape == "saga" else count, 0.0, 0.0, seed=1)
        for order in orders:
            key = order.event.order_id.encode()
            engine.broker.publish(engine.topics.inbox, key, order.event.encode())
        engine.drain(len(orders))
        inputs = len(orders)
        if shape == "saga":
            paid = engine.reply(
                "payments.commands",
                lambda i: PaymentCompleted(order_id=i, payment_id=f"pay-{i}"),
            )
            engine.drain(paid)
            shipped = engine.reply(
                "shipping.commands",
                lambda i: ShippingLabelCreated(order_id=i, tracking_number=f"trk-{i}"),
            )
            engine.drain(shipped)
            inputs += paid + shipped
        engine.close()
        return inputs, engine.cpu


def _instructions(count: int, shape: str) -> int:
    """Instructions (callgrind's Ir) of this script run once with ``count`` inputs."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--cache-sim=no",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--shape",
        shape,
        "-n",
        str(count),
        "--repeat",
        "1",
        "--quiet",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    assert found is not None, done.stderr[-2000:]
    return int(found.group(1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--inputs", type=int, default=30_000)
    parser.add_argument("--shape", choices=("start", "saga"), default="start")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile, top 30 by own time")
    parser.add_argument("--pyinstrument", action="store_true", help="pyinstrument call tree")
    parser.add_argument("--valgrind", action="store_true", help="instructions per input")
    parser.add_argument("--base", type=int, default=600, help="--valgrind: the inputs subtracted")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.valgrind:
        low, high = (_instructions(n, args.shape) for n in (args.base, args.base + args.inputs))
        per_input = (high - low) / args.inputs
        print(f"{args.shape}: {per_input:,.0f} instructions per input ({high:,} - {low:,})")
        return 0
    if args.profile or args.pyinstrument:
        profiled(lambda: run(args.inputs, args.shape), args.pyinstrument, top=30)
        return 0
    rates = []
    for _ in range(args.repeat):
        inputs, seconds = run(args.inputs, args.shape)
        rates.append(inputs / seconds)
    if not args.quiet:
        shown = ", ".join(f"{r:,.0f}" for r in sorted(rates))
        print(f"{args.shape}: {inputs:,} inputs; best {max(rates):,.0f} inputs/s of CPU ({shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
