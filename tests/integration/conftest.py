"""Fixtures shared by the integration tests (the ``kafka`` fixture is in tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_processors.kafka.topics import ensure_plain_topics, ensure_topics
from tests.conftest import KafkaCluster
from tests.integration.saga_harness import (
    FLAKY_TARGET,
    FLAKY_TOPICS,
    TOPICS,
    Jobs,
    JournalFollower,
    SagaProcesses,
    SagaRun,
)


@pytest.fixture
def saga(kafka: KafkaCluster, tmp_path: Path) -> Iterator[SagaRun]:
    """The saga's topics, and a run whose processes are all stopped when the test ends."""
    ensure_topics(TOPICS, kafka.bootstrap)
    run = SagaRun(kafka, tmp_path)
    try:
        yield run
    finally:
        run.close()


@pytest.fixture
def jobs(kafka: KafkaCluster, tmp_path: Path) -> Iterator[Jobs]:
    """A run of FlakyJobs (its own topics), with its flag folder, stopped when the test ends."""
    ensure_topics(FLAKY_TOPICS, kafka.bootstrap)
    ensure_plain_topics(["flaky.work.dlq", "flaky.finish.dlq"], kafka.bootstrap)
    run = uuid.uuid4().hex[:8]
    flags = tmp_path / "flags"
    flags.mkdir()
    processes = SagaProcesses(
        kafka.bootstrap,
        tmp_path / "logs",
        saga_target=FLAKY_TARGET,
        worker_targets={"flaky": "tests.integration.flaky_jobs:workers"},
        env={"FLAKY_FLAGS": str(flags)},
    )
    journal = JournalFollower(kafka.bootstrap, run, journal=FLAKY_TOPICS.journal)
    try:
        yield Jobs(kafka, tmp_path, processes, journal, flags, run)
    finally:
        processes.stop_all()
        journal.close()
