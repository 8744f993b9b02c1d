"""The order saga's payment service as a Faust agent, and a command that places orders.

    python -m examples.faust_services.app worker -l info --web-port 6067
    python -m examples.faust_services.app place-orders --count 500 --seed 7

``worker`` serves ``examples.order_fulfillment.services:payments`` (the same handlers
``sagas worker`` runs) with ``sagas.faust.worker_agent``: replies go to each command's
``sagalog.reply_to`` in the transaction that commits the command's offset, and handled commands
are remembered in a Faust table (see ``sagas.faust``). ``place-orders`` starts sagas with
``sagas.faust.publish``: ``OrderPlaced`` events planned by ``examples.order_fulfillment.scenario``
(with injected payment and shipping failures), keyed and partitioned as ``Publisher`` does.

Environment: ``KAFKA_BOOTSTRAP_SERVERS``; ``FAUST_DATADIR`` (default ``.sagalog/faust``);
``PAYMENTS_APP_ID`` (the app id, so the consumer group and the table's changelog: default
``sagalog-faust-payments``) and ``PAYMENTS_OFFSET_RESET`` (where a new group starts: default
``earliest``).
"""

from __future__ import annotations

import os

import faust
from faust.cli import option

from examples.order_fulfillment.scenario import plan_orders
from examples.order_fulfillment.services import payments
from sagas.faust import main, publish, worker_agent
from stream_processors.kafka.config import bootstrap_servers

app = faust.App(
    os.environ.get("PAYMENTS_APP_ID", "sagalog-faust-payments"),
    broker=f"kafka://{bootstrap_servers()}",
    # Required by worker_agent: the reply commits with the command's offset.
    processing_guarantee="exactly_once",
    store="memory://",
    topic_partitions=8,
    # A crashed worker's partitions move after 10 s rather than Faust's default 60 s.
    broker_session_timeout=10.0,
    datadir=os.environ.get("FAUST_DATADIR", ".sagalog/faust"),
    # Where a new consumer group (a new app id) starts reading.
    consumer_auto_offset_reset=os.environ.get("PAYMENTS_OFFSET_RESET", "earliest"),
)

agents = worker_agent(app, payments)


@app.command(
    option("--count", type=int, default=10, help="How many orders."),
    option("--seed", type=int, default=None, help="The plan's random seed."),
    option("--run-id", type=str, default=None, help="Order ids start with order-<run-id>-."),
    option("--failures", type=float, default=0.1, help="Payment and shipping failure rate."),
)
async def place_orders(
    self: object, count: int, seed: int | None, run_id: str | None, failures: float
) -> None:
    """Place planned orders: each starts an order_fulfillment saga."""
    orders = plan_orders(count, failures, failures, seed=seed, run_id=run_id)
    for order in orders:
        await publish(app, order.event)
    await app.producer.flush()
    print(f"placed {len(orders)} orders")


if __name__ == "__main__":
    main(app)
