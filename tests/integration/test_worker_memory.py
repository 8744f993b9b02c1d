"""Side effects once, wherever a command lands: the worker group's memory is on Kafka.

Each test runs ``FlakyJobs`` with its workers as processes that share nothing but the broker
(each keeps its identity in a folder of its own, as on separate machines):

- a worker SIGKILLed after ``DoWork``'s side effect and before its reply: the command moves to
  the other worker, whose handler runs again (nothing was committed) with the same
  ``context.idempotency_key``, so the effect, made by that key, exists once; the saga completes;
- a command delivered again after its reply committed (the same record sent again, as
  ``sagas dlq redrive`` would) to another worker process: it answers the remembered reply,
  byte for byte, without running the handler.
"""

from __future__ import annotations

import signal
import time

import pytest
from confluent_kafka import Message, Producer

from sagas.idempotency import recorded_replies
from stream_processors.core.journal import Kind
from stream_processors.engine.routing import COMMAND_ID, INSTANCE
from stream_processors.kafka.config import producer_config
from tests.integration.flaky_jobs import workers
from tests.integration.saga_harness import (
    FLAKY_TOPICS,
    CommittedReader,
    Jobs,
    header_of,
    header_prefix,
    wait_for_metric,
)

pytestmark = pytest.mark.kafka


def test_a_worker_killed_between_effect_and_reply_leaves_one_effect(jobs: Jobs) -> None:
    jobs.flag("work-dies", on=True)
    jobs.processor()
    first = jobs.worker("machine-a")
    job = jobs.job("ok")
    assert first.popen is not None
    assert first.popen.wait(60) == -signal.SIGKILL, first.log_tail()

    jobs.worker("machine-b")
    jobs.wait_for(job, Kind.SAGA_COMPLETED, timeout=60)

    command_id, key = f"flaky_jobs/{job}/work/1", f"flaky_jobs/{job}/work"
    assert jobs.invocations() == [command_id, command_id]  # at least once at the edge
    assert jobs.effects() == [key]  # made once, by the step's idempotency key
    accepted = [e for e in jobs.entries(job) if e.kind == Kind.INPUT_ACCEPTED.value]
    assert [e.command_id for e in accepted].count(command_id) == 1


def _command(reader: CommittedReader, command_id: str) -> Message:
    found = [m for m in reader.read_to_end() if header_of(m, COMMAND_ID) == command_id]
    assert len(found) == 1, f"{len(found)} committed records of {command_id}"
    return found[0]


def _send_again(jobs: Jobs, command: Message) -> None:
    producer = Producer(producer_config(jobs.kafka.bootstrap, "test-redrive"))
    producer.produce(
        command.topic() or "", key=command.key(), value=command.value(), headers=command.headers()
    )
    assert producer.flush(30) == 0


def _replies(reader: CommittedReader, command_id: str, count: int) -> list[bytes]:
    deadline = time.monotonic() + 60
    replies: list[bytes] = []
    while len(replies) < count and time.monotonic() < deadline:
        replies += [
            m.value() or b"" for m in reader.poll(0.5) if header_of(m, COMMAND_ID) == command_id
        ]
    return replies


def test_a_command_delivered_again_after_its_commit_gets_the_remembered_reply(
    jobs: Jobs,
) -> None:
    bootstrap = jobs.kafka.bootstrap
    commands = CommittedReader(
        bootstrap, "flaky.work", from_end=True, keep=header_prefix(INSTANCE, jobs.run)
    )
    replies = CommittedReader(
        bootstrap, FLAKY_TOPICS.inbox, from_end=True, keep=header_prefix(COMMAND_ID, "flaky_jobs/")
    )
    try:
        jobs.processor()
        first = jobs.worker("machine-a")
        job = jobs.job("ok")
        jobs.wait_for(job, Kind.SAGA_COMPLETED, timeout=60)
        command_id = f"flaky_jobs/{job}/work/1"
        command = _command(commands, command_id)
        first.stop()

        second = jobs.worker("machine-b")
        _send_again(jobs, command)
        wait_for_metric(
            second, "sagalog_worker_commands_total", lambda v: v >= 1, 60, outcome="repeated"
        )
        answered = _replies(replies, command_id, 2)
    finally:
        commands.close()
        replies.close()

    assert jobs.invocations() == [command_id]  # the handler ran once, in the first process
    remembered = recorded_replies(workers.group, bootstrap)[command_id]
    assert answered == [remembered, remembered]
