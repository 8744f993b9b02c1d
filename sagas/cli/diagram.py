"""``sagas diagram``: a saga's Mermaid state diagram, and where one instance is in it.

    sagas diagram examples.order_fulfillment.saga:OrderFulfillment
    sagas diagram examples.order_fulfillment.saga:OrderFulfillment --instance order-17 [--at 4]

The drawing is ``stream_processors.tools.diagram``; the instance is folded from its journal as
``sagas state`` folds it. This module only registers the command on ``sagas.cli.app``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from sagas.cli.app import Bootstrap, SagaTarget, app, saga_definition
from sagas.cli.history import At, StateDir, folded_instance
from stream_processors.tools.diagram import mermaid


@app.command()
def diagram(
    target: SagaTarget,
    instance: Annotated[
        str | None,
        typer.Option(help="Highlight where this instance is (read from the saga's journal)"),
    ] = None,
    at: At = None,
    state_dir: StateDir = None,
    bootstrap: Bootstrap = None,
) -> None:
    """A Mermaid stateDiagram-v2 of the saga; with --instance, coloured by that instance."""
    definition = saga_definition(target)
    if instance is None and at is not None:
        raise typer.BadParameter("--at needs --instance", param_hint="--at")
    folded = None
    if instance is not None:
        folded = folded_instance(definition, instance, at, state_dir, bootstrap)
    typer.echo(mermaid(definition, folded), nl=False)
