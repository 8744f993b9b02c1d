"""faust-streaming on the same job: an agent folding the order saga into a RocksDB table.

The agent consumes ``orders.events`` (what the publisher writes, as for Sagalog) and its own
replies topic, co-partitioned by order id. For each input it reads the order's state from a
table backed by RocksDB (faust's ``rocksdb://`` store, driver rocksdict), decides the next step,
sends the command to the same command topics with Sagalog's headers, so that the very same
``sagas worker`` processes serve it and reply to the agent's topic, writes the new state back,
and on a terminal state writes an outcome record. Processing guarantee: exactly once (faust's
transactional producer per partition), as Sagalog's.

``python -m bench.peers.faust_saga worker -l warning`` runs the app; ``measure`` drives it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust

from bench.common import BASE, admin, delete_topics, fresh_saga_topics, ready_publisher
from bench.end_to_end import FAILURES, SEED, fixed_rate_orders, summary
from bench.peers.shared import read_outcomes
from examples.order_fulfillment.measure import WORKERS, Results, now_ms, publish
from examples.order_fulfillment.messages import (
    CreateShippingLabel,
    MakePayment,
    OrderPlaced,
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    RefundPayment,
    ShippingFailed,
    ShippingLabelCreated,
)
from examples.order_fulfillment.scenario import plan_orders
from sagas.local import LocalProcess, journal_end
from stream_processors.codecs.records import Command, Event, decode_record
from stream_processors.engine.routing import command_headers
from stream_processors.kafka.config import bootstrap_servers
from stream_processors.kafka.topics import ensure_plain_topics

NAME = "faust_saga"
REPLIES = f"{NAME}.replies"
OUTCOMES = f"{NAME}.outcomes"
PARTITIONS = 8
GUARANTEE = os.environ.get("BENCH_FAUST_GUARANTEE", "exactly_once")

app = faust.App(
    NAME,
    broker=f"kafka://{bootstrap_servers()}",
    store="rocksdb://",
    processing_guarantee=GUARANTEE,
    topic_partitions=PARTITIONS,
    datadir=str((BASE / "faust").resolve()),
    web_enabled=False,
)
raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes}
raw |= {"key_serializer": "raw", "value_serializer": "raw"}
inputs = app.topic("orders.events", REPLIES, partitions=PARTITIONS, **raw)
outcomes = app.topic(OUTCOMES, partitions=PARTITIONS, **raw)
orders = app.Table("orders", partitions=PARTITIONS, options={"driver": "rocksdict"})


async def send(command: Command, order_id: str, step: str) -> None:
    topic = app.topic(command.__topic__ or "", **raw)
    command_id = f"{NAME}:{order_id}:{step}:1"
    headers = [
        (name, value if isinstance(value, bytes) else str(value).encode())
        for name, value in command_headers(command_id, REPLIES, order_id, NAME)
    ]
    await topic.send(key=order_id.encode(), value=command.encode(), headers=headers)


async def finish(order_id: str, state: dict[str, Any], outcome: str) -> None:
    state["status"] = outcome
    datum = {"order_id": order_id, "state": outcome, "at_ms": now_ms()}
    await outcomes.send(key=order_id.encode(), value=json.dumps(datum).encode())


@app.agent(inputs)
async def saga(stream: Any) -> None:
    async for key, value in stream.items():
        record = decode_record(value)
        order_id = key.decode()
        state: dict[str, Any] | None = orders.get(order_id)
        if state is None:
            if not isinstance(record, OrderPlaced):
                continue  # a reply for an order this table never saw
            state = {
                "order_id": order_id,
                "customer_id": record.customer_id,
                "amount_cents": record.amount_cents,
                "card_token": record.card_token,
                "postcode": record.postcode,
                "status": "paying",
            }
            fields = ("order_id", "customer_id", "amount_cents", "card_token")
            await send(MakePayment(**{f: state[f] for f in fields}), order_id, "payment")
        elif isinstance(record, PaymentCompleted) and state["status"] == "paying":
            state["payment_id"], state["status"] = record.payment_id, "shipping"
            await send(CreateShippingLabel(order_id, state["postcode"]), order_id, "shipping")
        elif isinstance(record, PaymentFailed) and state["status"] == "paying":
            await finish(order_id, state, "failed")
        elif isinstance(record, ShippingLabelCreated) and state["status"] == "shipping":
            await finish(order_id, state, "completed")
        elif isinstance(record, ShippingFailed) and state["status"] == "shipping":
            state["status"] = "refunding"
            refund = RefundPayment(order_id, state["payment_id"], state["amount_cents"])
            await send(refund, order_id, "refund")
        elif isinstance(record, PaymentRefunded) and state["status"] == "refunding":
            await finish(order_id, state, "compensated")
        elif isinstance(record, Event):
            continue  # duplicate or stale
        orders[order_id] = state


def _start(log_dir: Path) -> dict[str, LocalProcess | subprocess.Popen[bytes]]:
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "faust.log").open("wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "bench.peers.faust_saga", "worker", "-l", "warn"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )
    processes: dict[str, LocalProcess | subprocess.Popen[bytes]] = {"faust": agent}
    for name in WORKERS:
        target = f"examples.order_fulfillment.services:{name}"
        # The peer's replies topic is not a saga inbox: allow it explicitly, as a team would.
        args = ["worker", target, "--reply-to", REPLIES]
        processes[name] = LocalProcess(args, log_dir / f"{name}.log").start()
    return processes


def _stop(processes: dict[str, LocalProcess | subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        if isinstance(process, LocalProcess):
            process.stop()
        elif process.poll() is None:
            process.terminate()
            try:
                # faust-streaming's worker often hangs in its shutdown (committing offsets
                # outside a transaction: IllegalOperation); its figures are in by now.
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()


def run(planned: list[Any], rate: float | None, timeout: float) -> Results:
    start = journal_end(OUTCOMES)
    published = publish(planned, rate=rate, publisher=ready_publisher())
    wanted = {order.event.order_id for order in planned}
    return Results(planned, published, read_outcomes(OUTCOMES, start, wanted, timeout))


def warm_up(
    agent: LocalProcess | subprocess.Popen[bytes], planned: list[Any], timeout: float
) -> None:
    """Publish one order and wait for its outcome; fail at once if the faust app exits."""
    start = journal_end(OUTCOMES)
    publish(planned)
    wanted = {order.event.order_id for order in planned}
    deadline = time.monotonic() + timeout
    while not read_outcomes(OUTCOMES, start, wanted, 2):
        if isinstance(agent, subprocess.Popen) and agent.poll() is not None:
            raise RuntimeError(f"the faust app exited with status {agent.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the faust warm-up saga did not finish in {timeout}s")


def measure(
    orders_count: int,
    latency_seconds: float,
    fixed_rates: Sequence[float] = (),
    fixed_seconds: float = 0,
) -> dict[str, Any]:
    """Saturation, quarter-load and fixed-rate latency of the faust saga, like
    ``bench.end_to_end``."""
    fresh_saga_topics()
    delete_topics([REPLIES, OUTCOMES, *_faust_internal_topics()])
    ensure_plain_topics([REPLIES, OUTCOMES], partitions=PARTITIONS)
    shutil.rmtree(BASE / "faust", ignore_errors=True)  # the table's RocksDB from a past run
    processes = _start(BASE / "logs" / "faust")
    run_id = uuid.uuid4().hex[:8]
    try:
        began = time.monotonic()
        warm_up(processes["faust"], plan_orders(1, 0.0, 0.0, SEED, f"{run_id}-warmup"), 90)
        ready = time.monotonic() - began
        burst = plan_orders(orders_count, *FAILURES, seed=SEED, run_id=f"{run_id}-sat")
        saturated = summary(run(burst, None, 600))
        rate = max(1.0, saturated["sagas_per_second"] / 4)
        paced = plan_orders(max(10, round(rate * latency_seconds)), *FAILURES, SEED + 1, run_id)
        quarter = summary(run(paced, rate, 300)) | {"offered_per_second": round(rate, 1)}
        fixed = {
            f"{r:g}": summary(run(fixed_rate_orders(r, fixed_seconds, run_id), r, 300))
            | {"offered_per_second": r}
            for r in fixed_rates
        }
    finally:
        _stop(processes)
    return {
        "guarantee": GUARANTEE,
        "store": "rocksdb (rocksdict driver)",
        "version": faust.__version__,
        "seconds_to_first_saga": round(ready, 1),
        "saturation": saturated,
        "quarter_load": quarter,
        "fixed_rates": fixed,
    }


def _faust_internal_topics() -> list[str]:
    """The app's changelog and repartition topics from an earlier run (its table's state)."""
    return [t for t in admin().list_topics(timeout=15).topics if t.startswith(f"{NAME}-")]


if __name__ == "__main__":
    app.main()
