"""Failure handling on the real broker: retries, durable timers, timeouts, parking, operators.

Each test runs ``FlakyJobs`` (``tests/integration/flaky_jobs.py``) as real ``sagas run`` and
``sagas worker`` processes and reads what happened from the saga's journal topic:

- a step that fails twice with a transient error and then succeeds is retried after delays that
  follow its policy (3 s, then 6 s), never earlier;
- a retry timer scheduled before a kill -9 of the processor fires after the restart;
- a worker that hangs makes its step time out, and the saga compensates;
- a failing compensation parks the instance, and ``sagas retry`` finishes it once the worker
  is repaired;
- a command dead-lettered by a misconfigured worker is processed after ``sagas dlq redrive``.
"""

from __future__ import annotations

import time

import pytest

from stream_processors.core.journal import JournalEntry, Kind
from tests.integration.flaky_jobs import FINISH_TIMEOUT, WORK_RETRY
from tests.integration.saga_harness import (
    FLAKY_TARGET,
    CommittedReader,
    Jobs,
    header_of,
)

pytestmark = pytest.mark.kafka

#: How late a timer may fire: the 50 ms timer check, a 100 ms commit, a loaded 2-core machine.
LATENESS_MS = 1_500


def _of(entries: list[JournalEntry], kind: Kind, step: str) -> list[JournalEntry]:
    return [e for e in entries if e.kind == kind.value and e.step == step]


def test_transient_failures_are_retried_after_the_policys_delays(jobs: Jobs) -> None:
    jobs.start()
    job = jobs.job("flaky")

    jobs.wait_for(job, Kind.SAGA_COMPLETED, timeout=90)
    entries = jobs.entries(job)
    sent = _of(entries, Kind.COMMAND_SENT, "work")
    failed = _of(entries, Kind.ATTEMPT_FAILED, "work")

    assert [e.attempt for e in sent] == [1, 2, 3]
    assert [e.command_id for e in sent] == [f"flaky_jobs/{job}/work/{n}" for n in (1, 2, 3)]
    assert [e.attempt for e in failed] == [1, 2]
    assert all("TransientError" in (e.reason or "") for e in failed)
    for attempt, entry in enumerate(failed, start=1):
        expected = WORK_RETRY.delay_ms(attempt, entry.command_id or "")
        waited = sent[attempt].at_ms - entry.at_ms
        assert expected <= waited <= expected + LATENESS_MS, (attempt, expected, waited)


def test_a_retry_timer_scheduled_before_a_kill_9_fires_after_the_restart(jobs: Jobs) -> None:
    jobs.start()
    processor = jobs.processes.started[0]
    job = jobs.job("flaky-once")

    failed = jobs.wait_for(job, Kind.ATTEMPT_FAILED)
    processor.kill()
    killed_at_ms = int(time.time() * 1000)
    due_ms = failed.at_ms + WORK_RETRY.delay_ms(1, failed.command_id or "")
    assert killed_at_ms < due_ms, "the processor must die before the timer is due"
    assert not _of(jobs.entries(job), Kind.COMMAND_SENT, "work")[1:]

    jobs.processor()
    jobs.wait_for(job, Kind.SAGA_COMPLETED, timeout=90)
    entries = jobs.entries(job)
    fired = [e for e in entries if e.kind == Kind.TIMER_FIRED.value]
    retried = _of(entries, Kind.COMMAND_SENT, "work")[1]
    assert [e.timer for e in fired] == ["retry:work"]
    assert retried.attempt == 2
    assert retried.at_ms >= due_ms


def test_a_hanging_worker_times_out_its_step_and_the_saga_compensates(jobs: Jobs) -> None:
    jobs.start()
    job = jobs.job("hang")

    compensated = jobs.wait_for(job, Kind.SAGA_COMPENSATED, timeout=90)
    entries = jobs.entries(job)
    finish_sent = _of(entries, Kind.COMMAND_SENT, "finish")[0]
    step_failed = _of(entries, Kind.STEP_FAILED, "finish")[0]
    assert "no reply in time" in (step_failed.reason or "")
    waited = step_failed.at_ms - finish_sent.at_ms
    assert FINISH_TIMEOUT * 1000 <= waited <= FINISH_TIMEOUT * 1000 + LATENESS_MS
    assert _of(entries, Kind.COMPENSATION_SUCCEEDED, "work")

    # The worker answers after it wakes up; the saga must ignore that late reply.
    time.sleep(7)
    jobs.journal.catch_up()
    assert jobs.entries(job)[-1] == compensated


def test_a_failing_compensation_parks_and_sagas_retry_finishes_it(jobs: Jobs) -> None:
    jobs.flag("undo-broken", on=True)
    jobs.start()
    job = jobs.job("fail-finish")

    parked = jobs.wait_for(job, Kind.SAGA_PARKED)
    assert "compensation failed" in (parked.reason or "")
    assert _of(jobs.entries(job), Kind.COMPENSATION_FAILED, "work")

    jobs.flag("undo-broken", on=False)  # the undo service is repaired
    jobs.sagas("retry", FLAKY_TARGET, job, "--by", "alice", "--reason", "undo service fixed")

    jobs.wait_for(job, Kind.SAGA_COMPENSATED)
    entries = jobs.entries(job)
    action = next(e for e in entries if e.kind == Kind.OPERATOR_ACTION.value)
    assert "alice" in (action.reason or "") and "undo service fixed" in (action.reason or "")
    undo = [e for e in entries if e.kind == Kind.COMPENSATION_SENT.value]
    assert [e.attempt for e in undo] == [1, 2]


def test_a_dead_lettered_command_is_processed_after_dlq_redrive(jobs: Jobs) -> None:
    dlq = CommittedReader(
        jobs.kafka.bootstrap,
        "flaky.work.dlq",
        from_end=True,
        keep=lambda m: (m.key() or b"").decode().startswith(jobs.run),
    )
    jobs.flag("work-misconfigured", on=True)
    jobs.start()
    job = jobs.job("ok")

    deadline = time.monotonic() + 60
    dead = []
    while not dead and time.monotonic() < deadline:
        dead = dlq.poll(0.5)
    dlq.close()
    assert dead, f"the command never reached the DLQ\n{jobs.processes.log_tails()}"
    assert header_of(dead[0], "sagalog.dlq.reason") == "handler-error"
    assert "misconfigured" in (header_of(dead[0], "sagalog.dlq.detail") or "")

    jobs.flag("work-misconfigured", on=False)  # the worker's configuration is fixed
    where = f"{dead[0].partition()}:{dead[0].offset()}"
    jobs.sagas("dlq", "redrive", "flaky.work.dlq", "--offset", where)

    jobs.wait_for(job, Kind.SAGA_COMPLETED)
    sent = _of(jobs.entries(job), Kind.COMMAND_SENT, "work")
    assert len(sent) == 1  # the same command, redriven: not a new attempt
