"""``sagas console``: the web console of one or more sagas (``sagas.console``).

    sagas console examples.order_fulfillment.saga:OrderFulfillment
    sagas console TARGET --users console-users.txt --port 8600
    sagas console --add-user alice --users console-users.txt

It binds 127.0.0.1 unless ``--host`` says otherwise. Logging in takes the console's token
(``--token``, ``$SAGALOG_CONSOLE_TOKEN``, or one made up and printed at start) and a name, or a
user's password from ``--users``. The web libraries are the ``console`` extra's: they are
imported only when the command runs, so the rest of ``sagas`` works without them.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Annotated

import typer

from sagas.cli.app import Bootstrap, app, fail, saga_definition
from sagas.console.auth import AuthError, Gate, user_line
from stream_processors.engine.store import default_state_dir

Users = Annotated[
    Path | None,
    typer.Option(help="Users who may log in: name:hash lines (add one with --add-user)"),
]


@app.command()
def console(
    targets: Annotated[
        list[str] | None, typer.Argument(help="module:SagaClass of each saga to show")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8600,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="SAGALOG_CONSOLE_TOKEN",
            help="The token to log in with [default: one made up and printed]",
        ),
    ] = None,
    users: Users = None,
    add_user: Annotated[
        str | None,
        typer.Option(help="Add this user to --users (asks for a password) and exit"),
    ] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """A web console: instances by status, search, history, diagram, actions, dead letters."""
    if add_user is not None:
        _add_user(add_user, users)
        return
    if not targets:
        raise typer.BadParameter("name at least one saga (module:SagaClass)")
    try:
        gate = Gate.from_options(None if users else token, users)
    except AuthError as error:
        raise fail(error) from error
    made_up = token is None and users is None  # a token given is not echoed
    _serve(targets, gate, made_up, host, port, bootstrap)


def _add_user(name: str, users: Path | None) -> None:
    if users is None:
        raise typer.BadParameter("--add-user needs --users FILE", param_hint="--users")
    password = typer.prompt(f"password for {name}", hide_input=True, confirmation_prompt=True)
    try:
        line = user_line(name, password)
    except AuthError as error:
        raise fail(error) from error
    with users.open("a") as file:
        file.write(line)
    os.chmod(users, 0o600)
    typer.echo(f"added {name} to {users}")


def _serve(
    targets: list[str], gate: Gate, show_token: bool, host: str, port: int, bootstrap: str | None
) -> None:
    try:
        import uvicorn

        from sagas.console.data import SagaView
        from sagas.console.web import Settings, create_app
    except ImportError as error:
        raise fail(
            RuntimeError(f"{error.name} is missing: pip install 'sagalog[console]'")
        ) from error
    definitions = [saga_definition(target) for target in targets]
    views = [SagaView(d, default_state_dir(d.name), bootstrap) for d in definitions]
    web = create_app(Settings(views=views, gate=gate, bootstrap=bootstrap))
    typer.echo(f"Sagalog console on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(
            f"{host} lets other machines in over plain HTTP: put the console behind TLS",
            err=True,
        )
    if show_token:
        typer.echo(f"log in with any name and the token {gate.token}", err=True)
    # Who did what from the console (and the index feeds' troubles) go to its output.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("sagas.console").setLevel(logging.INFO)
    # uvicorn stops gracefully on SIGTERM, then raises it again to the handler it found: a
    # handler that does nothing lets the command end with 0, like the processor and workers.
    signal.signal(signal.SIGTERM, lambda number, frame: None)
    uvicorn.run(web, host=host, port=port, log_level="warning")
