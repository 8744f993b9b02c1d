"""The wheel as a user gets it: built, installed into a clean virtualenv, run from elsewhere.

The test builds ``sagalog-<version>-py3-none-any.whl`` from this checkout, installs it (with its
dependencies, from the package index) into a fresh virtualenv outside the checkout, and from a
scratch folder that is not the repository: imports the journal (the engine's own schemas must
ship inside the package), checks the ``py.typed`` markers, and runs a one-step saga declared
there, with its schemas in the folder's own ``schemas/``, against the real broker through the
installed ``sagas`` command. Nothing from the checkout is on the path: a file the wheel lacks
fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import KafkaCluster

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.kafka

GREETER = '''
"""A one-step saga declared outside the repository: greet, then complete."""

from sagas import Command, Event, Saga, State, Step, Worker
from sagas.worker import CommandContext

NS = "scratch.greetings"
RUN = "{run}"


class Arrived(Event, schema=f"{{NS}}.Arrived", topic=f"arrivals.{{RUN}}", key="guest"):
    guest: str


class Greet(Command, schema=f"{{NS}}.Greet", topic=f"greetings.{{RUN}}"):
    guest: str


class Greeted(Event, schema=f"{{NS}}.Greeted"):
    guest: str
    words: str


class Visit(State, schema=f"{{NS}}.Visit"):
    guest: str


class Welcome(Saga, name=f"welcome_{{RUN}}"):
    start = Arrived
    state = Visit

    @staticmethod
    def begin(event: Arrived) -> Visit:
        return Visit(guest=event.guest)

    greet = Step(Greet, success=Greeted)


greeters = Worker(f"greeters-{{RUN}}")


@greeters.handles(Greet)
def greet(command: Greet, context: CommandContext) -> Greeted:
    return Greeted(guest=command.guest, words=f"welcome, {{command.guest}}")
'''

CHECK = '''
"""Publish arrivals and wait until each instance's journal says how it ended."""

import json
import sys

from sagas import Publisher
from sagas.local import journal_end, journal_outcomes_from
from greeter import Arrived, Welcome

guests = [f"guest-{i}" for i in range(int(sys.argv[1]))]
journal = f"{Welcome.definition.name}.journal"
start = journal_end(journal)
with Publisher() as publisher:
    for guest in guests:
        publisher.publish(Arrived(guest=guest))
outcomes = journal_outcomes_from(journal, start, guests, timeout=90)
print(json.dumps({guest: outcome.state for guest, outcome in outcomes.items()}))
'''


def _schema(name: str, fields: dict[str, str]) -> str:
    return json.dumps(
        {
            "type": "record",
            "name": name,
            "namespace": "scratch.greetings",
            "fields": [{"name": field, "type": kind} for field, kind in fields.items()],
        }
    )


def _clean_env(bootstrap: str, home: Path) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, no virtualenv of the checkout."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "SAGALOG_SCHEMA_PATH"}
    }
    return env | {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "SAGALOG_STATE_DIR": str(home / "state")}


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with only the built wheel (and its dependencies) installed."""
    home = tmp_path_factory.mktemp("wheel")
    env = _clean_env("unused", home)
    dist = home / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)], home, env)
    wheels = list(dist.glob("sagalog-*-py3-none-any.whl"))
    assert len(wheels) == 1, wheels
    venv = home / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], home, env)
    install = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    _run([*install, "install", "--quiet", str(wheels[0])], home, env)
    return venv


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A folder that is not the repository, with a saga, its worker and its schemas."""
    app = tmp_path / "app"
    (app / "schemas").mkdir(parents=True)
    run = uuid.uuid4().hex[:8]
    (app / "greeter.py").write_text(textwrap.dedent(GREETER.format(run=run)))
    (app / "check.py").write_text(CHECK)
    for name, fields in {
        "Arrived": {"guest": "string"},
        "Greet": {"guest": "string"},
        "Greeted": {"guest": "string", "words": "string"},
        "Visit": {"guest": "string"},
    }.items():
        (app / "schemas" / f"{name}.avsc").write_text(_schema(name, fields))
    yield app


def test_the_installed_wheel_is_a_complete_library(installed: Path, scratch: Path) -> None:
    env = _clean_env("unused", scratch)
    python = str(installed / "bin" / "python")
    where = _run(
        [
            python,
            "-c",
            "import sagas, stream_processors, stream_processors.core.journal as j, pathlib;"
            "print(sagas.__file__); print(j.JournalEntry.__avro__.full_name);"
            "print(all((pathlib.Path(m.__file__).parent / 'py.typed').is_file()"
            " for m in (sagas, stream_processors)))",
        ],
        scratch,
        env,
    ).split()
    assert where[0].startswith(str(installed)), f"imported from {where[0]}, not the wheel"
    assert where[1:] == ["sagalog.JournalEntry", "True"]
    assert "run" in _run([str(installed / "bin" / "sagas"), "--help"], scratch, env)


def test_a_saga_from_a_scratch_folder_runs_on_the_broker(
    installed: Path, scratch: Path, kafka: KafkaCluster
) -> None:
    env = _clean_env(kafka.bootstrap, scratch)
    sagas = str(installed / "bin" / "sagas")
    _run([sagas, "topics", "create", "greeter:Welcome", "--partitions", "2"], scratch, env, 60)
    logs = scratch / "logs"
    logs.mkdir()
    processes = [
        subprocess.Popen(
            [sagas, *args, "--metrics-port", "-1"],
            cwd=scratch,
            env=env,
            stdout=(logs / f"{args[0]}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for args in (
            ["run", "greeter:Welcome", "--partitions", "2"],
            ["worker", "greeter:greeters"],
        )
    ]
    try:
        printed = _run([str(installed / "bin" / "python"), "check.py", "20"], scratch, env, 180)
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)
    outcomes = json.loads(printed.strip().splitlines()[-1])
    assert outcomes == {f"guest-{i}": "completed" for i in range(20)}, (
        outcomes,
        [(logs / name).read_text()[-2000:] for name in ("run.log", "worker.log")],
    )
