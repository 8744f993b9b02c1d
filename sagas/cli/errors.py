"""How a ``sagas`` command ends when something is wrong: one line on stderr, a non-zero exit.

A person running ``sagas`` wants to know what went wrong, where, and what to do, not to read a
traceback through the CLI framework and the Kafka client. ``run_cli`` runs the command line and
turns any error into one line: a bad argument (exit 2, naming the command and its ``--help``),
a saga or record declared wrongly (naming the saga, step and field, as ``DeclarationError``
does), a broker that cannot be reached or a topic that does not exist, and anything else
(``TypeName: message``). ``--debug`` anywhere on the line, or ``SAGALOG_DEBUG=1``, keeps the
full traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import typer
from confluent_kafka import KafkaError, KafkaException
from typer._click.exceptions import ClickException, UsageError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "SAGALOG_DEBUG"
#: Exit status of a command given bad arguments (as the CLI framework uses).
USAGE_STATUS = 2


#: Errors whose messages say what and where already: printed as they are.
_SELF_EXPLAINING = frozenset(
    {
        "DeclarationError",
        "KafkaConfigError",
        "KafkaUnavailable",
        "MissingTopic",
        "SigningKeyError",
        "TopicMismatch",
    }
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def describe(error: BaseException) -> str:
    """What went wrong, in one line (without the leading ``error:``)."""
    if isinstance(error, UsageError):
        where = error.ctx.command_path if error.ctx is not None else "sagas"
        return f"{where}: {_one_line(error.format_message())} (see '{where} --help')"
    if isinstance(error, ClickException):
        return _one_line(error.format_message())
    if isinstance(error, KafkaException):
        kafka_error = error.args[0] if error.args else None
        text = kafka_error.str() if isinstance(kafka_error, KafkaError) else str(error)
        return f"Kafka: {_one_line(text)}"
    if isinstance(error, ModuleNotFoundError):
        return (
            f"cannot import {error.name!r}: run sagas from your project's folder, or add it to "
            "PYTHONPATH"
        )
    message = _one_line(str(error))
    if type(error).__name__ in _SELF_EXPLAINING:
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _debugging(args: Sequence[str]) -> bool:
    return DEBUG_FLAG in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_cli(app: Callable[..., Any], argv: Sequence[str] | None = None) -> int:
    """Run ``app`` on ``argv`` (default: this process's) and return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debugging(args)
    args = [arg for arg in args if arg != DEBUG_FLAG]
    try:
        status = app(args=args, prog_name="sagas", standalone_mode=False)
    except typer.Abort:
        typer.secho("error: aborted", err=True, fg=typer.colors.RED)
        return 1
    except Exception as error:
        if debug:
            raise
        usage = isinstance(error, UsageError)
        explained = usage or type(error).__name__ in _SELF_EXPLAINING
        hint = "" if explained else f" (run with {DEBUG_FLAG} for the traceback)"
        typer.secho(f"error: {describe(error)}{hint}", err=True, fg=typer.colors.RED)
        return USAGE_STATUS if usage else 1
    return status if isinstance(status, int) else 0
