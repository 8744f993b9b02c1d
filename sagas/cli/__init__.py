"""The ``sagas`` command line. Each command group lives in a module of its own and registers
on the one ``app`` (``sagas.cli.app``) when imported; this package imports them all.

    sagas run examples.order_fulfillment.saga:OrderFulfillment
    sagas worker examples.order_fulfillment.services:payments
    sagas retry examples.order_fulfillment.saga:OrderFulfillment order-17 --reason "card fixed"
    sagas dlq list payments.commands.dlq
    sagas history examples.order_fulfillment.saga:OrderFulfillment order-17
    sagas diagram examples.order_fulfillment.saga:OrderFulfillment [--instance order-17]
    sagas list examples.order_fulfillment.saga:OrderFulfillment --status failed [--json|--counts]
    sagas cancel examples.order_fulfillment.saga:OrderFulfillment --where status=running --dry-run
    sagas schemas register shipping-v2.avsc --topic shipping.events
    sagas validate examples/user_onboarding/onboarding.json
    sagas start examples/user_onboarding/onboarding.json --input '{"email": "a@b.c"}' --wait 30
    sagas console examples.order_fulfillment.saga:OrderFulfillment
"""

from __future__ import annotations

import sys

from sagas.cli import console, definitions, diagram, history, listing, operate, run, schemas
from sagas.cli.app import app
from sagas.cli.errors import run_cli


def main() -> None:
    sys.exit(run_cli(app))


__all__ = [
    "app",
    "console",
    "definitions",
    "diagram",
    "history",
    "listing",
    "main",
    "operate",
    "run",
    "schemas",
]
