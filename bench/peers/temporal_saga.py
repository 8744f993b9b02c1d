"""Temporal on the same job: the order saga as a workflow, the services as activity workers.

Three worker processes, as for Sagalog: the workflow worker (the saga) and one activity worker
per service (task queues ``payments`` and ``shipping``), whose activities call the example
services' handlers (``examples.order_fulfillment.services``) with the same idempotency keys.
The server is the Temporal CLI's dev server (``temporal server start-dev``, SQLite in memory),
built from source with ``go install github.com/temporalio/cli/cmd/temporal@v1.5.1``; it is
found on PATH, in ``$TEMPORAL_BIN`` or in ``~/go/bin``. Kafka plays no part in Temporal's run.

    python -m bench.peers.temporal_saga worker ADDRESS workflows|payments|shipping
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from bench.common import BASE
from bench.end_to_end import FAILURES, SEED, fixed_rate_orders, summary
from bench.peers.temporal_workflow import OrderWorkflow
from examples.order_fulfillment import services
from examples.order_fulfillment.measure import Results, now_ms
from examples.order_fulfillment.messages import CreateShippingLabel, MakePayment, RefundPayment
from examples.order_fulfillment.scenario import PlannedOrder, plan_orders
from sagas.local import Outcome, free_port
from sagas.worker import BusinessError, CommandContext

NAMESPACE = "default"
#: Workflows started and awaited at once: far more than Temporal completes per second here, so
#: the server stays saturated, and latency counts from the start, not from a client-side queue.
IN_FLIGHT = 500


def _context(key: str, order: dict[str, Any]) -> CommandContext:
    # Temporal retries an activity under one key: it stands for both the step and the attempt.
    return CommandContext(
        idempotency_key=key,
        command_id=key,
        attempt=1,
        instance_id=order["order_id"],
        saga="temporal",
        topic="",
        partition=0,
        offset=0,
    )


@activity.defn(name="pay")
def pay(order: dict[str, Any], key: str) -> dict[str, Any]:
    fields = ("order_id", "customer_id", "amount_cents", "card_token")
    try:
        reply = services.pay(MakePayment(**{f: order[f] for f in fields}), _context(key, order))
    except BusinessError:
        return {"ok": False}
    return {"ok": True, "payment_id": reply.payment_id}


@activity.defn(name="label")
def label(order: dict[str, Any], key: str) -> dict[str, Any]:
    command = CreateShippingLabel(order["order_id"], order["postcode"])
    try:
        services.label(command, _context(key, order))
    except BusinessError:
        return {"ok": False}
    return {"ok": True}


@activity.defn(name="refund")
def refund(order: dict[str, Any], key: str) -> dict[str, Any]:
    command = RefundPayment(order["order_id"], order["payment_id"], order["amount_cents"])
    services.refund(command, _context(key, order))
    return {"ok": True}


async def serve(address: str, role: str) -> None:
    """Run one worker process: ``workflows``, or the ``payments`` or ``shipping`` service."""
    client = await Client.connect(address, namespace=NAMESPACE)
    if role == "workflows":
        worker = Worker(client, task_queue="orders", workflows=[OrderWorkflow])
    else:
        from concurrent.futures import ThreadPoolExecutor

        activities = [pay, refund] if role == "payments" else [label]
        worker = Worker(
            client,
            task_queue=role,
            activities=activities,
            activity_executor=ThreadPoolExecutor(32),
            max_concurrent_activities=32,
        )
    await worker.run()


def temporal_binary() -> str | None:
    candidates = [os.environ.get("TEMPORAL_BIN"), shutil.which("temporal")]
    candidates.append(str(Path.home() / "go" / "bin" / "temporal"))
    return next((c for c in candidates if c and Path(c).is_file()), None)


def _module_version(binary: str) -> str:
    """The Go module version a ``go install``ed binary was built from (its --version says DEV)."""
    if shutil.which("go") is None:
        return "CLI (version unknown)"
    built = subprocess.run(["go", "version", "-m", binary], capture_output=True, text=True)
    for line in built.stdout.splitlines():
        parts = line.split()
        if parts[:2] == ["mod", "github.com/temporalio/cli"] and len(parts) > 2:
            return f"CLI {parts[2]}"
    return "CLI (version unknown)"


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the Temporal dev server did not listen on {port} within {timeout}s")


def _order(planned: PlannedOrder) -> dict[str, Any]:
    event = planned.event
    return {f: getattr(event, f) for f in event.__fields__}


async def _run(client: Client, planned: list[PlannedOrder], rate: float | None) -> Results:
    published: dict[str, int] = {}
    outcomes: dict[str, Outcome] = {}

    in_flight = asyncio.Semaphore(IN_FLIGHT)

    async def one(order: PlannedOrder) -> None:
        order_id = order.event.order_id
        async with in_flight:
            published[order_id] = now_ms()
            state = await client.execute_workflow(
                "OrderFulfillment", _order(order), id=order_id, task_queue="orders"
            )
        outcomes[order_id] = Outcome(order_id, state, now_ms())

    began = time.monotonic()
    tasks = []
    for number, order in enumerate(planned):
        if rate is not None and (ahead := began + number / rate - time.monotonic()) > 0:
            await asyncio.sleep(ahead)
        tasks.append(asyncio.create_task(one(order)))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"temporal: {len(errors)} workflows failed, e.g. {errors[0]!r}", file=sys.stderr)
    return Results(planned, published, outcomes)


def measure(
    workflows: int,
    latency_seconds: float,
    fixed_rates: Sequence[float] = (),
    fixed_seconds: float = 0,
) -> dict[str, Any]:
    binary = temporal_binary()
    if binary is None:
        return {"skipped": "no temporal binary (go install .../temporal@v1.5.1)"}
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    port = free_port()
    logs = BASE / "logs" / "temporal"
    logs.mkdir(parents=True, exist_ok=True)
    server_command = [binary, "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port)]
    server_command += ["--ui-port", str(free_port()), "--headless", "--log-level", "error"]
    server_command += ["--metrics-port", str(free_port())]
    # Each awaited workflow holds a history long poll; the dev server caps those per namespace
    # (1,200) and refuses the rest, which would fail workflows of the client, not of Temporal.
    server_command += ["--dynamic-config-value", "frontend.namespaceCount=100000"]
    processes: list[subprocess.Popen[bytes]] = []
    address = f"127.0.0.1:{port}"
    try:
        with (logs / "server.log").open("wb") as log:
            processes.append(subprocess.Popen(server_command, stdout=log, stderr=log))
        _wait_port(port, 60)
        for role in ("workflows", "payments", "shipping"):
            with (logs / f"{role}.log").open("wb") as log:
                command = [sys.executable, "-m", "bench.peers.temporal_saga", address, role]
                processes.append(subprocess.Popen(command, stdout=log, stderr=log))
        measured = _measure(address, workflows, latency_seconds, fixed_rates, fixed_seconds)
        return asyncio.run(measured) | {
            "version": f"{_module_version(binary)}; {version.strip()}",
            "server": " ".join(server_command[1:]),
        }
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


async def _measure(
    address: str,
    workflows: int,
    latency_seconds: float,
    fixed_rates: Sequence[float],
    fixed_seconds: float,
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        try:
            client = await Client.connect(address, namespace=NAMESPACE)
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    run_id = uuid.uuid4().hex[:8]
    began = time.monotonic()
    warm = await _run(client, plan_orders(1, 0.0, 0.0, SEED, f"t{run_id}-warmup"), None)
    if not warm.ok:
        raise RuntimeError("the Temporal warm-up workflow did not complete")
    ready = time.monotonic() - began
    burst = plan_orders(workflows, *FAILURES, seed=SEED, run_id=f"t{run_id}-sat")
    saturated = summary(await _run(client, burst, None))
    rate = max(1.0, saturated["sagas_per_second"] / 4)
    paced = plan_orders(max(10, round(rate * latency_seconds)), *FAILURES, SEED + 1, f"t{run_id}")
    quarter = summary(await _run(client, paced, rate)) | {"offered_per_second": round(rate, 1)}
    fixed = {}
    for fixed_rate in fixed_rates:
        orders = fixed_rate_orders(fixed_rate, fixed_seconds, f"t{run_id}")
        measured = summary(await _run(client, orders, fixed_rate))
        fixed[f"{fixed_rate:g}"] = measured | {"offered_per_second": fixed_rate}
    return {
        "seconds_to_first_saga": round(ready, 1),
        "saturation": saturated,
        "quarter_load": quarter,
        "fixed_rates": fixed,
    }


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
