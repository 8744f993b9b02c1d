"""A read model of the order saga, built by a Faust application from the saga's journal.

    python -m examples.faust_read_model.app worker -l info --web-port 6066
    curl localhost:6066/orders/by-state/      # {"by_state": {...}, "by_day": {"2026-11-30": {...}}}

The agent consumes ``order_fulfillment.journal`` with the ``sagalog`` codec (so each value is a
typed ``JournalEntry``, old schema versions resolved as in the engine) and folds its terminal
entries (``SagaCompleted``, ``SagaCompensated``, ``SagaFailed``, ``SagaParked``) into a table
keyed by instance id: ``"<state>|<day>"`` (UTC day of the entry's ``at_ms``; a later terminal
entry, after a parked saga is resolved, replaces an earlier one). The web view counts the table
by terminal state and by day. Other entries are skipped.

Reading only committed entries: Faust's consumer reads ``read_committed`` only when the app
runs with ``processing_guarantee="exactly_once"`` (``faust.transport.drivers.aiokafka``:
``isolation_level`` follows the consumer's ``in_transaction``), hence that setting here.

Why a table by instance rather than counters: Faust's committed offsets lag its transactions
on a transactionally written topic such as the journal (see ``sagas.faust``), so after a restart
entries already folded are read again. Setting an instance's outcome again is harmless;
incrementing a counter again would count it twice. The table grows with the instances: a
production read model would fold per day and drop old days. The table is partitioned like the
journal (by instance): with one worker the view sees every partition; with several, each serves
its own partitions' counts (add them up).

Environment: ``KAFKA_BOOTSTRAP_SERVERS``; ``FAUST_DATADIR`` (default ``.sagalog/faust-read-model``);
``READ_MODEL_OFFSET_RESET`` (``earliest``, the default, to fold the whole journal; ``latest``);
``READ_MODEL_PREFIX``: count only instances whose id starts with it (tests use one run's);
``READ_MODEL_APP_ID``: the app's id (its consumer group and changelog), by default
``sagalog-orders-read-model``. The table is durable: a restart recovers it from the changelog
and goes on from the committed offsets.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import faust

import sagas.faust  # registers the "sagalog" codec; main runs the app
from stream_processors.core.journal import JournalEntry, Kind
from stream_processors.kafka.config import bootstrap_servers

TERMINAL = {
    Kind.SAGA_COMPLETED.value: "completed",
    Kind.SAGA_COMPENSATED.value: "compensated",
    Kind.SAGA_FAILED.value: "failed",
    Kind.SAGA_PARKED.value: "needs_attention",
}
JOURNAL = "order_fulfillment.journal"
PREFIX = os.environ.get("READ_MODEL_PREFIX", "")

app = faust.App(
    os.environ.get("READ_MODEL_APP_ID", "sagalog-orders-read-model"),
    broker=f"kafka://{bootstrap_servers()}",
    processing_guarantee="exactly_once",  # read_committed; the changelog in Faust's transactions
    store="memory://",
    datadir=os.environ.get("FAUST_DATADIR", ".sagalog/faust-read-model"),
    consumer_auto_offset_reset=os.environ.get("READ_MODEL_OFFSET_RESET", "earliest"),
)

journal = app.topic(JOURNAL, key_type=bytes, key_serializer="raw", value_serializer="sagalog")
outcomes = app.Table("order-outcomes", default=None)


def day_of(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).date().isoformat()


@app.agent(journal)
async def fold(stream: Any) -> None:
    async for event in stream.events():
        entry = event.value
        if not isinstance(entry, JournalEntry) or not entry.instance.startswith(PREFIX):
            continue
        state = TERMINAL.get(entry.kind)
        if state is not None:
            outcomes[entry.instance] = f"{state}|{day_of(entry.at_ms)}"


def totals() -> dict[str, Any]:
    """The outcomes this worker holds, counted by terminal state and by day."""
    by_state: dict[str, int] = {}
    by_day: dict[str, dict[str, int]] = {}
    for value in list(outcomes.values()):
        state, day = str(value).split("|")
        by_state[state] = by_state.get(state, 0) + 1
        by_day.setdefault(day, {})
        by_day[day][state] = by_day[day].get(state, 0) + 1
    return {"by_state": by_state, "by_day": by_day}


@app.page("/orders/by-state/")
async def by_state(web: Any, request: Any) -> Any:
    return web.json(totals())


if __name__ == "__main__":
    sagas.faust.main(app)
