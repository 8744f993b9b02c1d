"""The workers of ``definitions/all_states.yaml``: one process serving its three services.

``charge`` answers as the execution's ``mode`` says: ``ok`` succeeds, ``busy_once`` fails with
``Payments.Busy`` on its first attempt (retried), ``busy_always`` on every attempt (the retries
run out and nothing catches it), ``declined`` fails with ``Payments.Declined`` (caught: the
``Declined`` Fail state). ``label`` and ``reserve`` always succeed.
"""

from __future__ import annotations

from typing import Any

from sagas import CommandContext, TaskError, Worker

worker = Worker("all-states", service="AllStatesPayments")


@worker.action("charge")
def charge(input: Any, context: CommandContext) -> Any:
    mode = input["mode"]
    if mode == "declined":
        raise TaskError("Payments.Declined", f"card declined for {input['amount']}")
    if mode == "busy_always" or (mode == "busy_once" and context.attempt == 1):
        raise TaskError("Payments.Busy", f"attempt {context.attempt}: busy")
    return {"charge_id": f"ch-{context.idempotency_key}", "amount": input["amount"]}


@worker.action("label", service="AllStatesShipping")
def label(input: Any, context: CommandContext) -> Any:
    return {"label": f"lb-{input['execution']}"}


@worker.action("reserve", service="AllStatesStock")
def reserve(input: Any, context: CommandContext) -> Any:
    return {"reserved": input["sku"], "index": input["index"]}
