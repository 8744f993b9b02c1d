"""A ``sagas`` command that fails ends with one line on stderr and a non-zero exit.

Run in process through ``run_cli``, as ``main`` does: bad arguments (exit 2, naming the command
and its help), a target module that is not there, a saga declared wrongly (the
``DeclarationError`` naming saga and field), and ``--debug``, which keeps the traceback.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagas.cli import app
from sagas.cli.errors import run_cli
from stream_processors.codecs.records import DeclarationError

BAD_SAGA = """
from examples.order_fulfillment.messages import MakePayment, OrderPlaced, OrderState
from examples.order_fulfillment.messages import PaymentCompleted
from sagas import Saga, Step


class Bad(Saga, name="bad saga"):
    start = OrderPlaced
    state = OrderState
    begin = staticmethod(lambda event: None)
    pay = Step(MakePayment, success=PaymentCompleted)
"""


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def bad_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"bad_saga_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(BAD_SAGA)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_a_missing_argument_names_the_command_and_its_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_cli(app, ["run"]) == 2
    line = _error_line(capsys)
    assert "sagas run" in line and "Missing argument" in line and "--help" in line


def test_a_target_module_that_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(app, ["topics", "create", "no_such_module_here:Saga"]) == 2
    line = _error_line(capsys)
    assert "no module 'no_such_module_here'" in line and "PYTHONPATH" in line


def test_a_target_that_is_not_in_its_module(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(app, ["run", "examples.order_fulfillment.saga:Nope"]) == 2
    assert "has no 'Nope'" in _error_line(capsys)


def test_a_declaration_error_is_one_line_naming_the_saga(
    bad_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(app, ["run", f"{bad_module}:Bad"]) == 1
    line = _error_line(capsys)
    assert "saga 'bad saga'" in line and "valid Kafka topic name" in line


def test_debug_keeps_the_traceback(bad_module: str) -> None:
    with pytest.raises(DeclarationError):
        run_cli(app, ["run", f"{bad_module}:Bad", "--debug"])


def test_help_still_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(app, ["--help"]) == 0
    assert "retry" in capsys.readouterr().out


@pytest.mark.parametrize(
    "command",
    [
        ["topics", "create", "examples.order_fulfillment.saga:OrderFulfillment"],
        ["history", "examples.order_fulfillment.saga:OrderFulfillment", "o-1"],
        ["dlq", "list", "payments.commands.dlq"],
    ],
)
def test_a_broker_that_cannot_be_reached_is_one_line_within_ten_seconds(
    command: list[str],
) -> None:
    """Nothing listens on a port just freed: no broker is needed to see how a command ends.

    The promise is a clear answer within 10 s of the command starting its work: measured as
    the command's time less that of ``sagas --help`` in the same moment (starting Python and
    importing the library, which a loaded machine can stretch to seconds)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cwd = Path(__file__).resolve().parents[2]
    began = time.monotonic()
    help_run = subprocess.run(
        [sys.executable, "-m", "sagas", "--help"], capture_output=True, cwd=cwd
    )
    startup = time.monotonic() - began
    assert help_run.returncode == 0
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sagas", *command, "--bootstrap", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,  # a hang, not a slow start
        cwd=cwd,
    )
    assert time.monotonic() - began - startup < 10
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and f"127.0.0.1:{port}" in lines[0]
