"""The order saga as a Temporal workflow (kept apart: Temporal re-imports it in its sandbox).

Pay on the ``payments`` task queue; a failed payment fails the saga. Then ship on the
``shipping`` queue; a failed shipment refunds the payment and the saga ends compensated.
The activities (``bench.peers.temporal_saga``) run the example services' own handlers.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow

TIMEOUT = timedelta(seconds=60)


@workflow.defn(name="OrderFulfillment")
class OrderWorkflow:
    @workflow.run
    async def run(self, order: dict[str, Any]) -> str:
        key = workflow.info().workflow_id
        paid = await workflow.execute_activity(
            "pay",
            args=[order, f"{key}:payment:1"],
            task_queue="payments",
            start_to_close_timeout=TIMEOUT,
        )
        if not paid["ok"]:
            return "failed"
        shipped = await workflow.execute_activity(
            "label",
            args=[order, f"{key}:shipping:1"],
            task_queue="shipping",
            start_to_close_timeout=TIMEOUT,
        )
        if shipped["ok"]:
            return "completed"
        await workflow.execute_activity(
            "refund",
            args=[order | {"payment_id": paid["payment_id"]}, f"{key}:refund:1"],
            task_queue="payments",
            start_to_close_timeout=TIMEOUT,
        )
        return "compensated"
