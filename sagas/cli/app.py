"""The ``sagas`` command line: run processors and workers, manage topics, operate instances.

    sagas run examples.order_fulfillment.saga:OrderFulfillment
    sagas worker examples.order_fulfillment.services:payments
    sagas topics create examples.order_fulfillment.saga:OrderFulfillment --partitions 8
    sagas retry examples.order_fulfillment.saga:OrderFulfillment order-17 --reason "card fixed"
    sagas dlq list payments.commands.dlq
    sagas dlq redrive payments.commands.dlq --offset 3:141
    sagas history examples.order_fulfillment.saga:OrderFulfillment order-17
    sagas schemas register shipping-v2.avsc --topic shipping.events

Targets are ``module:attribute``: a ``Saga`` subclass for ``run``, ``topics`` and the operator
commands, a ``Worker`` for ``worker``. Every command reads ``KAFKA_BOOTSTRAP_SERVERS`` unless
``--bootstrap`` is given. Client settings for a secured cluster (SASL, TLS) come from
``sagas --kafka-config FILE <command>`` or ``SAGALOG_KAFKA_CONFIG`` and ``SAGALOG_KAFKA_*``
variables (stream_processors.kafka.config).

This module owns the ``app`` every command registers on, the options and arguments they share,
and loading targets; the commands live in ``run``, ``operate``, ``history`` and ``schemas``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from sagas.saga import Saga
from stream_processors.codecs.records import DeclarationError
from stream_processors.core.model import SagaDefinition
from stream_processors.declarative.definition import is_definition_file, load_definition
from stream_processors.kafka import config as kafka_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
topics_app = typer.Typer(no_args_is_help=True, help="Manage a saga's topics.")
app.add_typer(topics_app, name="topics")
dlq_app = typer.Typer(
    no_args_is_help=True, help="Show dead-lettered records and send chosen ones back."
)
app.add_typer(dlq_app, name="dlq")

Bootstrap = Annotated[
    str | None, typer.Option(help="Kafka bootstrap servers [default: $KAFKA_BOOTSTRAP_SERVERS]")
]
Partitions = Annotated[int, typer.Option(help="Partitions of inbox, journal and snapshots")]
LogLevel = Annotated[str, typer.Option(help="Logging level")]
SagaTarget = Annotated[
    str, typer.Argument(help="module:SagaClass, or a definition file (.json, .yaml)")
]
InstanceId = Annotated[str, typer.Argument(help="The instance id (the saga's key, e.g. order id)")]
By = Annotated[
    str | None,
    typer.Option(help="Who is acting, journaled (default: your OS user name)"),
]
Reason = Annotated[str, typer.Option(help="Why, journaled with the action")]
DlqSource = Annotated[
    str,
    typer.Argument(
        help="A dead-letter topic (e.g. payments.commands.dlq), module:SagaClass, or a definition"
    ),
]


def load_target(target: str) -> Any:
    """Import ``module:attribute``; exit with a clear message when it is not there."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise typer.BadParameter(f"{target!r} is not module:attribute")
    module = load_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise typer.BadParameter(f"module {module_name} has no {attribute!r}") from None


def load_module(module_name: str) -> ModuleType:
    """Import ``module_name`` from the current folder or the path; exit clearly when absent."""
    if "" not in sys.path:
        sys.path.insert(0, "")  # targets are usually in the current project, not installed
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not module_name.startswith(error.name):
            raise  # the module is there; something it imports is not
        raise typer.BadParameter(
            f"no module {module_name!r} here: run sagas from your project's folder, "
            "or add it to PYTHONPATH"
        ) from None
    return module


def saga_class(target: str) -> type[Saga]:
    saga = load_target(target)
    if not (isinstance(saga, type) and issubclass(saga, Saga)):
        raise typer.BadParameter(f"{target} is not a Saga class")
    return saga


def saga_definition(target: str) -> SagaDefinition:
    """The definition a command runs: a declarative file's (``.json``, ``.yaml``), compiled,
    or a Saga class's (``module:SagaClass``)."""
    if is_definition_file(target):
        if not Path(target).is_file():
            raise typer.BadParameter(f"no definition file {target!r}")
        try:
            return load_definition(target)
        except DeclarationError as error:
            raise typer.BadParameter(str(error)) from None
    return saga_class(target).definition


@app.callback()
def _settings(
    kafka_config_file: Annotated[
        Path | None,
        typer.Option(
            "--kafka-config",
            help="librdkafka settings (key=value lines) for every command's Kafka clients "
            "[default: $SAGALOG_KAFKA_CONFIG]",
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="On an error, show the full traceback (anywhere)")
    ] = False,
) -> None:
    """Settings that apply to every command."""
    # A command reports a failure in one line of its own; the client's lines would bury it.
    # ``run`` and ``worker`` show them again: there they tell an operator what is going on.
    kafka_config.CLIENT_LOG.setLevel(logging.DEBUG if debug else logging.CRITICAL)
    if kafka_config_file is not None:
        try:
            kafka_config.use_config_file(kafka_config_file)
        except kafka_config.KafkaConfigError as error:
            raise typer.BadParameter(str(error), param_hint="--kafka-config") from None


def configure_logging(level: str) -> None:
    """Logging of the long-running commands (``run``, ``worker``), Kafka clients' lines too."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    kafka_config.CLIENT_LOG.setLevel(logging.NOTSET)


def fail(error: Exception) -> typer.Exit:
    typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


def format_time(timestamp: int | None) -> str:
    if timestamp is None:
        return "?"
    return datetime.fromtimestamp(timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
