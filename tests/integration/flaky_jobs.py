"""A saga and workers that fail on purpose, for the failure-handling integration tests.

``FlakyJobs`` runs ``work`` then ``finish``; ``work`` is undone by ``UndoWork``. What goes wrong
is chosen per job by its ``mode``, and two switches are files in the folder named by
``FLAKY_FLAGS`` (so a test can "repair" a running worker by deleting a file):

- ``flaky``: ``DoWork`` raises a transient error on attempts 1 and 2, and succeeds on the 3rd;
- ``flaky-once``: ``DoWork`` fails transiently on attempt 1 only (its retry waits 3 s);
- ``hang``: ``Finish`` sleeps longer than the step's timeout before answering;
- ``fail-finish``: ``Finish`` answers ``FinishFailed`` (so ``work`` is compensated);
- flag file ``undo-broken``: ``UndoWork`` answers ``UndoFailed`` (the compensation fails);
- flag file ``work-misconfigured``: ``DoWork`` crashes with a bug, so the command is dead-lettered;
- flag file ``work-dies``: ``DoWork`` makes its effect, deletes the flag and SIGKILLs its own
  process before it can answer (one crash, between the side effect and the reply).

``DoWork`` makes its effect the way a payment provider would: by ``context.idempotency_key``,
once per key (a file created with ``O_EXCL`` under ``effects/`` in the flag folder), and
appends each command id it is invoked with to ``invocations``, so tests can count both.

Run with ``sagas run tests.integration.flaky_jobs:FlakyJobs`` and
``sagas worker tests.integration.flaky_jobs:workers``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

from sagas import Command, Compensate, Event, Saga, State, Step
from sagas.worker import BusinessError, CommandContext, TransientError, Worker
from stream_processors.core.policy import TIMEOUT, TRANSIENT, RetryPolicy

NS = "tests.flaky"
WORK_RETRY = RetryPolicy(max_attempts=3, interval=3.0, backoff_rate=2.0)  # waits 3 s, then 6 s
HANG_SECONDS = 6.0
FINISH_TIMEOUT = 2.0


class Job(Event, schema=f"{NS}.Job", topic="flaky.jobs", key="job_id"):
    job_id: str
    mode: str


class JobState(State, schema=f"{NS}.JobState"):
    job_id: str
    mode: str


class DoWork(Command, schema=f"{NS}.DoWork", topic="flaky.work"):
    job_id: str
    mode: str


class WorkDone(Event, schema=f"{NS}.WorkDone"):
    job_id: str


class WorkFailed(Event, schema=f"{NS}.WorkFailed"):
    job_id: str


class UndoWork(Command, schema=f"{NS}.UndoWork", topic="flaky.work"):
    job_id: str
    mode: str


class WorkUndone(Event, schema=f"{NS}.WorkUndone"):
    job_id: str


class UndoFailed(Event, schema=f"{NS}.UndoFailed"):
    job_id: str


class Finish(Command, schema=f"{NS}.Finish", topic="flaky.finish"):
    job_id: str
    mode: str


class Finished(Event, schema=f"{NS}.Finished"):
    job_id: str


class FinishFailed(Event, schema=f"{NS}.FinishFailed"):
    job_id: str


class FlakyJobs(Saga, name="flaky_jobs"):
    start = Job
    state = JobState

    @staticmethod
    def begin(event: Job) -> JobState:
        return JobState(job_id=event.job_id, mode=event.mode)

    work = Step(
        DoWork,
        success=WorkDone,
        failure=WorkFailed,
        retry=WORK_RETRY,
        compensate=Compensate(
            UndoWork,
            success=WorkUndone,
            failure=UndoFailed,
            retry=RetryPolicy(max_attempts=1, retry_on=(TRANSIENT, TIMEOUT)),
        ),
    )
    finish = Step(
        Finish,
        success=Finished,
        failure=FinishFailed,
        timeout=FINISH_TIMEOUT,
        retry=RetryPolicy(max_attempts=1),
    )


workers = Worker("flaky")


def _flag(name: str) -> bool:
    folder = os.environ.get("FLAKY_FLAGS")
    return folder is not None and (Path(folder) / name).exists()


def _effect(context: CommandContext) -> None:
    """Count the invocation; make the effect once per idempotency key (a provider's dedupe)."""
    folder = os.environ.get("FLAKY_FLAGS")
    if folder is None:
        return
    with (Path(folder) / "invocations").open("a") as invocations:
        invocations.write(f"{context.command_id}\n")
    effects = Path(folder) / "effects"
    effects.mkdir(exist_ok=True)
    name = hashlib.sha256(context.idempotency_key.encode()).hexdigest()
    try:
        with (effects / name).open("x") as effect:
            effect.write(context.idempotency_key)
    except FileExistsError:
        pass  # made before, under the same key: the provider does not do it twice


def _die_once() -> None:
    """SIGKILL this process if the ``work-dies`` flag is up, taking the flag down first."""
    folder = os.environ.get("FLAKY_FLAGS")
    flag = None if folder is None else Path(folder) / "work-dies"
    if flag is not None and flag.exists():
        flag.unlink()
        os.kill(os.getpid(), signal.SIGKILL)


@workers.handles(DoWork)
def do_work(command: DoWork, context: CommandContext) -> WorkDone:
    if _flag("work-misconfigured"):
        raise RuntimeError("misconfigured: no credentials for the work service")
    if command.mode == "flaky" and context.attempt < 3:
        raise TransientError(f"attempt {context.attempt} hit a flaky dependency")
    if command.mode == "flaky-once" and context.attempt < 2:
        raise ConnectionError("dependency refused the connection")
    _effect(context)
    _die_once()
    return WorkDone(job_id=command.job_id)


@workers.handles(UndoWork)
def undo_work(command: UndoWork, context: CommandContext) -> WorkUndone:
    if _flag("undo-broken"):
        raise BusinessError(UndoFailed(job_id=command.job_id))
    return WorkUndone(job_id=command.job_id)


@workers.handles(Finish)
def finish(command: Finish, context: CommandContext) -> Finished:
    if command.mode == "hang":
        time.sleep(HANG_SECONDS)
    if command.mode == "fail-finish":
        raise BusinessError(FinishFailed(job_id=command.job_id))
    return Finished(job_id=command.job_id)
